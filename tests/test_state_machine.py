"""The state machine: one focused test per rule of DESIGN.md "State machine"."""

import threading

import pytest
from _support import fail, failures, ok
from freezegun import freeze_time

import cbsync
from cbsync import CircuitOpenError, HalfOpenLimitReached, OpenReason, State


def make(clock, **fields):
    return cbsync.CircuitBreaker("sm", clock=clock, **fields)


def rejected(breaker):
    """The CircuitOpenError a call through ``breaker`` gets now."""
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    return info.value


def test_seed_three_failures_open_and_reject_without_calling():
    """Seed test 1: failure_threshold=3, three failures open; the next call is rejected unrun."""
    breaker = cbsync.CircuitBreaker("seed", failure_threshold=3)
    failures(breaker, 3)
    assert breaker.state is State.OPEN
    ran = []
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: ran.append(1))
    assert ran == []


def test_seed_one_failure_then_success_after_timeout_is_half_open():
    """Seed test 2: threshold 1, timeout 0.1 s: a success after the timeout is HALF_OPEN."""
    with freeze_time("2026-01-01") as frozen:
        breaker = cbsync.CircuitBreaker(
            "seed", failure_threshold=1, timeout="100ms", success_threshold=2
        )
        failures(breaker, 1)
        assert breaker.state is State.OPEN
        frozen.tick(0.1)
        assert breaker.call(ok) == "ok"
        assert breaker.state is State.HALF_OPEN


def test_closed_admits_every_call(clock):
    """CLOSED runs every call and returns its result."""
    breaker = make(clock)
    assert [breaker.call(lambda i=i: i) for i in range(20)] == list(range(20))
    assert breaker.snapshot().successes == 20


def test_success_resets_only_the_streak(clock):
    """A success resets consecutive failures: four, a success, four more stay CLOSED."""
    breaker = make(clock, failure_threshold=5, failure_rate_threshold=None)
    failures(breaker, 4)
    breaker.call(ok)
    failures(breaker, 4)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().consecutive_failures == 4
    failures(breaker, 1)
    assert breaker.state is State.OPEN


def test_consecutive_failures_open_regardless_of_minimum_calls(clock):
    """The streak rule does not wait for minimum_calls."""
    breaker = make(clock, failure_threshold=2, minimum_calls=100)
    failures(breaker, 2)
    assert breaker.state is State.OPEN
    assert rejected(breaker).reason == OpenReason("consecutive_failures", 2)


def test_open_rejects_with_details(clock):
    """OPEN rejects at once with the breaker, state, reason and retry-after."""
    breaker = make(clock, failure_threshold=1, timeout=30)
    failures(breaker, 1)
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    error = info.value
    assert (error.breaker, error.state, error.retry_after) == ("sm", State.OPEN, 20.0)
    assert error.reason.kind == "consecutive_failures"
    assert str(error) == ("circuit 'sm' is open (consecutive_failures=1); retry after 20.000s")
    assert breaker.retry_after == 20.0


def test_open_period_elapsed_admits_one_trial(clock):
    """After the OPEN period the next call moves to HALF_OPEN and is the first trial."""
    breaker = make(clock, failure_threshold=1, timeout=30, success_threshold=2)
    failures(breaker, 1)
    clock.advance(29.999)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    clock.advance(0.001)
    assert breaker.retry_after == 0.0
    assert breaker.state is State.OPEN  # moves only when a call arrives
    breaker.call(ok)
    assert breaker.state is State.HALF_OPEN
    assert breaker.retry_after is None


def test_half_open_caps_trial_calls_in_flight(clock):
    """HALF_OPEN runs at most half_open_max_calls at once; others get HalfOpenLimitReached."""
    breaker = make(clock, failure_threshold=1, half_open_max_calls=2, success_threshold=5)
    failures(breaker, 1)
    clock.advance(30)
    with breaker.guard(), breaker.guard():
        with pytest.raises(HalfOpenLimitReached) as info:
            breaker.call(ok)
        assert isinstance(info.value, CircuitOpenError)
        assert info.value.state is State.HALF_OPEN
    # Both permits came back when the blocks ended.
    with breaker.guard(), breaker.guard():
        pass
    assert breaker.state is State.HALF_OPEN


@pytest.mark.parametrize(
    "ending",
    ["success", "ignored", "keyboard_interrupt"],
)
def test_half_open_permit_returns_whatever_the_outcome(clock, ending):
    """A trial permit is returned when its call ends, however it ends."""
    breaker = make(
        clock, failure_threshold=1, half_open_max_calls=1, success_threshold=5, ignore=KeyError
    )
    failures(breaker, 1)
    clock.advance(30)
    for _ in range(3):
        if ending == "success":
            breaker.call(ok)
        elif ending == "ignored":
            with pytest.raises(KeyError):
                breaker.call(fail(KeyError("k")))
        else:
            with pytest.raises(KeyboardInterrupt):
                breaker.call(fail(KeyboardInterrupt()))
    assert breaker.state is State.HALF_OPEN


