"""The admission API: breaker.acquire(), its Permit, and breaker.rejection()."""

import gc
import logging
import socket
import socketserver
import threading
from typing import List

import pytest
from _support import Clock, failures

import cbsync
from cbsync import CircuitOpenError, HalfOpenLimitReached, Outcome, State

TIMEOUT = 10.0


def make(clock: Clock, **config) -> cbsync.CircuitBreaker:
    return cbsync.CircuitBreaker("permits", clock=clock, **config)


def opened(clock: Clock, **config) -> cbsync.CircuitBreaker:
    """A breaker that just opened on one failure, OPEN for 10 s."""
    breaker = make(clock, failure_threshold=1, timeout=10, **config)
    failures(breaker, 1)
    assert breaker.state is State.OPEN
    return breaker


def half_open(clock: Clock, **config) -> cbsync.CircuitBreaker:
    breaker = opened(clock, **config)
    clock.advance(10)
    return breaker


@pytest.mark.parametrize(
    ("finish", "counts"),
    [
        (lambda p: p.success(), (1, 0, 0)),
        (lambda p: p.failure(), (0, 1, 0)),
        (lambda p: p.failure(OSError("down")), (0, 1, 0)),
        (lambda p: p.ignore(), (0, 0, 1)),
        (lambda p: p.ignore(ValueError("caller's mistake")), (0, 0, 1)),
        (lambda p: p.record(Outcome.FAILURE), (0, 1, 0)),
        (lambda p: p.record(Outcome.SUCCESS), (1, 0, 0)),
        (lambda p: p.release(), (0, 0, 0)),
    ],
)
def test_each_outcome_counts_as_its_name_says(clock, finish, counts):
    """success, failure, ignore, record and release count what they say, once."""
    breaker = make(clock)
    permit = breaker.acquire()
    assert not permit.done
    finish(permit)
    assert permit.done
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures, snapshot.ignored) == counts
    assert snapshot.calls_allowed == 1


def test_outcome_classifies_like_call(clock):
    """outcome(exc) uses failure_on and ignore; None is a success; the Outcome is returned."""
    breaker = make(clock, failure_on=(OSError,), ignore=(KeyError,))
    assert breaker.acquire().outcome(None) is Outcome.SUCCESS
    assert breaker.acquire().outcome(OSError()) is Outcome.FAILURE
    assert breaker.acquire().outcome(KeyError()) is Outcome.IGNORED
    assert breaker.acquire().outcome(ValueError()) is Outcome.SUCCESS  # the dependency answered
    assert breaker.acquire().outcome(KeyboardInterrupt()) is None  # counts nothing
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures, snapshot.ignored) == (2, 1, 1)
    assert breaker.classify(OSError()) is Outcome.FAILURE
    with pytest.raises(TypeError, match="an exception or None"):
        breaker.acquire().outcome("not an exception")  # type: ignore[arg-type]


def test_result_applies_failure_result(clock):
    """result(value) is a failure when failure_result says so, else a success."""
    breaker = make(clock, failure_result=lambda value: value == 503)
    assert breaker.acquire().result(503) is Outcome.FAILURE
    assert breaker.acquire().result(200) is Outcome.SUCCESS
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures) == (1, 1)


def test_a_second_outcome_is_an_error_naming_the_breaker(clock):
    """Exactly one outcome per permit: the second raises and counts nothing."""
    breaker = make(clock)
    permit = breaker.acquire()
    permit.success()
    for again in (permit.success, permit.failure, permit.ignore, permit.release):
        with pytest.raises(RuntimeError, match="'permits' already has its outcome"):
            again()
    assert breaker.snapshot().successes == 1


def test_a_permit_finished_by_two_threads_counts_once(clock):
    """Two threads racing to finish one permit: exactly one outcome wins."""
    breaker = make(clock)
    rounds = 200
    errors: List[BaseException] = []
    for _ in range(rounds):
        permit = breaker.acquire()
        barrier = threading.Barrier(2, timeout=TIMEOUT)

        def finish(permit=permit, barrier=barrier):
            barrier.wait()
            try:
                permit.success()
            except RuntimeError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=finish) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    assert breaker.snapshot().successes == rounds
    assert len(errors) == rounds


