"""Reading breakers for reporters: the snapshot's reporting fields, Reader and Reporter."""

import logging
import math
import os
import threading
import warnings
from typing import List

import pytest
from _support import failures, ok

import cbsync
from cbsync import State
from cbsync.reporting import LATENCY_BOUNDS, STATE_CODES, Delta, Reader, Reporter

TIMEOUT = 10.0


def test_snapshot_counts_transitions_by_old_and_new_state(clock):
    """transition_counts counts every move since creation, across resets."""
    breaker = cbsync.CircuitBreaker("moves", clock=clock, failure_threshold=1, timeout=1)
    failures(breaker, 1)
    clock.advance(1)
    breaker.call(ok)  # OPEN -> HALF_OPEN, then a trial success
    breaker.reset()
    failures(breaker, 1)
    counts = breaker.snapshot().transition_counts
    assert counts[(State.CLOSED, State.OPEN)] == 2
    assert counts[(State.OPEN, State.HALF_OPEN)] == 1
    assert counts[(State.HALF_OPEN, State.CLOSED)] == 1
    assert sum(counts.values()) == 4
    with pytest.raises(TypeError):
        counts[(State.CLOSED, State.OPEN)] = 0  # type: ignore[index]


def test_snapshot_latency_histogram_and_sum(clock):
    """latency_histogram holds the buckets of the calls' latencies; latency_sum their total."""
    breaker = cbsync.CircuitBreaker("latency", clock=clock)

    def slow(seconds):
        def work():
            clock.advance(seconds)

        return work

    for seconds in (0.001, 0.001, 0.2, 30.0):
        breaker.call(slow(seconds))
    snapshot = breaker.snapshot()
    assert sum(n for _, n in snapshot.latency_histogram) == 4
    assert math.isclose(snapshot.latency_sum, 30.202)
    bounds = [bound for bound, _ in snapshot.latency_histogram]
    assert bounds == sorted(bounds)
    assert all(bound in LATENCY_BOUNDS for bound in bounds)
    one_ms = next(n for bound, n in snapshot.latency_histogram if bound >= 0.001)
    assert one_ms == 2
    assert LATENCY_BOUNDS[-1] == math.inf
    assert all(b / a <= 1.0501 for a, b in zip(LATENCY_BOUNDS, LATENCY_BOUNDS[1:-1]))


def test_snapshot_counts_resets(clock):
    """resets tells a reader that the totals started again."""
    breaker = cbsync.CircuitBreaker("resets", clock=clock)
    breaker.call(ok)
    breaker.reset()
    breaker.reset()
    snapshot = breaker.snapshot()
    assert (snapshot.resets, snapshot.successes) == (2, 0)


def test_reader_gives_exact_deltas(clock):
    """read() returns what each breaker did since the previous read."""
    registry = cbsync.Registry(clock=clock)
    reader = Reader(registry)
    assert reader.read() == []
    payments = registry.get("payments", failure_threshold=2, timeout=10)
    payments.call(ok)
    failures(payments, 2)  # opens
    with pytest.raises(cbsync.CircuitOpenError):
        payments.call(ok)
    (first,) = reader.read()
    assert isinstance(first, Delta)
    assert (first.name, first.successes, first.failures, first.rejected) == ("payments", 1, 2, 1)
    assert first.calls == 3
    assert first.transitions == {(State.CLOSED, State.OPEN): 1}
    assert first.state is State.OPEN
    assert sum(n for _, n in first.latency) == 3
    (idle,) = reader.read()
    assert (idle.successes, idle.failures, idle.rejected, idle.transitions) == (0, 0, 0, {})
    assert idle.latency == ()
    assert idle.latency_sum == 0.0
    clock.advance(10)
    payments.call(ok)
    (later,) = reader.read()
    assert later.successes == 1
    assert later.transitions == {(State.OPEN, State.HALF_OPEN): 1}


def test_reader_follows_a_registry_and_the_default_registry(breaker_registry):
    """A Reader of cbsync.registry reads whatever registry is the default at each read."""
    reader = Reader(cbsync.registry)
    breaker_registry.get("first").call(ok)
    assert [d.name for d in reader.read()] == ["first"]
    breaker_registry.get("second").call(ok)
    assert [(d.name, d.successes) for d in reader.read()] == [("first", 0), ("second", 1)]


