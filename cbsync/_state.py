"""States, the reasons for moving between them, and the record of a move."""

import datetime
import enum
from typing import Literal, NamedTuple, Tuple, Union, get_args


class State(enum.Enum):
    """The state of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


#: Why a breaker moved.  The first five open a circuit (and are the only
#: ones a :class:`~cbsync.CircuitOpenError` carries); the others move it on.
ReasonKind = Literal[
    "consecutive_failures",
    "failure_rate",
    "slow_call_rate",
    "manual",
    "remote",
    "open_period_elapsed",
    "trial_successes",
    "health_check",
    "reset",
    "disabled",
    "unknown",
]

#: Every :data:`ReasonKind`, in the order above.
REASON_KINDS: Tuple[str, ...] = get_args(ReasonKind)


class TransitionReason(NamedTuple):
    """Why a breaker changed state: a ``kind`` and the ``value`` behind it.

    Kinds that open a circuit: ``"consecutive_failures"`` (value: the count;
    also a failed trial call in HALF_OPEN), ``"failure_rate"`` and
    ``"slow_call_rate"`` (value: the rate in the window), ``"manual"`` (value:
    the reason given to ``trip()``) and ``"remote"`` (opened by another
    process through a shared store; value: that process's reason).

    The other transitions carry a reason too: ``"open_period_elapsed"``,
    ``"trial_successes"`` (value: the count), ``"health_check"``, ``"reset"``
    and ``"disabled"``; ``"unknown"`` is what a shared store reports for a
    breaker that never changed state.  ``kind`` is a plain string, so it
    compares, prints and serialises as one; :data:`ReasonKind` lists them
    for type checkers.

    >>> str(TransitionReason("failure_rate", 0.6))
    'failure_rate=0.6'
    """

    kind: ReasonKind
    value: Union[int, float, str, None] = None

    def __str__(self) -> str:
        if self.value is None:
            return self.kind
        return "{}={}".format(self.kind, self.value)


#: The name :class:`TransitionReason` had before it carried closing reasons too.
OpenReason = TransitionReason


class StateTransition(NamedTuple):
    """One state change; ``at`` is wall-clock UTC time, for people to read."""

    old: State
    new: State
    reason: TransitionReason
    at: datetime.datetime
