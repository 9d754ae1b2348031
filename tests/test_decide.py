"""The rules, as pure functions of counts and configuration (cbsync._decide)."""

import pytest

from cbsync import CircuitBreakerConfig, TransitionReason
from cbsync._decide import Counts, closes_after, decide, success_may_open


def config(**fields) -> CircuitBreakerConfig:
    return CircuitBreakerConfig(**fields)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (Counts(calls=2, failures=2, slow=0, consecutive=2), None),
        (Counts(calls=3, failures=3, slow=0, consecutive=3), ("consecutive_failures", 3)),
        (Counts(calls=1, failures=1, slow=0, consecutive=4), ("consecutive_failures", 4)),
        (Counts(calls=9, failures=9, slow=0, consecutive=0), None),  # below minimum_calls
        (Counts(calls=10, failures=4, slow=0, consecutive=0), None),
        (Counts(calls=10, failures=5, slow=0, consecutive=0), ("failure_rate", 0.5)),
        (Counts(calls=30, failures=20, slow=0, consecutive=2), ("failure_rate", 0.6667)),
    ],
)
def test_decide_applies_the_thresholds_in_order(counts, expected):
    """Consecutive failures first, then (from minimum_calls on) the failure rate."""
    reason = decide(counts, config(failure_threshold=3, minimum_calls=10))
    assert reason == (TransitionReason(*expected) if expected else None)


def test_the_consecutive_rule_wins_over_the_rate():
    """When both rules fire, the reason is the streak."""
    reason = decide(Counts(20, 20, 0, 5), config(failure_threshold=5, minimum_calls=10))
    assert reason == TransitionReason("consecutive_failures", 5)


def test_disabled_rules_never_fire():
    """failure_threshold=None and failure_rate_threshold=None switch their rules off."""
    off = config(failure_threshold=None, failure_rate_threshold=None)
    assert decide(Counts(1000, 1000, 0, 1000), off) is None


def test_the_slow_call_rule_needs_slow_call_duration():
    """Slow calls open only when slow_call_duration is set, at slow_call_rate_threshold."""
    counts = Counts(calls=10, failures=0, slow=8, consecutive=0)
    assert decide(counts, config(slow_call_rate_threshold=0.8)) is None
    assert decide(
        counts, config(slow_call_duration="1s", slow_call_rate_threshold=0.8)
    ) == TransitionReason("slow_call_rate", 0.8)
    assert decide(counts, config(slow_call_duration="1s", slow_call_rate_threshold=0.9)) is None


def test_the_rate_is_compared_unrounded():
    """The reason shows four places; the threshold is compared with the exact rate."""
    just_below = Counts(calls=3, failures=1, slow=0, consecutive=0)  # 0.3333...
    assert decide(just_below, config(minimum_calls=3, failure_rate_threshold=0.3334)) is None
    assert decide(
        just_below, config(minimum_calls=3, failure_rate_threshold=0.3333)
    ) == TransitionReason("failure_rate", 0.3333)


@pytest.mark.parametrize(
    ("window", "may_open"),
    [
        ((0, 0, 0), False),
        ((8, 4, 0), False),  # the 10th call would be judged at 4/10 = 0.4
        ((8, 5, 0), True),  # ... at 5/10 = 0.5: a success may open it
        ((9, 5, 0), True),
        ((10, 5, 0), False),  # judged already; one more success lowers the rate
        ((50, 30, 0), True),  # 30/51 is still at least 0.5
    ],
)
def test_success_may_open_only_where_the_minimum_is_reached(window, may_open):
    """A success can open a circuit only by bringing the window up to minimum_calls."""
    calls, failures, slow = window
    assert success_may_open(calls, failures, slow, config(minimum_calls=10)) is may_open


def test_success_may_open_counts_slow_calls():
    """A window full of slow calls may open on a (fast) success that reaches the minimum."""
    slow = config(minimum_calls=4, slow_call_duration="1s", slow_call_rate_threshold=0.75)
    assert success_may_open(3, 0, 3, slow)
    assert not success_may_open(3, 0, 2, slow)


def test_closes_after_success_threshold_trials():
    """HALF_OPEN closes at success_threshold trial successes, with that count as the reason."""
    three = config(success_threshold=3)
    assert closes_after(2, three) is None
    assert closes_after(3, three) == TransitionReason("trial_successes", 3)