def test_reader_of_explicit_breakers(clock):
    """A Reader takes one breaker or several; the same breaker twice is read once."""
    one = cbsync.CircuitBreaker("one", clock=clock)
    two = cbsync.CircuitBreaker("two", clock=clock)
    one.call(ok)
    assert [d.name for d in Reader(one).read()] == ["one"]
    assert [d.name for d in Reader([one, two, one]).read()] == ["one", "two"]
    assert [s.name for s in Reader((one, two)).snapshots()] == ["one", "two"]
    with pytest.raises(cbsync.ConfigError, match=r"is not a cbsync\.CircuitBreaker"):
        Reader([one, "two"])  # type: ignore[list-item]
    with pytest.raises(cbsync.ConfigError, match=r"must be a cbsync\.Registry"):
        Reader(42)  # type: ignore[arg-type]


def test_a_reset_loses_nothing(clock):
    """Calls before a reset that no read saw yet are still in the next delta."""
    breaker = cbsync.CircuitBreaker("reset", clock=clock)
    reader = Reader(breaker)
    for _ in range(5):
        breaker.call(ok)
    assert reader.read()[0].successes == 5
    breaker.call(ok)  # never read before the reset
    breaker.reset()
    breaker.call(ok)
    breaker.call(ok)
    (delta,) = reader.read()
    assert delta.successes == 3
    assert sum(n for _, n in delta.latency) == 3
    assert delta.transitions == {}  # the reset of a CLOSED breaker moves nothing


def test_lifetime_totals_survive_resets(clock):
    """snapshot().lifetime sums the totals over resets; the other totals restart."""
    breaker = cbsync.CircuitBreaker("lifetime", clock=clock, failure_threshold=2, timeout=10)
    breaker.call(ok)
    failures(breaker, 2)
    with pytest.raises(cbsync.CircuitOpenError):
        breaker.call(ok)
    breaker.reset()
    breaker.call(ok)
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures, snapshot.calls_rejected) == (1, 0, 0)
    lifetime = snapshot.lifetime
    assert (lifetime.successes, lifetime.failures, lifetime.calls_rejected) == (2, 2, 1)
    assert lifetime.calls_allowed == 4
    assert sum(n for _, n in lifetime.latency_histogram) == 4
    assert sum(n for _, n in snapshot.latency_histogram) == 1


def test_fast_successes_pending_at_a_reset_count_in_the_lifetime():
    """Lock-free successes not folded yet when reset() runs still reach the lifetime totals."""
    breaker = cbsync.CircuitBreaker("pending")
    for _ in range(100):
        breaker.call(ok)  # lock-free: buffered until a locked operation folds them
    breaker.reset()
    assert breaker.snapshot().lifetime.successes == 100


def test_deltas_add_up_to_the_totals_under_threads():
    """Reads racing 8 calling threads: the deltas add up exactly to the final totals."""
    breaker = cbsync.CircuitBreaker("busy", failure_threshold=None, failure_rate_threshold=None)
    reader = Reader(breaker)
    threads, calls = 8, 2_000
    barrier = threading.Barrier(threads + 1, timeout=TIMEOUT)
    summed = {"successes": 0, "failures": 0}

    def work(index: int) -> None:
        barrier.wait()
        for n in range(calls):
            try:
                breaker.call(failures_every(n, index))
            except OSError:
                pass

    def add(deltas: List[Delta]) -> None:
        for delta in deltas:
            summed["successes"] += delta.successes
            summed["failures"] += delta.failures

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    while any(worker.is_alive() for worker in workers):
        add(reader.read())
    for worker in workers:
        worker.join(TIMEOUT)
    add(reader.read())
    snapshot = breaker.snapshot()
    assert summed == {"successes": snapshot.successes, "failures": snapshot.failures}
    assert snapshot.successes + snapshot.failures == threads * calls


def failures_every(n: int, index: int):
    if (n + index) % 7 == 0:

        def failing() -> None:
            raise OSError("down")

        return failing
    return ok