def test_context_manager_classifies_the_block(clock, recorder):
    """with breaker.acquire(): a clean block is a success; an exception is classified."""
    breaker = make(clock, listeners=[recorder], ignore=(KeyError,))
    with breaker.acquire() as permit:
        assert permit.trial is False
    with pytest.raises(OSError), breaker.acquire():
        raise OSError("down")
    with pytest.raises(KeyError), breaker.acquire():
        raise KeyError("not found")
    with pytest.raises(KeyboardInterrupt), breaker.acquire():
        raise KeyboardInterrupt
    assert recorder.kinds() == ["success", "failure", "ignored"]


def test_an_outcome_given_in_the_block_is_kept(clock):
    """A permit finished inside its block is not finished again on exit."""
    breaker = make(clock)
    with breaker.acquire() as permit:
        permit.failure()
    with pytest.raises(ValueError), breaker.acquire() as permit:  # noqa: PT012
        permit.ignore()
        raise ValueError("after the outcome")
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures, snapshot.ignored) == (0, 1, 1)


def test_acquire_rejects_as_call_does(clock, recorder):
    """OPEN: CircuitOpenError with retry_after; the rejection is counted and told."""
    breaker = opened(clock, listeners=[recorder])
    clock.advance(4)
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == 6.0
    assert info.value.reason.kind == "consecutive_failures"
    assert breaker.snapshot().calls_rejected == 1
    assert recorder.kinds()[-1] == "rejected"


def test_half_open_gives_at_most_max_trial_permits(clock):
    """HALF_OPEN: half_open_max_calls permits at once, then HalfOpenLimitReached."""
    breaker = half_open(clock, half_open_max_calls=2, success_threshold=3)
    first, second = breaker.acquire(), breaker.acquire()
    assert first.trial
    assert second.trial
    assert breaker.state is State.HALF_OPEN
    with pytest.raises(HalfOpenLimitReached):
        breaker.acquire()
    first.release()  # a released permit frees its slot
    third = breaker.acquire()
    second.success()
    third.success()
    assert breaker.state is State.HALF_OPEN
    breaker.acquire().success()
    assert breaker.state is State.CLOSED


def test_a_failed_trial_reopens_for_at_least_retry_after(clock):
    """failure(retry_after=s) keeps the reopened circuit OPEN at least s seconds."""
    breaker = half_open(clock, max_timeout=100)
    breaker.acquire().failure(retry_after=42)
    assert breaker.state is State.OPEN
    assert breaker.retry_after == 42.0
    breaker.reset()
    breaker = half_open(clock, max_timeout=100)
    breaker.acquire().failure(retry_after=1000)  # capped at max_timeout
    assert breaker.retry_after == 100.0


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), "5", True])
def test_retry_after_must_be_a_positive_number(clock, value):
    """A bad retry_after is a ConfigError naming it, and the permit keeps its outcome to give."""
    breaker = make(clock)
    permit = breaker.acquire()
    with pytest.raises(cbsync.ConfigError, match="retry_after="):
        permit.failure(retry_after=value)
    assert not permit.done
    permit.success()


def test_an_outcome_of_an_earlier_state_counts_in_the_totals_only(clock):
    """A permit from before a trip counts in the totals, never as a trial success."""
    breaker = make(clock)
    permit = breaker.acquire()
    breaker.trip()
    permit.success()
    assert breaker.state is State.FORCED_OPEN
    assert breaker.snapshot().successes == 1


