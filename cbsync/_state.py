"""States, the reasons for moving between them, and the record of a move."""

import datetime
import enum
from typing import NamedTuple, Union


class State(enum.Enum):
    """The state of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


class OpenReason(NamedTuple):
    """Why a breaker changed state: a ``kind`` and the ``value`` behind it.

    Kinds that open a circuit: ``"consecutive_failures"`` (value: the count;
    also a failed trial call in HALF_OPEN), ``"failure_rate"`` and
    ``"slow_call_rate"`` (value: the rate in the window), ``"manual"`` (value:
    the reason given to ``trip()``) and ``"remote"`` (opened by another
    process through a shared store; value: that process's reason).

    The other transitions carry a reason too: ``"open_period_elapsed"``,
    ``"trial_successes"`` (value: the count), ``"health_check"``, ``"reset"``
    and ``"disabled"``.

    >>> str(OpenReason("failure_rate", 0.6))
    'failure_rate=0.6'
    """

    kind: str
    value: Union[int, float, str, None] = None

    def __str__(self) -> str:
        if self.value is None:
            return self.kind
        return "{}={}".format(self.kind, self.value)


class StateTransition(NamedTuple):
    """One state change; ``at`` is wall-clock UTC time, for people to read."""

    old: State
    new: State
    reason: OpenReason
    at: datetime.datetime