def test_success_threshold_closes_and_clears(clock):
    """success_threshold trial successes close the circuit, with the window cleared."""
    breaker = make(clock, failure_threshold=1, success_threshold=3)
    failures(breaker, 1)
    clock.advance(30)
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state is State.HALF_OPEN
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    snapshot = breaker.snapshot()
    assert (snapshot.window_calls, snapshot.consecutive_failures) == (0, 0)
    assert (snapshot.successes, snapshot.failures) == (3, 1)


def test_first_trial_failure_reopens(clock):
    """The first failure in HALF_OPEN reopens the circuit."""
    breaker = make(clock, failure_threshold=3, success_threshold=3)
    failures(breaker, 3)
    clock.advance(30)
    breaker.call(ok)
    failures(breaker, 1)
    assert breaker.state is State.OPEN
    assert rejected(breaker).reason == OpenReason("consecutive_failures", 1)


def test_backoff_grows_the_open_period_up_to_the_cap(clock):
    """Each reopen multiplies the OPEN period: min(timeout * m ** n, max_timeout)."""
    breaker = make(clock, failure_threshold=1, timeout=10, backoff_multiplier=2.0, max_timeout=50)
    failures(breaker, 1)
    periods = []
    for _ in range(4):
        periods.append(breaker.retry_after)
        clock.advance(breaker.retry_after)
        failures(breaker, 1)  # the trial call fails
    periods.append(breaker.retry_after)
    assert periods == [10.0, 20.0, 40.0, 50.0, 50.0]


def test_closing_resets_the_backoff(clock):
    """After the circuit closes, the next OPEN period is the base timeout again."""
    breaker = make(
        clock, failure_threshold=1, timeout=10, backoff_multiplier=3.0, success_threshold=1
    )
    failures(breaker, 1)
    clock.advance(10)
    failures(breaker, 1)
    assert breaker.retry_after == 30.0
    clock.advance(30)
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    failures(breaker, 1)
    assert breaker.retry_after == 10.0


def test_slow_trial_success_is_a_success(clock):
    """A slow trial call that succeeds counts towards closing, and as a slow call."""
    breaker = make(clock, failure_threshold=1, slow_call_duration=2, success_threshold=2)
    failures(breaker, 1)
    clock.advance(30)

    def slow():
        clock.advance(2)
        return "slow"

    assert breaker.call(slow) == "slow"
    assert breaker.state is State.HALF_OPEN
    assert breaker.call(slow) == "slow"
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().slow_calls == 2


def test_stale_success_counts_only_in_totals(clock):
    """The outcome of a call applies to the state it was admitted under."""
    breaker = make(clock, failure_threshold=1, success_threshold=1)
    guard = breaker.guard()
    guard.__enter__()  # admitted while CLOSED
    failures(breaker, 1)
    clock.advance(30)
    with breaker.guard():  # the first trial in HALF_OPEN holds its permit
        guard.__exit__(None, None, None)  # the old call succeeds now
        assert breaker.state is State.HALF_OPEN  # not a trial success
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().successes == 2


def test_trip_forces_open_until_reset(clock):
    """trip() rejects everything until reset(); time never reopens it."""
    breaker = make(clock)
    breaker.trip("maintenance window")
    assert breaker.state is State.FORCED_OPEN
    clock.advance(10_000)
    error = rejected(breaker)
    assert error.reason == OpenReason("manual", "maintenance window")
    assert error.retry_after is None
    assert "no automatic retry" in str(error)
    assert breaker.retry_after is None
    breaker.reset()
    assert breaker.call(ok) == "ok"


def test_trip_from_half_open_voids_running_trials(clock):
    """A trial that ends after a trip changes nothing."""
    breaker = make(clock, failure_threshold=1, success_threshold=1)
    failures(breaker, 1)
    clock.advance(30)
    with breaker.guard():
        breaker.trip()
    assert breaker.state is State.FORCED_OPEN


def test_reset_clears_window_counters_and_backoff(clock):
    """reset() closes the circuit and clears counts and backoff."""
    breaker = make(clock, failure_threshold=1, timeout=10, backoff_multiplier=2.0)
    failures(breaker, 1)
    clock.advance(10)
    failures(breaker, 1)
    assert breaker.retry_after == 20.0
    breaker.reset()
    snapshot = breaker.snapshot()
    assert snapshot.state is State.CLOSED
    assert (snapshot.failures, snapshot.calls_allowed, snapshot.window_calls) == (0, 0, 0)
    failures(breaker, 1)
    assert breaker.retry_after == 10.0
    assert [t.reason.kind for t in snapshot.transitions][-1] == "reset"


def test_disabled_passes_everything_and_measures(clock):
    """disable(): every call passes, outcomes are measured, it never opens."""
    breaker = make(clock, failure_threshold=1)
    breaker.disable()
    failures(breaker, 50)
    assert breaker.state is State.DISABLED
    snapshot = breaker.snapshot()
    assert (snapshot.failures, snapshot.window_failure_rate) == (50, 1.0)
    breaker.reset()
    failures(breaker, 1)
    assert breaker.state is State.OPEN