@pytest.mark.parametrize(
    "setup",
    ["closed", "open", "elapsed", "half_open_free", "half_open_full", "forced_open", "disabled"],
)
def test_rejection_is_what_acquire_does(clock, setup):
    """rejection() answers what acquire() then does: the same error, or admission."""
    breaker = make(clock, failure_threshold=1, timeout=10, half_open_max_calls=1)
    held = []
    if setup in ("open", "elapsed", "half_open_free", "half_open_full"):
        failures(breaker, 1)
    if setup in ("elapsed", "half_open_free", "half_open_full"):
        clock.advance(10)
    if setup in ("half_open_free", "half_open_full"):
        held.append(breaker.acquire())  # the only trial slot: HALF_OPEN from here
        assert breaker.state is State.HALF_OPEN
    if setup == "half_open_free":
        held.pop().release()
    if setup == "forced_open":
        breaker.trip()
    if setup == "disabled":
        breaker.disable()
    expected = breaker.rejection()
    assert breaker.snapshot().calls_rejected == 0  # rejection() counted nothing
    if expected is None:
        breaker.acquire().release()
        return
    with pytest.raises(type(expected)) as info:
        breaker.acquire()
    assert type(info.value) is type(expected)
    assert (info.value.state, info.value.reason) == (expected.state, expected.reason)
    assert breaker.snapshot().calls_rejected == 1  # acquire() counted it; rejection() did not


def test_rejection_counts_nothing_until_recorded(clock, recorder):
    """rejection() takes no permit and counts nothing; record_rejection() counts it."""
    breaker = opened(clock, listeners=[recorder])
    error = breaker.rejection()
    assert isinstance(error, CircuitOpenError)
    assert breaker.snapshot().calls_rejected == 0
    assert breaker.record_rejection(error) is error
    assert breaker.snapshot().calls_rejected == 1
    assert recorder.events[-1] == ("rejected", "permits", error)
    with pytest.raises(TypeError):
        breaker.record_rejection(ValueError())  # type: ignore[arg-type]


def test_a_dropped_trial_permit_gives_its_slot_back_and_is_counted(clock, caplog):
    """A permit garbage-collected without an outcome frees its HALF_OPEN slot."""
    gc.collect()  # what earlier tests left behind is collected before this one counts
    breaker = cbsync.CircuitBreaker(
        "dropping", clock=clock, failure_threshold=1, timeout=10, half_open_max_calls=1
    )
    failures(breaker, 1)
    clock.advance(10)
    with caplog.at_level(logging.WARNING, logger="cbsync"):
        permit = breaker.acquire()
        assert permit.trial
        del permit
        gc.collect()
        breaker.acquire().release()  # the slot is free again
        breaker.acquire()  # dropped too: counted, logged no more
        gc.collect()
    assert breaker.snapshot().dropped_permits == 2
    messages = [r.getMessage() for r in caplog.records]
    dropped = [m for m in messages if "'dropping'" in m and "dropped without an outcome" in m]
    assert len(dropped) == 1


def test_a_permit_dropped_while_the_lock_is_taken_is_released_later(clock):
    """Dropped while the breaker's lock is held, its slot comes back at the next locked step."""
    breaker = half_open(clock, half_open_max_calls=1)
    permit = breaker.acquire()
    lock = breaker._lock_obj  # as if the garbage collector ran inside a locked section
    with lock:
        del permit
        gc.collect()
    assert breaker.snapshot().dropped_permits == 1
    trial = breaker.acquire()  # the slot came back before this admission was decided
    assert trial.trial
    trial.success()
    assert breaker.snapshot().successes == 1


def test_a_dropped_closed_permit_is_only_counted(clock):
    """A CLOSED permit dropped without an outcome changes no count but dropped_permits."""
    breaker = make(clock)
    breaker.acquire()
    gc.collect()
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures, snapshot.dropped_permits) == (0, 0, 1)


def test_repr_names_the_breaker(clock):
    """A permit's repr says whose it is and whether it is done."""
    breaker = half_open(clock)
    permit = breaker.acquire()
    assert repr(permit) == "<cbsync.Permit of 'permits' (trial)>"
    permit.success()
    assert repr(permit) == "<cbsync.Permit of 'permits' (trial) done>"