def test_reporter_sends_on_flush_and_close(clock):
    """flush() sends at once; close() sends a last time and stops the thread."""
    breaker = cbsync.CircuitBreaker("pushed", clock=clock)
    sent: List[List[Delta]] = []
    reporter = Reporter(breaker, sent.append, interval=3600)
    breaker.call(ok)
    reporter.flush()
    breaker.call(ok)
    reporter.close()
    reporter.close()  # again: nothing more
    assert [[d.successes for d in deltas] for deltas in sent] == [[1], [1]]
    assert reporter._thread is not None
    assert not reporter._thread.is_alive()


def test_reporter_sends_every_interval_from_its_own_thread():
    """The reporter's thread reads and sends every interval, never the caller's thread."""
    breaker = cbsync.CircuitBreaker("periodic")
    breaker.call(ok)
    got = threading.Event()
    threads = []

    def send(deltas: List[Delta]) -> None:
        threads.append(threading.current_thread().name)
        got.set()

    reporter = Reporter(breaker, send, interval=0.01)  # real time: a short reporting period
    try:
        assert got.wait(TIMEOUT)
    finally:
        reporter.close(flush=False)
    assert threads[0] == "cbsync-reporter"


def test_a_failing_send_is_logged_and_never_raises(caplog):
    """An exception from send is logged once a minute at most; flush() never raises."""
    breaker = cbsync.CircuitBreaker("broken-sink")

    def send(deltas: List[Delta]) -> None:
        raise OSError("the collector is down")

    reporter = Reporter(breaker, send, interval=3600)
    with caplog.at_level(logging.ERROR, logger="cbsync"):
        reporter.flush()
        reporter.flush()
    reporter.close(flush=False)
    logged = [r for r in caplog.records if "failed to report" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None


def test_reporter_validates_its_arguments():
    """A non-callable send or a bad interval is a ConfigError naming it."""
    breaker = cbsync.CircuitBreaker("checked")
    with pytest.raises(cbsync.ConfigError, match="send="):
        Reporter(breaker, "print")  # type: ignore[arg-type]
    with pytest.raises(cbsync.ConfigError, match="interval="):
        Reporter(breaker, print, interval=0)


def test_state_codes_cover_every_state():
    """Gauges have a number for each state."""
    assert sorted(STATE_CODES.values()) == list(range(len(State)))
    assert STATE_CODES[State.CLOSED] == 0
    assert STATE_CODES[State.OPEN] == 2


def test_a_state_change_listener_costs_the_fast_path_nothing(clock):
    """A listener overriding only on_state_change is never called for a success."""
    calls = []

    class StateOnly(cbsync.Listener):
        def on_state_change(self, breaker, old, new, reason):
            calls.append((old, new))

    class Everything(cbsync.Listener):
        def on_success(self, breaker, elapsed):
            calls.append("success")

    state_only = StateOnly()
    breaker = cbsync.CircuitBreaker("quiet", clock=clock, listeners=[state_only])
    breaker.call(ok)
    assert calls == []
    assert breaker._success_listeners == ()
    breaker.add_listener(Everything())
    breaker.call(ok)
    assert calls == ["success"]
    breaker.trip()
    assert calls[-1] == (State.CLOSED, State.FORCED_OPEN)


def test_a_forked_child_reports_only_its_own_calls(clock):
    """After os.fork() the reader's first deltas in the child start at the fork."""
    if not hasattr(os, "fork"):
        pytest.skip("os.fork is POSIX")
    breaker = cbsync.CircuitBreaker("forked", clock=clock)
    reader = Reader(breaker)
    for _ in range(3):
        breaker.call(ok)
    reader.read()
    for _ in range(2):
        breaker.call(ok)  # the parent's, not yet read: the parent reports them
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's report travels through the pipe
        try:
            breaker.call(ok)
            os.write(write_end, str(reader.read()[0].successes).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child == "1"
    assert reader.read()[0].successes == 2


def test_a_reader_of_many_breakers_has_a_short_repr():
    """A Reader of given breakers says how many, not what each is."""
    breakers = [cbsync.CircuitBreaker("b{}".format(i)) for i in range(50)]
    assert repr(Reader(breakers)) == "<cbsync Reader of 50 breakers>"
    assert repr(Reader(breakers[0])) == "<cbsync Reader of 1 breaker>"
