"""The breaker's states as objects that own their behaviour.

One small class per state (as Resilience4j's ``CircuitBreakerStateMachine``
has), each answering the same few questions:

* :meth:`refuses` -- the one admission decision, read without the lock by
  ``breaker.rejection()`` and the OPEN fast path, and under the lock by
  :meth:`admit`; :meth:`error` is what a refused call gets, and
  :meth:`rejection` both together;
* :meth:`admit` -- take a permit (lock held), moving OPEN on to HALF_OPEN
  once its period is over;
* :meth:`after_outcome` / :meth:`release` -- a call admitted under this very
  object ended with an outcome, or without one (lock held);
* :meth:`renewed` -- the fleet (a shared store) says the breaker is in this
  state again: the object to keep.

A transition swaps the breaker's current state object, and a call remembers
the object it was admitted under: ``admitted is current`` tells, when the
call ends, whether its outcome still belongs to the current state.  The
states know the breaker only through the few operations they ask of it
(:class:`Host`); the rules themselves are the pure functions of ``_decide``.
"""

import math
from typing import TYPE_CHECKING, List, Optional, Protocol, Union, cast

from ._config import CircuitBreakerConfig
from ._decide import closes_after
from ._errors import CircuitOpenError, HalfOpenLimitReached
from ._state import State, TransitionReason

if TYPE_CHECKING:
    from ._events import Event

_CLOSED = State.CLOSED
_OPEN = State.OPEN
_HALF_OPEN = State.HALF_OPEN
_FORCED_OPEN = State.FORCED_OPEN
_DISABLED = State.DISABLED


class Host(Protocol):
    """What the states ask of the breaker (its lock is held for all of it)."""

    @property
    def config(self) -> CircuitBreakerConfig: ...

    def _judge(self, now: float) -> Optional[TransitionReason]:
        """Why the CLOSED circuit must open now, or ``None``."""

    def _open(
        self,
        now: float,
        reason: TransitionReason,
        events: "List[Event]",
        at_least: Optional[float],
    ) -> None:
        """Move from CLOSED to OPEN."""

    def _reopen(self, now: float, events: "List[Event]", at_least: Optional[float]) -> None:
        """Move from HALF_OPEN back to OPEN, for longer (the backoff)."""

    def _close(self, reason: TransitionReason, events: "List[Event]") -> None:
        """Move to CLOSED, with a fresh window and no backoff."""

    def _transition(
        self, new: "StateObject", reason: TransitionReason, events: "List[Event]"
    ) -> None:
        """Swap the state object."""

    def _trial_ended(self, success: bool) -> None:
        """Tell the shared store that a trial call of this period ended."""


class _Base:
    __slots__ = ()
    #: The public state.
    state: State
    #: Admits every call without bookkeeping: no lock, no permit to return.
    free = False
    #: Calls arriving before this clock reading are refused, without the
    #: lock: the end of the OPEN period; always for FORCED_OPEN; never for the
    #: others (HALF_OPEN decides under the lock).
    until = -math.inf
    #: Judges outcomes against the thresholds (only CLOSED).
    judges = False
    #: Adopts the fleet's state from a shared store (all but DISABLED).
    follows_fleet = True
    #: Why the circuit is (or was last) open; ``None`` for CLOSED and DISABLED.
    reason: Optional[TransitionReason] = None

    def refuses(self, now: float, config: CircuitBreakerConfig) -> bool:
        """Whether a call arriving now is rejected."""
        return now < self.until

    def error(self, name: str, now: float) -> CircuitOpenError:
        """What a call this state refuses gets."""
        raise AssertionError("{!r} refuses nothing".format(self))

    def rejection(
        self, name: str, now: float, config: CircuitBreakerConfig
    ) -> Optional[CircuitOpenError]:
        """The error a call would get now, or ``None`` if it would be admitted."""
        return self.error(name, now) if self.refuses(now, config) else None

    def admit(self, machine: Host, now: float, events: "List[Event]") -> "Optional[StateObject]":
        """Take a permit (lock held): the state the call is admitted under, or
        ``None`` if the (then current) state refuses it.

        The error is built by the caller, from the refusing state, where it is
        raised: an exception held in a local of a frame it is raised through
        makes a reference cycle, which only the garbage collector frees.
        """
        return None if self.refuses(now, machine.config) else cast("StateObject", self)

    def after_outcome(
        self,
        machine: Host,
        failed: bool,
        now: float,
        at_least: Optional[float],
        events: "List[Event]",
    ) -> None:
        """A call admitted under this state ended as a success or a failure
        (lock held; the window and the streak already count it)."""

    def release(self, machine: Host) -> None:
        """A call admitted under this state ended without an outcome (lock held)."""

    def retry_after(self, now: float) -> Optional[float]:
        """Seconds until a trial call is admitted, if that is known."""
        return None

    def renewed(self, reason: TransitionReason, until: Optional[float]) -> "StateObject":
        """The fleet is in this state too: the object to keep (lock held)."""
        return cast("StateObject", self)

    def after_fork(self) -> "StateObject":
        """The object a forked child keeps (no call of the parent ends there)."""
        return cast("StateObject", self)

    def __repr__(self) -> str:
        return "<{} {}>".format(type(self).__name__, self.state.value)


