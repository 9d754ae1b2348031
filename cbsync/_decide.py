"""Deciding, apart from transitioning: pure functions of counts and configuration.

The breaker's state objects ask these functions what to do and then do it;
nothing here reads a clock, takes a lock or changes anything, so every rule
is written once and tested on its own (tests/test_decide.py).

>>> from cbsync import CircuitBreakerConfig
>>> config = CircuitBreakerConfig(failure_threshold=3, minimum_calls=4)
>>> decide(Counts(calls=2, failures=2, slow=0, consecutive=2), config) is None
True
>>> decide(Counts(calls=4, failures=2, slow=0, consecutive=1), config)
TransitionReason(kind='failure_rate', value=0.5)
"""

from typing import NamedTuple, Optional

from ._config import CircuitBreakerConfig
from ._state import TransitionReason


class Counts(NamedTuple):
    """What a CLOSED circuit is judged on: the window's calls, failures and
    slow calls, and the current streak of consecutive failures."""

    calls: int
    failures: int
    slow: int
    consecutive: int


def decide(counts: Counts, config: CircuitBreakerConfig) -> Optional[TransitionReason]:
    """Why a CLOSED circuit holding ``counts`` must open now, or ``None``.

    Consecutive failures reaching ``failure_threshold`` open it however few
    calls the window holds; otherwise, once the window holds
    ``minimum_calls``, a failure rate reaching ``failure_rate_threshold`` or
    a slow-call rate reaching ``slow_call_rate_threshold`` does.  Rates in
    the reason are rounded to four places; the comparison is not.
    """
    threshold = config.failure_threshold
    if threshold is not None and counts.consecutive >= threshold:
        return TransitionReason("consecutive_failures", counts.consecutive)
    calls = counts.calls
    if calls < config.minimum_calls:
        return None
    rate_threshold = config.failure_rate_threshold
    if rate_threshold is not None:
        rate = counts.failures / calls
        if rate >= rate_threshold:
            return TransitionReason("failure_rate", round(rate, 4))
    if config.slow_call_duration is not None:
        rate = counts.slow / calls
        if rate >= config.slow_call_rate_threshold:
            return TransitionReason("slow_call_rate", round(rate, 4))
    return None


def success_may_open(calls: int, failures: int, slow: int, config: CircuitBreakerConfig) -> bool:
    """Whether one more success could open a CLOSED circuit whose window holds
    ``calls``, ``failures`` and ``slow`` calls (and no failure streak).

    A success lowers both rates, but the one that brings the window up to
    ``minimum_calls`` is judged, and may find a rate at its threshold.  The
    smallest count that reaches the minimum is the worst case: any further
    success only lowers the rates, and a full count window evicting an
    outcome to make room never raises them.  While this is ``False`` a
    success can be recorded without the lock (see ``_tally.py``).
    """
    judged = calls + max(1, config.minimum_calls - calls)
    return decide(Counts(judged, failures, slow, 0), config) is not None


def closes_after(trial_successes: int, config: CircuitBreakerConfig) -> Optional[TransitionReason]:
    """Why a HALF_OPEN circuit with ``trial_successes`` must close now, or ``None``.

    (The first failed trial call reopens it, whatever the counts: there is
    nothing to decide about that.)
    """
    if trial_successes >= config.success_threshold:
        return TransitionReason("trial_successes", trial_successes)
    return None
