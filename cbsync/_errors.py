"""The exceptions cbsync raises.

Every error derives from :class:`CircuitBreakerError`, so one ``except`` clause
catches them all.  Rejection messages are formatted when they are read, not
when the error is raised: an OPEN breaker may reject thousands of calls a
second and most of those messages are never looked at.
"""

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ._state import State, TransitionReason


class CircuitBreakerError(Exception):
    """Base class of every error raised by cbsync."""


class CircuitOpenError(CircuitBreakerError):
    """A call was rejected because the circuit does not admit it.

    ``breaker`` is the breaker's name, ``state`` its state at the rejection,
    ``reason`` the :class:`~cbsync.TransitionReason` it opened for and
    ``retry_after`` the seconds until it admits a trial call (``None`` when
    unknown, as for a manual trip).
    """

    def __init__(
        self,
        breaker: str,
        state: "State",
        reason: "TransitionReason",
        retry_after: Optional[float],
        *args: object,
        **kwargs: object,
    ) -> None:
        # Extra arguments go to the next class in the MRO, so integrations can
        # mix this class with another library's exception (requests, SQLAlchemy).
        # Without them there is nothing for it to do: BaseException.__new__
        # has already stored the arguments, and rejections should be cheap.
        if args or kwargs:
            super().__init__(*args, **kwargs)
        self.breaker = breaker
        self.state = state
        self.reason = reason
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.retry_after is None:
            retry = "no automatic retry" if self.reason.kind == "manual" else "retry later"
        else:
            retry = "retry after {:.3f}s".format(self.retry_after)
        return "circuit {!r} is {} ({}); {}".format(
            self.breaker, self.state.value, self.reason, retry
        )

    def __repr__(self) -> str:
        return "{}({!r}, {}, {!r}, retry_after={!r})".format(
            type(self).__name__, self.breaker, self.state, self.reason, self.retry_after
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.breaker, self.state, self.reason, self.retry_after))


class HalfOpenLimitReached(CircuitOpenError):
    """Rejected in HALF_OPEN: every trial permit is held by a running call."""

    def __str__(self) -> str:
        return (
            "circuit {!r} is half_open and its trial calls are all in flight ({}); "
            "retry later".format(self.breaker, self.reason)
        )


class ConfigError(CircuitBreakerError, ValueError):
    """A configuration value, file or call is invalid; the message says which."""
