"""The store contract: a breaker behaves the same on local state and on a shared store.

Every test runs twice: with no store (everything in the process) and with a
RedisStore on a real server (``CBSYNC_TEST_REDIS_URL``, a unique prefix per
test, keys deleted afterwards).  ``kit.settle()`` lets the store publish and
read back (a no-op locally); ``kit.elapse(s)`` moves the breaker's clock and,
for Redis, also waits ``s`` of real time, since a shared OPEN period is
measured on the Redis server's clock.
"""

import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from _support import Clock, Recorder, fail, failures, ok

import cbsync
from cbsync import CircuitOpenError, HalfOpenLimitReached, OpenReason, State
from cbsync.stores import StoreBinding


def documented_store() -> Any:
    """The ``TableStore`` class defined on docs/stores.md, run from the page itself."""
    page = Path(__file__).resolve().parent.parent / "docs" / "stores.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text("utf-8"), re.DOTALL | re.M)
    namespace: Dict[str, Any] = {"__name__": "docs_stores"}
    exec(compile(blocks[0], str(page), "exec"), namespace)
    return namespace["TableStore"]


class Kit:
    """Builds breakers on one kind of state, and moves time for them."""

    def __init__(self, kind: str, stores: Optional[Any] = None) -> None:
        self.kind = kind
        self.clock = Clock()
        self.store = stores(sync_interval=60.0) if stores is not None else None

    def breaker(self, name: str = "svc", **config: Any) -> cbsync.CircuitBreaker:
        breaker = cbsync.CircuitBreaker(name, clock=self.clock, store=self.store, **config)
        self.settle()  # first contact, so that the store answers for the fleet
        return breaker

    def settle(self) -> None:
        if self.store is not None:
            assert self.store.sync(), "Redis did not answer"

    def elapse(self, seconds: float) -> None:
        if self.kind == "redis":
            # A store maps the server's OPEN period onto the breaker's clock when
            # it syncs, maybe during this wait: move the clock after it.
            time.sleep(seconds)  # real time: shared OPEN periods run on the server's clock
        self.clock.advance(seconds)


@pytest.fixture(params=["local", "redis", "table"])
def kit(request: pytest.FixtureRequest, tmp_path) -> Iterator[Kit]:
    """A Kit for local state, for a RedisStore, and for the store of docs/stores.md."""
    if request.param == "local":
        yield Kit("local")
        return
    if request.param == "table":
        # Written against the public store interface only, on its docs page.
        table_store = documented_store()
        made = []

        def tables(sync_interval: float) -> Any:
            made.append(table_store(tmp_path / "breakers.db", sync_interval=sync_interval))
            return made[-1]

        try:
            yield Kit("table", tables)
        finally:
            for store in made:
                store.close()
        return
    # Imported here: the local half of this file needs no redis package.
    from _redis_support import Stores, require_redis

    require_redis()
    stores = Stores()
    try:
        yield Kit("redis", stores)
    finally:
        stores.close()


def rejected(breaker: cbsync.CircuitBreaker) -> CircuitOpenError:
    """Call ``breaker`` once, expecting a rejection; return the error."""
    called: List[int] = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(called.append, 1)
    assert called == []
    return info.value


def test_consecutive_failures_open_the_circuit(kit):
    """failure_threshold consecutive failures open it; calls are then rejected unrun."""
    breaker = kit.breaker(failure_threshold=3, timeout="200ms")
    failures(breaker, 2)
    assert breaker.state is State.CLOSED
    failures(breaker, 1)
    assert breaker.state is State.OPEN
    kit.settle()
    assert breaker.state is State.OPEN
    error = rejected(breaker)
    assert error.reason == OpenReason("consecutive_failures", 3)
    assert error.state is State.OPEN
    assert 0.0 < error.retry_after <= 0.2


def test_a_success_breaks_the_streak(kit):
    """A success resets the consecutive count: 2 + 2 failures around it do not open."""
    breaker = kit.breaker(failure_threshold=3, failure_rate_threshold=None)
    failures(breaker, 2)
    breaker.call(ok)
    kit.settle()
    failures(breaker, 2)
    kit.settle()
    assert breaker.state is State.CLOSED


def test_failure_rate_opens_once_minimum_calls_are_in(kit):
    """The rate rule waits for minimum_calls, then opens at the threshold."""
    breaker = kit.breaker(failure_threshold=None, minimum_calls=6, failure_rate_threshold=0.5)
    for _ in range(3):
        breaker.call(ok)
    failures(breaker, 2)
    kit.settle()
    assert breaker.state is State.CLOSED  # 5 calls: below minimum_calls
    failures(breaker, 1)
    assert breaker.state is State.OPEN
    kit.settle()
    assert rejected(breaker).reason == OpenReason("failure_rate", 0.5)


def test_open_period_then_trials_close_the_circuit(kit):
    """After the OPEN period a trial is admitted; success_threshold successes close."""
    breaker = kit.breaker(failure_threshold=2, timeout="200ms", success_threshold=2)
    failures(breaker, 2)
    kit.settle()
    kit.elapse(0.25)
    assert breaker.call(ok) == "ok"
    assert breaker.state is State.HALF_OPEN
    breaker.call(ok)
    assert breaker.state is State.CLOSED
    kit.settle()
    assert breaker.state is State.CLOSED
    moves = [(t.old, t.new) for t in breaker.snapshot().transitions]
    assert moves == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]
    failures(breaker, 1)
    assert breaker.state is State.CLOSED  # the window and streak were cleared on close


