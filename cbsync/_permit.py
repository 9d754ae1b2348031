"""``Permit``: one admitted call, and the one outcome it must end with.

``breaker.acquire()`` admits a call (or raises :class:`CircuitOpenError`)
and returns a :class:`Permit`; the code that then talks to the dependency
reports how it went with exactly one of :meth:`Permit.success`,
:meth:`~Permit.failure`, :meth:`~Permit.ignore`, :meth:`~Permit.outcome`,
:meth:`~Permit.result`, :meth:`~Permit.record` or :meth:`~Permit.release`.  This is the API every
integration stands on (``guard()``, the decorators' fallbacks, requests,
SQLAlchemy); ``breaker.call()`` does the same inside the core without
building a permit.

Taking the outcome is one atomic ``list.pop()``, so two threads finishing
the same permit cannot both count: the second gets a ``RuntimeError``.  A
permit dropped without an outcome is counted (``dropped_permits`` in the
snapshot) and gives its HALF_OPEN trial slot back when it is
garbage-collected -- at once if the breaker's lock is free, else at the
breaker's next locked operation, before it decides anything -- so a
forgotten permit never keeps the circuit half-open.
"""

import math
from typing import TYPE_CHECKING, List, Optional

from ._errors import ConfigError
from ._events import Outcome, logger

if TYPE_CHECKING:
    from ._machine import Machine
    from ._states import Admitted

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED


class Permit:
    """Permission to make one call through a breaker (from ``breaker.acquire()``).

    Give it exactly one outcome.  As a context manager it gives the outcome
    itself when the block ends, unless the block gave one: a success, or the
    exception leaving the block classified like one raised in
    ``breaker.call()`` (``failure_on``/``ignore``; a ``KeyboardInterrupt``
    or other ``BaseException`` counts nothing).

    >>> import cbsync, smtplib
    >>> breaker = cbsync.CircuitBreaker("smtp")
    >>> permit = breaker.acquire()
    >>> try:
    ...     raise smtplib.SMTPServerDisconnected("gone")
    ... except Exception as exc:
    ...     permit.outcome(exc)
    <Outcome.FAILURE: 'failure'>
    >>> with breaker.acquire():
    ...     pass  # talk to the server
    >>> breaker.snapshot().failures, breaker.snapshot().successes
    (1, 1)
    """

    __slots__ = ("_held", "_machine", "_start", "_trial")

    def __init__(self, machine: "Machine", admitted: "Admitted") -> None:
        self._machine = machine
        self._trial = not admitted.free
        #: The state the call was admitted under, until an outcome takes it.
        self._held: List[Admitted] = [admitted]
        self._start = machine._now()

    @property
    def trial(self) -> bool:
        """Whether this is a HALF_OPEN trial call (holding one of its slots)."""
        return self._trial

    @property
    def done(self) -> bool:
        """Whether the permit has had its outcome (or was released)."""
        return not self._held

    def success(self) -> None:
        """The call succeeded: the dependency answered."""
        admitted = self._take()
        machine = self._machine
        end = machine._now()
        machine._succeeded(admitted, end - self._start, end)

    def failure(
        self, exc: Optional[BaseException] = None, *, retry_after: Optional[float] = None
    ) -> None:
        """The call failed (``exc``, if an exception says why).

        ``retry_after``: if this failure opens the circuit, the OPEN period
        lasts at least this many seconds (capped at ``max_timeout``) -- for
        a dependency that said when to come back, as HTTP's ``Retry-After``.
        """
        if retry_after is not None and not (
            isinstance(retry_after, (int, float))
            and not isinstance(retry_after, bool)
            and 0 < retry_after < math.inf
        ):
            raise ConfigError(
                "retry_after={!r} must be a positive number of seconds or None".format(retry_after)
            )
        self._finish(_FAILURE, exc, retry_after)

    def ignore(self, exc: Optional[BaseException] = None) -> None:
        """The call ended in a way that says nothing about the dependency
        (a caller's mistake): neither a success nor a failure."""
        self._finish(_IGNORED, exc, None)

    def outcome(self, exc: Optional[BaseException]) -> Optional[Outcome]:
        """Record the call as ``breaker.call()`` would: ``None`` is a success,
        an exception is classified with ``failure_on`` and ``ignore``.

        Returns the :class:`Outcome` recorded; ``None`` for a ``BaseException``
        that is not an ``Exception`` (``KeyboardInterrupt``...), which counts
        nothing and only gives the permit back.
        """
        if exc is None:
            self.success()
            return _SUCCESS
        if not isinstance(exc, BaseException):
            raise TypeError("outcome() takes an exception or None, not {!r}".format(exc))
        if not isinstance(exc, Exception):
            self.release()
            return None
        outcome = self._machine._classify(exc)
        self.record(outcome, exc)
        return outcome

    def record(self, outcome: Outcome, exc: Optional[BaseException] = None) -> None:
        """Record the :class:`Outcome` your own code decided (``exc``: the
        exception behind it, if any) -- for an integration that classifies
        errors itself, as the SQLAlchemy one does."""
        if outcome is _SUCCESS:
            self.success()
        elif outcome is _FAILURE or outcome is _IGNORED:
            self._finish(outcome, exc, None)
        else:
            raise TypeError("record() takes a cbsync.Outcome, not {!r}".format(outcome))

    def result(self, value: object) -> Outcome:
        """The call returned ``value``: a failure if the breaker's
        ``failure_result`` predicate says so, else a success.  Returns the
        :class:`Outcome` recorded."""
        machine = self._machine
        if machine._failure_result is not None and machine._result_fails(value):
            self._finish(_FAILURE, None, None)
            return _FAILURE
        self.success()
        return _SUCCESS

    def release(self) -> None:
        """Give the permit back with no outcome (the call was cancelled, or
        ended by a ``BaseException``): nothing is counted."""
        self._machine._abandon(self._take())

    def __enter__(self) -> "Permit":
        return self

    def __exit__(self, exc_type: object, exc: Optional[BaseException], tb: object) -> None:
        if self._held:
            self.outcome(exc)

    def __del__(self) -> None:
        held = self._held
        if not held:
            return
        try:
            admitted = held.pop()
        except IndexError:  # finished by another thread meanwhile
            return
        machine = self._machine
        try:
            machine._drop(admitted)
            if not machine._warned_drop:
                machine._warned_drop = True
                logger.warning(
                    "cbsync: a permit of circuit breaker %r was dropped without an outcome "
                    "(success(), failure(), ignore(), outcome(), result(), record() or "
                    "release()); it counts nothing%s.  Further drops are counted in "
                    "snapshot().dropped_permits",
                    machine._name,
                    " and its trial slot was given back" if self._trial else "",
                )
        except Exception:  # at interpreter exit, say: a finaliser must not raise
            pass

    def __repr__(self) -> str:
        return "<cbsync.Permit of {!r}{}{}>".format(
            self._machine._name, " (trial)" if self._trial else "", "" if self._held else " done"
        )

    def _take(self) -> "Admitted":
        try:
            return self._held.pop()
        except IndexError:
            raise RuntimeError(
                "this permit of circuit breaker {!r} already has its outcome: give each "
                "permit exactly one (acquire() a new one for the next call)".format(
                    self._machine._name
                )
            ) from None

    def _finish(
        self, outcome: Outcome, exc: Optional[BaseException], at_least: Optional[float]
    ) -> None:
        admitted = self._take()
        machine = self._machine
        end = machine._now()
        machine._record(admitted, end - self._start, end, outcome, exc, at_least)
