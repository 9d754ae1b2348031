"""Stress under threads: exact counts, the half-open cap, single transitions, no serialisation.

Thread counts and iterations are bounded; CBSYNC_STRESS scales them up locally.
"""

import os
import threading

import pytest
from _support import Recorder, fail, ok

import cbsync
from cbsync import CircuitOpenError, State

THREADS = 8
ITERATIONS = 2000 * int(os.environ.get("CBSYNC_STRESS", "1"))
WAIT = 30  # seconds: a bound on every wait, never reached when things work


def run_threads(target, count=THREADS):
    """Start ``count`` threads on ``target(index, barrier)`` and join them, bounded."""
    barrier = threading.Barrier(count)
    errors = []

    def body(index):
        try:
            target(index, barrier)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a thread did not finish in time"
    assert errors == []


@pytest.mark.parametrize("window_type", ["count_based", "time_based"])
def test_totals_are_exact_under_contention(window_type):
    """Successes, failures, ignored and admitted calls add up exactly."""
    breaker = cbsync.CircuitBreaker(
        "stress",
        failure_threshold=None,
        failure_rate_threshold=None,
        ignore=KeyError,
        window_type=window_type,
        window_size=1000,
    )
    snapshots = []

    def work(index, barrier):
        barrier.wait(WAIT)
        for i in range(ITERATIONS):
            kind = (i + index) % 10
            if kind < 7:
                breaker.call(ok)
            elif kind < 9:
                with pytest.raises(OSError):
                    breaker.call(fail())
            else:
                with pytest.raises(KeyError):
                    breaker.call(fail(KeyError("k")))
            if i % 500 == 0:
                snapshots.append(breaker.snapshot())

    run_threads(work)
    snapshot = breaker.snapshot()
    total = THREADS * ITERATIONS
    assert snapshot.calls_allowed == total
    assert snapshot.successes == total * 7 // 10
    assert snapshot.failures == total * 2 // 10
    assert snapshot.ignored == total // 10
    assert all(s.successes + s.failures + s.ignored <= s.calls_allowed for s in snapshots)