# -- a client cbsync does not ship, protected through the public API only ----------


class _LineServer(socketserver.ThreadingTCPServer):
    """One request per connection: "ok" is answered, "fail" hangs up, "hold"
    is answered once ``release`` is set."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _LineHandler)
        self.release = threading.Event()
        self.holding = threading.Semaphore(0)


class _LineHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _LineServer)
        command = self.rfile.readline().strip()
        if command == b"fail":
            return
        if command == b"hold":
            server.holding.release()
            server.release.wait(TIMEOUT)
        self.wfile.write(b"ok\n")


class LineClient:
    """A plain socket client protected by a breaker the way an integration
    would be written: acquire, talk, let the block classify the outcome."""

    def __init__(self, address, breaker: cbsync.CircuitBreaker) -> None:
        self.address = address
        self.breaker = breaker
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def request(self, command: bytes) -> None:
        with self.breaker.acquire():
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                with socket.create_connection(self.address, timeout=TIMEOUT) as sock:
                    sock.sendall(command + b"\n")
                    reply = sock.makefile("rb").readline()
                if reply != b"ok\n":
                    raise ConnectionError("the server hung up")
            finally:
                with self._lock:
                    self.in_flight -= 1


@pytest.fixture
def line_server():
    server = _LineServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_a_socket_client_under_8_threads_counts_exactly_and_limits_trials(line_server, clock):
    """8 threads on a raw socket client: exact counts; never more than 3 trial calls at once."""
    breaker = cbsync.CircuitBreaker(
        "line-service",
        clock=clock,
        failure_threshold=None,
        failure_rate_threshold=1.0,
        minimum_calls=10_000,
        timeout=30,
        half_open_max_calls=3,
        success_threshold=3,
    )
    client = LineClient(line_server.server_address, breaker)
    threads, per_thread = 8, 40
    barrier = threading.Barrier(threads, timeout=TIMEOUT)
    seen = {"ok": 0, "fail": 0}
    seen_lock = threading.Lock()

    def work(index: int) -> None:
        barrier.wait()
        for n in range(per_thread):
            command = b"fail" if (index + n) % 5 == 0 else b"ok"
            try:
                client.request(command)
                outcome = "ok"
            except ConnectionError:
                outcome = "fail"
            with seen_lock:
                seen[outcome] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(TIMEOUT * 3)
    snapshot = breaker.snapshot()
    assert seen["fail"] == threads * per_thread // 5
    assert (snapshot.successes, snapshot.failures) == (seen["ok"], seen["fail"])
    assert snapshot.calls_allowed == threads * per_thread
    assert breaker.state is State.CLOSED

    # Open it, let the OPEN period pass: 8 threads then race for 3 trial slots.
    breaker = cbsync.CircuitBreaker(
        "line-service-trials", clock=clock, failure_threshold=1, timeout=30, half_open_max_calls=3
    )
    client = LineClient(line_server.server_address, breaker)
    with pytest.raises(ConnectionError):
        client.request(b"fail")
    assert breaker.state is State.OPEN
    clock.advance(30)
    rejected: List[CircuitOpenError] = []
    start = threading.Barrier(threads, timeout=TIMEOUT)

    def trial() -> None:
        start.wait()
        try:
            client.request(b"hold")
        except HalfOpenLimitReached as error:
            rejected.append(error)

    trials = [threading.Thread(target=trial) for _ in range(threads)]
    for thread in trials:
        thread.start()
    for _ in range(3):  # three trial calls reach the server and wait there
        assert line_server.holding.acquire(timeout=TIMEOUT)
    assert breaker.state is State.HALF_OPEN
    line_server.release.set()
    for thread in trials:
        thread.join(TIMEOUT)
    assert client.max_in_flight == 3
    assert len(rejected) == threads - 3
    assert breaker.state is State.CLOSED  # three trial successes
    assert breaker.snapshot().calls_rejected == threads - 3
