"""Listeners: how a breaker tells the rest of the program what happened."""

import logging
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker
    from ._errors import CircuitOpenError
    from ._state import OpenReason, State

logger = logging.getLogger("cbsync")


class Listener:
    """Base class for breaker listeners; every method does nothing.

    Override the methods you need.  They run in the calling thread after the
    breaker's lock is released, in the order things happened; an exception
    raised by one is logged on logger ``cbsync`` and never reaches the caller.

    >>> import cbsync
    >>> class Opened(cbsync.Listener):
    ...     def on_state_change(self, breaker, old, new, reason):
    ...         print(breaker.name, old.value, "->", new.value, reason)
    >>> breaker = cbsync.CircuitBreaker("demo", listeners=[Opened()])
    >>> breaker.trip("maintenance")
    demo closed -> forced_open manual=maintenance
    """

    def on_attach(self, breaker: "CircuitBreaker") -> None:
        """The listener was added to ``breaker`` (reporters send its state here)."""

    def on_success(self, breaker: "CircuitBreaker", elapsed: float) -> None:
        """A call succeeded after ``elapsed`` seconds."""

    def on_failure(
        self, breaker: "CircuitBreaker", elapsed: float, exc: Optional[BaseException]
    ) -> None:
        """A call failed: ``exc`` is its exception, or ``None`` when it returned a
        value that ``failure_result`` judged a failure."""

    def on_ignored(self, breaker: "CircuitBreaker", elapsed: float, exc: BaseException) -> None:
        """A call raised an exception that counts as neither success nor failure."""

    def on_rejected(self, breaker: "CircuitBreaker", error: "CircuitOpenError") -> None:
        """A call was rejected with ``error``; the function did not run."""

    def on_state_change(
        self, breaker: "CircuitBreaker", old: "State", new: "State", reason: "OpenReason"
    ) -> None:
        """The breaker moved from ``old`` to ``new`` for ``reason``."""


#: An event waiting to be delivered: the listener method's name and arguments.
Event = Tuple[str, Tuple[Any, ...]]


def notify(listeners: Sequence[Listener], method: str, args: Tuple[Any, ...]) -> None:
    """Call ``method`` on every listener; log, never raise, what they raise."""
    for listener in listeners:
        try:
            getattr(listener, method)(*args)
        except Exception:
            logger.exception(
                "cbsync listener %r raised in %s; the call is not affected", listener, method
            )


def notify_success(
    listeners: Sequence[Listener], breaker: "CircuitBreaker", elapsed: float
) -> None:
    """``notify(listeners, "on_success", ...)`` for the lock-free success path."""
    for listener in listeners:
        try:
            listener.on_success(breaker, elapsed)
        except Exception:
            logger.exception(
                "cbsync listener %r raised in on_success; the call is not affected", listener
            )


def deliver(listeners: Sequence[Listener], events: List[Event]) -> None:
    """Deliver collected events in order."""
    for method, args in events:
        notify(listeners, method, args)