def test_half_open_never_exceeds_its_cap(clock):
    """No more than half_open_max_calls trial calls ever run at once."""
    breaker = cbsync.CircuitBreaker(
        "cap", clock=clock, failure_threshold=1, half_open_max_calls=3, success_threshold=10**9
    )
    with pytest.raises(OSError):
        breaker.call(fail())
    clock.advance(30)
    lock = threading.Lock()
    running = [0]
    peak = [0]
    rejected = [0]

    def trial():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        for _ in range(50):  # let other threads try to get in meanwhile
            pass
        with lock:
            running[0] -= 1

    def work(index, barrier):
        barrier.wait(WAIT)
        for _ in range(ITERATIONS // 4):
            try:
                breaker.call(trial)
            except cbsync.HalfOpenLimitReached:
                with lock:
                    rejected[0] += 1

    run_threads(work)
    assert 1 <= peak[0] <= 3
    assert breaker.state is State.HALF_OPEN
    snapshot = breaker.snapshot()
    assert snapshot.calls_rejected == rejected[0]
    assert snapshot.calls_allowed + snapshot.calls_rejected == THREADS * (ITERATIONS // 4) + 1


def test_many_failing_threads_open_the_circuit_once(recorder):
    """Threads that all cross the threshold together cause one CLOSED -> OPEN transition."""
    breaker = cbsync.CircuitBreaker("once", failure_threshold=3, listeners=[recorder])
    gate = threading.Barrier(THREADS)

    def failing():
        gate.wait(WAIT)  # every thread is inside the call before any fails
        raise OSError("down")

    def work(index, barrier):
        barrier.wait(WAIT)
        with pytest.raises(OSError):
            breaker.call(failing)

    run_threads(work)
    assert recorder.states() == [(State.CLOSED, State.OPEN)]
    assert breaker.snapshot().failures == THREADS


def test_calls_run_in_parallel():
    """Eight calls are inside the protected function at the same moment."""
    breaker = cbsync.CircuitBreaker("parallel")
    inside = threading.Barrier(THREADS)

    def protected():
        inside.wait(WAIT)  # breaks, failing the test, if calls were serialised
        return "ok"

    def work(index, barrier):
        barrier.wait(WAIT)
        assert breaker.call(protected) == "ok"

    run_threads(work)
    assert breaker.snapshot().successes == THREADS


def test_stale_success_leaves_the_circuit_open():
    """A call admitted in CLOSED that succeeds after the circuit opened leaves it OPEN."""
    breaker = cbsync.CircuitBreaker("stale", failure_threshold=1, success_threshold=1)
    admitted, release = threading.Event(), threading.Event()

    def slow():
        admitted.set()
        assert release.wait(WAIT)
        return "late"

    results = []
    thread = threading.Thread(target=lambda: results.append(breaker.call(slow)))
    thread.start()
    try:
        assert admitted.wait(WAIT)
        with pytest.raises(OSError):
            breaker.call(fail())
        assert breaker.state is State.OPEN
    finally:
        release.set()
        thread.join(WAIT)
    assert results == ["late"]
    assert breaker.state is State.OPEN
    assert breaker.snapshot().successes == 1


def test_rejection_does_not_wait_for_a_running_call():
    """A FORCED_OPEN rejection returns while an admitted call is still running."""
    breaker = cbsync.CircuitBreaker("nowait", failure_threshold=1, half_open_max_calls=1)
    with pytest.raises(OSError):
        breaker.call(fail())
    started, release = threading.Event(), threading.Event()

    def long_call():
        started.set()
        assert release.wait(WAIT)

    breaker.reset()
    worker = threading.Thread(target=breaker.call, args=(long_call,))
    worker.start()
    try:
        assert started.wait(WAIT)
        breaker.trip()
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
    finally:
        release.set()
        worker.join(WAIT)


def test_listeners_calling_the_breaker_under_threads():
    """Listeners reading the breaker from many threads never deadlock."""

    class Reader(Recorder):
        def on_success(self, breaker, elapsed):
            breaker.snapshot()
            assert breaker.state in State

        def on_failure(self, breaker, elapsed, exc):
            breaker.snapshot()

    # Neither rule opens it: the first calls of 8 threads are all failures, and
    # the failure-rate rule could open the circuit on them before the rest come.
    breaker = cbsync.CircuitBreaker(
        "readers", failure_threshold=None, failure_rate_threshold=None, listeners=[Reader()]
    )

    def work(index, barrier):
        barrier.wait(WAIT)
        for i in range(200):
            if i % 3:
                breaker.call(ok)
            else:
                with pytest.raises(OSError):
                    breaker.call(fail())

    run_threads(work)
    snapshot = breaker.snapshot()
    assert snapshot.successes + snapshot.failures == THREADS * 200


def test_one_guard_object_shared_by_threads():
    """A guard kept in a variable and entered by many threads keeps each thread's permit."""
    clock_now = [0.0]
    breaker = cbsync.CircuitBreaker(
        "shared-guard",
        clock=lambda: clock_now[0],
        failure_threshold=1,
        half_open_max_calls=THREADS,
        success_threshold=10**6,
    )
    with pytest.raises(OSError):
        breaker.call(fail())
    clock_now[0] = 30.0
    guard = breaker.guard()
    inside = threading.Barrier(THREADS)

    def work(index, barrier):
        barrier.wait(WAIT)
        for _ in range(50):
            with guard:
                inside.wait(WAIT)  # every thread holds a permit at once

    run_threads(work)
    assert breaker.state is State.HALF_OPEN
    # Every permit came back: a full set of trials can be admitted again.
    with guard, guard:
        pass
    assert breaker.snapshot().successes == THREADS * 50 + 2


def test_shared_guard_keeps_permits_apart(clock):
    """A thread leaving a shared guard settles its own permit, not another thread's."""
    breaker = cbsync.CircuitBreaker("apart", clock=clock, failure_threshold=1, success_threshold=1)
    guard = breaker.guard()
    entered, leave = threading.Event(), threading.Event()

    def closed_call():
        with guard:  # admitted while CLOSED
            entered.set()
            assert leave.wait(WAIT)

    thread = threading.Thread(target=closed_call)
    thread.start()
    try:
        assert entered.wait(WAIT)
        with pytest.raises(OSError):
            breaker.call(fail())
        clock.advance(30)
        guard.__enter__()  # this thread's trial permit, in HALF_OPEN
        leave.set()
        thread.join(WAIT)  # the stale CLOSED call ends: no trial success
        assert breaker.state is State.HALF_OPEN
        guard.__exit__(None, None, None)  # the trial succeeds
        assert breaker.state is State.CLOSED
    finally:
        leave.set()
        thread.join(WAIT)