class Closed(_Base):
    """Every call is admitted; outcomes are judged against the thresholds."""

    __slots__ = ()
    state = _CLOSED
    free = True
    judges = True

    def after_outcome(
        self,
        machine: Host,
        failed: bool,
        now: float,
        at_least: Optional[float],
        events: "List[Event]",
    ) -> None:
        reason = machine._judge(now)
        if reason is not None:
            machine._open(now, reason, events, at_least)


class Disabled(_Base):
    """Every call is admitted and measured; nothing opens the circuit."""

    __slots__ = ()
    state = _DISABLED
    free = True
    follows_fleet = False


class Open(_Base):
    """Calls are rejected until ``until``; the next one after it is a trial."""

    __slots__ = ("reason", "until")
    state = _OPEN
    reason: TransitionReason
    until: float

    def __init__(self, until: float, reason: TransitionReason) -> None:
        self.until = until
        self.reason = reason

    def error(self, name: str, now: float) -> CircuitOpenError:
        # Only for a call it refuses: now < until.
        return CircuitOpenError(name, _OPEN, self.reason, self.until - now)

    def admit(self, machine: Host, now: float, events: "List[Event]") -> "Optional[StateObject]":
        if self.refuses(now, machine.config):
            return None
        trials = HalfOpen(self.reason)
        machine._transition(trials, TransitionReason("open_period_elapsed"), events)
        return trials.admit(machine, now, events)

    def retry_after(self, now: float) -> Optional[float]:
        return max(0.0, self.until - now)

    def renewed(self, reason: TransitionReason, until: Optional[float]) -> "StateObject":
        # Keeps its own reason; the fleet's clock decides when the period ends.
        if until is not None:
            self.until = until
        return self


class HalfOpen(_Base):
    """At most ``half_open_max_calls`` trial calls at once decide the way out."""

    __slots__ = ("in_flight", "reason", "successes")
    state = _HALF_OPEN
    reason: TransitionReason

    def __init__(self, reason: TransitionReason) -> None:
        self.in_flight = 0
        self.successes = 0
        #: Why the circuit opened before this trial period.
        self.reason = reason

    def refuses(self, now: float, config: CircuitBreakerConfig) -> bool:
        return self.in_flight >= config.half_open_max_calls

    def error(self, name: str, now: float) -> CircuitOpenError:
        return HalfOpenLimitReached(name, _HALF_OPEN, self.reason, None)

    def admit(self, machine: Host, now: float, events: "List[Event]") -> "Optional[StateObject]":
        if self.refuses(now, machine.config):
            return None
        self.in_flight += 1
        return self

    def after_outcome(
        self,
        machine: Host,
        failed: bool,
        now: float,
        at_least: Optional[float],
        events: "List[Event]",
    ) -> None:
        self.in_flight -= 1
        machine._trial_ended(not failed)
        if failed:
            # The first failed trial reopens: a failure streak the trial
            # period could not break.
            machine._reopen(now, events, at_least)
            return
        self.successes += 1
        reason = closes_after(self.successes, machine.config)
        if reason is not None:
            machine._close(reason, events)

    def release(self, machine: Host) -> None:
        self.in_flight -= 1
        machine._trial_ended(False)

    def renewed(self, reason: TransitionReason, until: Optional[float]) -> "StateObject":
        # A later trial period: calls admitted in this one no longer count.
        return HalfOpen(self.reason)

    def after_fork(self) -> "StateObject":
        # The parent's trial calls never end in the child: no permit is out.
        fresh = HalfOpen(self.reason)
        fresh.successes = self.successes
        return fresh


class ForcedOpen(_Base):
    """Every call is rejected until ``reset()``; time never moves it."""

    __slots__ = ("reason",)
    state = _FORCED_OPEN
    reason: TransitionReason
    until = math.inf

    def __init__(self, reason: TransitionReason) -> None:
        self.reason = reason

    def error(self, name: str, now: float) -> CircuitOpenError:
        return CircuitOpenError(name, _FORCED_OPEN, self.reason, None)

    def renewed(self, reason: TransitionReason, until: Optional[float]) -> "StateObject":
        self.reason = reason
        return self


StateObject = Union[Closed, Disabled, Open, HalfOpen, ForcedOpen]
#: The states a call can be admitted under.
Admitted = Union[Closed, Disabled, HalfOpen]


def fleet_state(
    state: State,
    reason: TransitionReason,
    until: Optional[float],
    previous: StateObject,
) -> StateObject:
    """A new state object for the fleet's ``state`` (adopted from a shared store).

    A HALF_OPEN period keeps the reason this breaker opened for, if it was
    open; otherwise it takes the fleet's.
    """
    if state is _OPEN:
        return Open(until if until is not None else 0.0, reason)
    if state is _HALF_OPEN:
        opened_for = previous.reason
        if opened_for is None or previous.state not in (_OPEN, _HALF_OPEN):
            opened_for = reason
        return HalfOpen(opened_for)
    if state is _FORCED_OPEN:
        return ForcedOpen(reason)
    return Closed()
