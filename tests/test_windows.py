"""Sliding windows: the same behaviour from the count-based and time-based kinds."""

import pytest
from _support import fail, failures, ok

import cbsync
from cbsync._windows import TIME_BUCKETS, CountWindow, TimeWindow

WINDOWS = [
    pytest.param({"window_type": "count_based", "window_size": 10}, id="count_based"),
    pytest.param({"window_type": "time_based", "failure_window": 10}, id="time_based"),
]


def make(clock, **fields):
    base = {"failure_threshold": None, "minimum_calls": 10, "failure_rate_threshold": 0.5}
    base.update(fields)
    return cbsync.CircuitBreaker("w", clock=clock, **base)


@pytest.mark.parametrize(
    ("successes", "failed", "rate"),
    [(0, 9, 1.0), (6, 4, 0.4)],
    ids=["below-minimum-calls", "below-the-threshold"],
)
@pytest.mark.parametrize("window", WINDOWS)
def test_the_window_stays_closed(clock, window, successes, failed, rate):
    """9 failures of 9 calls (a window needing 10), or 4 of 10 (under 50 %), stay CLOSED."""
    breaker = make(clock, **window)
    for _ in range(successes):
        breaker.call(ok)
    failures(breaker, failed)
    assert breaker.state is cbsync.State.CLOSED
    assert breaker.snapshot().window_failure_rate == rate


@pytest.mark.parametrize("window", WINDOWS)
def test_failure_rate_opens_at_the_threshold(clock, window):
    """Five failures in ten calls reach a 50 % threshold."""
    breaker = make(clock, **window)
    for _ in range(5):
        breaker.call(ok)
    failures(breaker, 4)
    assert breaker.state is cbsync.State.CLOSED
    failures(breaker, 1)
    assert breaker.state is cbsync.State.OPEN
    with pytest.raises(cbsync.CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.reason == cbsync.OpenReason("failure_rate", 0.5)


@pytest.mark.parametrize("window", WINDOWS)
def test_old_outcomes_leave_the_window(clock, window):
    """Failures that slid out of the window no longer count."""
    breaker = make(clock, **window)
    failures(breaker, 4)
    clock.advance(11)  # past the time-based window; the count window slides by calls
    for _ in range(10):
        breaker.call(ok)
    snapshot = breaker.snapshot()
    assert snapshot.window_calls == 10
    assert snapshot.window_failure_rate == 0.0
    assert snapshot.failures == 4


@pytest.mark.parametrize("window", WINDOWS)
def test_ignored_calls_never_enter_the_window(clock, window):
    """Ignored exceptions count as neither success nor failure."""
    breaker = make(clock, ignore=KeyError, **window)
    for _ in range(20):
        with pytest.raises(KeyError):
            breaker.call(fail(KeyError("k")))
    snapshot = breaker.snapshot()
    assert (snapshot.window_calls, snapshot.ignored, snapshot.successes) == (0, 20, 0)


@pytest.mark.parametrize("window", WINDOWS)
def test_slow_call_rate_opens(clock, window):
    """Slow calls at the slow-call rate threshold open the circuit."""
    breaker = make(clock, slow_call_duration=1.0, slow_call_rate_threshold=0.5, **window)

    def slow():
        clock.advance(1.0)
        return "slow"

    for _ in range(5):
        breaker.call(ok)
    for _ in range(4):
        breaker.call(slow)
    assert breaker.state is cbsync.State.CLOSED
    breaker.call(slow)
    assert breaker.state is cbsync.State.OPEN
    assert breaker.snapshot().slow_calls == 5
    with pytest.raises(cbsync.CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.reason.kind == "slow_call_rate"


@pytest.mark.parametrize("window", WINDOWS)
def test_a_success_does_not_clear_the_window(clock, window):
    """A success resets the failure streak, not the window's rate."""
    breaker = make(clock, minimum_calls=4, **window)
    failures(breaker, 1)
    breaker.call(ok)
    failures(breaker, 1)
    snapshot = breaker.snapshot()
    assert (snapshot.consecutive_failures, snapshot.window_calls) == (1, 3)
    assert snapshot.window_failure_rate == pytest.approx(2 / 3)
    breaker.call(ok)  # the fourth call: the window is judged at 2 of 4
    assert breaker.state is cbsync.State.OPEN
    assert breaker.snapshot().consecutive_failures == 0


@pytest.mark.parametrize("window", WINDOWS)
def test_many_successes_keep_the_failures_in_the_rate(clock, window):
    """Lock-free successes are folded into the window before it is judged."""
    breaker = make(clock, minimum_calls=4, failure_rate_threshold=0.02, **window)
    for _ in range(3):
        breaker.call(ok)
    failures(breaker, 1)  # 1 of 4: over 2 %
    assert breaker.state is cbsync.State.OPEN
    other = make(clock, minimum_calls=4, failure_rate_threshold=0.5, **window)
    for _ in range(7):
        other.call(ok)
    failures(other, 2)
    failures(other, 1)
    snapshot = other.snapshot()
    assert (snapshot.window_calls, snapshot.failures, snapshot.successes) == (10, 3, 7)
    assert other.state is cbsync.State.CLOSED


def test_count_window_evicts_the_oldest():
    """A count window holds exactly the last ``size`` calls."""
    window = CountWindow(3)
    for failed in (True, True, False, False):
        window.record(0.0, failed, False)
    assert window.counts(0.0) == (3, 1, 0)
    window.record_successes(5)
    assert window.counts(0.0) == (3, 0, 0)


def test_time_window_expires_bucket_by_bucket():
    """A time window forgets calls older than its span, one bucket at a time."""
    window = TimeWindow(10.0)
    width = 10.0 / TIME_BUCKETS
    window.record(0.0, True, True)
    window.record(5.0, False, False)
    assert window.counts(9.9) == (2, 1, 1)
    assert window.counts(10.0 + width) == (1, 0, 0)
    assert window.counts(15.0 + width) == (0, 0, 0)


def test_time_window_after_a_long_idle_gap():
    """An idle gap longer than the span empties the window in one step."""
    window = TimeWindow(1.0)
    for i in range(100):
        window.record(i * 0.01, True, False)
    assert window.counts(0.99)[0] == 100
    assert window.counts(1e9) == (0, 0, 0)
    window.record(1e9, False, False)
    assert window.counts(1e9) == (1, 0, 0)


def test_window_memory_is_fixed():
    """Neither window grows with the number of calls."""
    count, time_window = CountWindow(50), TimeWindow(60.0)
    for i in range(10_000):
        count.record(float(i), i % 3 == 0, False)
        time_window.record(float(i) / 100, i % 3 == 0, False)
    assert len(count._ring) == 50
    assert len(time_window._calls) == TIME_BUCKETS