def test_a_trial_failure_reopens_with_backoff(kit):
    """A failed trial reopens at once, for timeout * backoff_multiplier."""
    breaker = kit.breaker(failure_threshold=1, timeout="200ms", backoff_multiplier=2.0)
    failures(breaker, 1)
    kit.settle()
    kit.elapse(0.25)
    failures(breaker, 1)
    assert breaker.state is State.OPEN
    kit.settle()
    error = rejected(breaker)
    assert error.reason.kind == "consecutive_failures"
    assert 0.3 < error.retry_after <= 0.4


def test_half_open_admits_at_most_half_open_max_calls(kit):
    """Trial calls in flight never exceed half_open_max_calls; permits come back."""
    breaker = kit.breaker(
        failure_threshold=1, timeout="200ms", half_open_max_calls=2, success_threshold=5
    )
    failures(breaker, 1)
    kit.settle()
    kit.elapse(0.25)
    inside = threading.Barrier(3, timeout=5)
    release = threading.Event()
    errors: List[BaseException] = []

    def trial() -> None:
        def hold() -> str:
            inside.wait()
            assert release.wait(5)
            return "ok"

        try:
            breaker.call(hold)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=trial) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait()  # both trial calls are running
    with pytest.raises(HalfOpenLimitReached):
        breaker.call(ok)
    release.set()
    for thread in threads:
        thread.join(5)
    assert errors == []
    assert breaker.state is State.HALF_OPEN
    kit.settle()  # a shared store takes the permits back in its next exchange
    assert breaker.call(ok) == "ok"


def test_trip_forces_open_until_reset(kit):
    """trip() rejects everything, with no retry time, until reset(); reset clears counts."""
    breaker = kit.breaker(timeout="200ms")
    breaker.call(ok)
    breaker.trip("maintenance")
    kit.settle()
    error = rejected(breaker)
    assert error.state is State.FORCED_OPEN
    assert error.reason == OpenReason("manual", "maintenance")
    assert error.retry_after is None
    kit.elapse(0.25)
    assert breaker.state is State.FORCED_OPEN
    breaker.reset()
    kit.settle()
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().successes == 0
    assert breaker.call(ok) == "ok"


def test_reset_of_a_closed_breaker_clears_its_window(kit):
    """reset() on a CLOSED breaker forgets the failures it had seen."""
    breaker = kit.breaker(failure_threshold=3, failure_rate_threshold=None)
    failures(breaker, 2)
    kit.settle()
    breaker.reset()
    kit.settle()
    failures(breaker, 2)
    kit.settle()
    assert breaker.state is State.CLOSED


def test_ignored_exceptions_and_failure_results(kit):
    """ignore= counts neither way; failure_result= makes a returned value a failure."""
    breaker = kit.breaker(
        failure_threshold=2, ignore=KeyError, failure_result=lambda result: result == 503
    )
    with pytest.raises(KeyError):
        breaker.call(fail(KeyError("k")))
    assert breaker.call(lambda: 503) == 503
    kit.settle()
    assert breaker.state is State.CLOSED
    assert breaker.call(lambda: 503) == 503
    assert breaker.state is State.OPEN
    snapshot = breaker.snapshot()
    assert (snapshot.ignored, snapshot.failures) == (1, 2)


def test_listeners_hear_the_failure_before_the_state_change(kit):
    """The call that opens the circuit reports on_failure, then on_state_change."""
    recorder = Recorder()
    breaker = kit.breaker(failure_threshold=1)
    breaker.add_listener(recorder)
    failures(breaker, 1)
    rejected(breaker)
    assert recorder.kinds() == ["failure", "state", "rejected"]
    assert recorder.states() == [(State.CLOSED, State.OPEN)]


def test_disabled_breaker_passes_everything(kit):
    """disable(): calls always run, outcomes are counted, it never opens."""
    breaker = kit.breaker(failure_threshold=1)
    breaker.disable()
    failures(breaker, 3)
    kit.settle()
    assert breaker.state is State.DISABLED
    assert breaker.call(ok) == "ok"
    assert breaker.snapshot().failures == 3


def test_counts_are_exact_under_threads(kit):
    """Concurrent calls are all counted, fast path or not."""
    breaker = kit.breaker(failure_threshold=None, failure_rate_threshold=None)
    start = threading.Barrier(4, timeout=5)

    def work() -> None:
        start.wait()
        for i in range(250):
            if i % 10 == 0:
                with pytest.raises(OSError):
                    breaker.call(fail())
            else:
                breaker.call(ok)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    kit.settle()
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures) == (900, 100)
    assert breaker.state is State.CLOSED


def test_a_breaker_without_store_has_the_inert_binding():
    """store=None keeps the core's hooks inert: the base binding does nothing."""
    binding = StoreBinding()
    assert binding.judged_counts(3, 2, 1, 2) == (3, 2, 1, 2)
    assert binding.request_trial() is None
    assert binding.shared is False
    assert cbsync.CircuitBreaker("x")._binding is None


@pytest.mark.parametrize("store", [object(), "redis://localhost", 42])
def test_a_non_store_is_a_config_error(store):
    """store= must have bind(); anything else is a ConfigError naming it."""
    with pytest.raises(cbsync.ConfigError, match="is not a store"):
        cbsync.CircuitBreaker("x", store=store)