def test_rejected_caller_does_not_wait_for_a_running_trial(clock):
    """A rejection returns while a trial call is still running."""
    breaker = make(clock, failure_threshold=1, half_open_max_calls=1)
    failures(breaker, 1)
    clock.advance(30)
    started, release = threading.Event(), threading.Event()

    def trial():
        started.set()
        assert release.wait(10)

    thread = threading.Thread(target=breaker.call, args=(trial,))
    thread.start()
    try:
        assert started.wait(10)
        with pytest.raises(HalfOpenLimitReached):
            breaker.call(ok)
    finally:
        release.set()
        thread.join(10)
    assert breaker.state is State.HALF_OPEN


def test_freezegun_drives_the_default_clock():
    """freeze_time + tick move an OPEN breaker built with the default clock."""
    with freeze_time("2026-11-27 12:00:00") as frozen:
        breaker = cbsync.CircuitBreaker("frozen", failure_threshold=1, timeout="30s")
        failures(breaker, 1)
        frozen.tick(29)
        assert breaker.retry_after == pytest.approx(1.0)
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
        frozen.tick(1)
        breaker.call(ok)
        assert breaker.state is State.HALF_OPEN


def test_base_exceptions_propagate_uncounted(clock):
    """KeyboardInterrupt and SystemExit propagate and are not counted."""
    breaker = make(clock, failure_threshold=1)
    for exc in (KeyboardInterrupt(), SystemExit(3), GeneratorExit()):
        with pytest.raises(type(exc)):
            breaker.call(fail(exc))
    snapshot = breaker.snapshot()
    assert breaker.state is State.CLOSED
    assert (snapshot.failures, snapshot.successes, snapshot.ignored) == (0, 0, 0)
    assert snapshot.calls_allowed == 3


def test_exception_classification(clock):
    """ignore beats failure_on; an exception matching neither is a success."""
    breaker = make(clock, failure_on=(OSError,), ignore=lambda exc: "ignore me" in str(exc))
    for exc in (OSError("down"), OSError("ignore me"), ValueError("bad input")):
        with pytest.raises(type(exc)):
            breaker.call(fail(exc))
    snapshot = breaker.snapshot()
    assert (snapshot.failures, snapshot.ignored, snapshot.successes) == (1, 1, 1)


def test_failure_result_counts_a_returned_value(clock):
    """failure_result turns a returned value into a failure; the value is still returned."""
    breaker = make(clock, failure_threshold=2, failure_result=lambda r: r == 503)
    assert breaker.call(lambda: 503) == 503
    assert breaker.call(lambda: 200) == 200
    assert breaker.call(lambda: 503) == 503
    assert breaker.call(lambda: 503) == 503
    assert breaker.state is State.OPEN


def test_raising_predicates_are_logged_not_raised(clock, caplog):
    """A predicate that raises is logged; the call's own outcome stands."""

    def broken(value):
        raise RuntimeError("predicate bug")

    breaker = make(clock, failure_result=broken, failure_on=broken)
    assert breaker.call(ok) == "ok"
    with pytest.raises(OSError):
        breaker.call(fail())
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures) == (1, 1)
    assert [r.levelname for r in caplog.records].count("ERROR") == 2
    assert "predicate bug" in caplog.text


def test_stale_failure_does_not_count_in_the_next_closed_period(clock):
    """A failure admitted before the circuit opened and closed again moves no window or streak."""
    breaker = make(clock, failure_threshold=2, success_threshold=1)
    stale = breaker.guard()
    stale.__enter__()  # admitted in the first CLOSED period
    failures(breaker, 2)
    clock.advance(30)
    breaker.call(ok)  # the trial closes the circuit: a new CLOSED period
    stale.__exit__(OSError, OSError("late"), None)
    snapshot = breaker.snapshot()
    assert (snapshot.consecutive_failures, snapshot.window_calls, snapshot.failures) == (0, 0, 3)
    failures(breaker, 1)
    assert breaker.state is State.CLOSED  # one failure of this period, not two


def test_backoff_never_overflows(clock):
    """A day-long outage at a large multiplier keeps reopening for max_timeout."""
    breaker = make(clock, failure_threshold=1, timeout=1, max_timeout=300, backoff_multiplier=10.0)
    failures(breaker, 1)
    for _ in range(400):  # 10.0 ** 309 overflows a float
        clock.advance(breaker.retry_after)
        failures(breaker, 1)
    assert breaker.state is State.OPEN
    assert breaker.retry_after == 300.0


def test_half_open_limit_message(clock):
    """HalfOpenLimitReached names the breaker, the reason, and says to retry later."""
    breaker = make(clock, failure_threshold=1, half_open_max_calls=1)
    failures(breaker, 1)
    clock.advance(30)
    with breaker.guard(), pytest.raises(HalfOpenLimitReached) as info:
        breaker.call(ok)
    assert str(info.value) == (
        "circuit 'sm' is half_open and its trial calls are all in flight "
        "(consecutive_failures=1); retry later"
    )
