"""cbsync.integrations.redis: breakers shared through a real Redis.

Two RedisStores in one process behave like two processes (each has its own
client, background thread and identity); the multi-process test uses four
real ones.  Fault tests start a private redis-server on a free port.  Most
tests use ``sync_interval=60`` and call ``store.sync()`` themselves, so that
every exchange happens where the test says; the ones about the background
thread use a short interval and wait with bounded polling.
"""

import logging
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from typing import Any, Dict, Iterator, List

import _redis_workers
import pytest
import redis
from _redis_support import REDIS_URL, RedisServer, Stores, delete_prefix, wait_until
from _support import failures, ok

import cbsync
from cbsync import CircuitOpenError, HalfOpenLimitReached, OpenReason, State
from cbsync.integrations.redis import RedisStore

pytestmark = pytest.mark.redis

#: Only the fleet of two stores reaches minimum_calls with 3 failures each.
SHARED = {
    "failure_threshold": None,
    "minimum_calls": 6,
    "failure_rate_threshold": 0.5,
    "timeout": 0.3,
}


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A private redis-server that the test may kill, stop and restart."""
    private = RedisServer()
    private.start()
    try:
        yield private
    finally:
        if private.process is not None and private.process.poll() is None:
            private.process.send_signal(signal.SIGCONT)
        private.kill()


def last_reason(breaker: cbsync.CircuitBreaker) -> OpenReason:
    return breaker.snapshot().transitions[-1].reason


def rejection(breaker: cbsync.CircuitBreaker) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    return info.value


# -- sharing between stores ------------------------------------------------------


def pair(first, second, **config):
    """The breaker "svc" in two processes (one store each), both known to the fleet."""
    one = cbsync.CircuitBreaker("svc", store=first, **config)
    two = cbsync.CircuitBreaker("svc", store=second, **config)
    assert first.sync()
    assert second.sync()
    return one, two


def open_and_wait(one, first, second):
    """One failure of ``one`` opens the fleet's circuit; wait out a 0.2 s OPEN period."""
    failures(one, 1)
    first.sync()
    second.sync()
    time.sleep(0.25)  # real time: the OPEN period runs on the Redis server's clock


def test_failures_spread_over_processes_open_the_breaker_everywhere(stores):
    """3 + 3 failures open both breakers; the store whose flush crossed did it."""
    first, second = stores(60), stores(60)
    one = cbsync.CircuitBreaker("svc", store=first, **SHARED)
    two = cbsync.CircuitBreaker("svc", store=second, **SHARED)
    assert first.sync()
    assert second.sync()
    failures(one, 3)
    failures(two, 3)
    assert (one.state, two.state) == (State.CLOSED, State.CLOSED)  # 3 < minimum_calls
    first.sync()
    second.sync()  # its flush takes the fleet to 6 failures out of 6
    first.sync()
    assert (one.state, two.state) == (State.OPEN, State.OPEN)
    assert last_reason(two) == OpenReason("failure_rate", 1)
    assert last_reason(one) == OpenReason("remote", "failure_rate=1")
    error = rejection(one)
    assert error.reason.kind == "remote"
    assert 0.0 < error.retry_after <= 0.3
    [row] = first.fleet_status()
    assert (row.name, row.state, row.window_calls, row.window_failure_rate) == (
        "svc",
        State.OPEN,
        6,
        1.0,
    )
    assert row.changed_by == second._origin


def test_a_local_judgement_uses_the_fleet_counts(stores):
    """A breaker that synced the fleet's failures opens on its own next failure."""
    first, second = stores(60), stores(60)
    one = cbsync.CircuitBreaker("svc", store=first, **SHARED)
    two = cbsync.CircuitBreaker("svc", store=second, **SHARED)
    assert first.sync()
    assert second.sync()
    failures(one, 5)
    first.sync()
    second.sync()
    failures(two, 1)  # 5 flushed elsewhere + 1 here: opens at once, without Redis
    assert two.state is State.OPEN
    assert last_reason(two) == OpenReason("failure_rate", 1.0)
    second.sync()
    first.sync()
    assert one.state is State.OPEN
    assert last_reason(one) == OpenReason("remote", "failure_rate=1.0")


def test_consecutive_failures_count_across_processes(stores):
    """failure_threshold counts the fleet's streak; a success anywhere breaks it."""
    first, second = stores(60), stores(60)
    config = {"failure_threshold": 4, "failure_rate_threshold": None}
    one, two = pair(first, second, **config)
    failures(one, 2)
    first.sync()
    two.call(ok)
    second.sync()  # the streak is broken ...
    first.sync()  # ... and the first store knows it (counts are as fresh as the last sync)
    failures(one, 2)
    first.sync()
    second.sync()
    assert (one.state, two.state) == (State.CLOSED, State.CLOSED)
    failures(two, 2)  # 2 after 2: the fleet's streak reaches 4
    second.sync()
    first.sync()
    assert (one.state, two.state) == (State.OPEN, State.OPEN)
    assert last_reason(one) == OpenReason("remote", "consecutive_failures=4")


def test_trip_and_reset_reach_every_process(stores):
    """trip() is FORCED_OPEN (kind "manual") elsewhere; reset() closes it everywhere."""
    first, second = stores(60), stores(60)
    one, two = pair(first, second)
    one.trip("deploy")
    first.sync()
    second.sync()
    assert two.state is State.FORCED_OPEN
    error = rejection(two)
    assert error.reason == OpenReason("manual", "deploy")
    assert error.retry_after is None
    two.reset()
    second.sync()
    first.sync()
    assert one.state is State.CLOSED
    assert last_reason(one) == OpenReason("remote", "reset")
    assert one.call(ok) == "ok"


def test_store_trip_and_reset_work_without_any_breaker(stores):
    """The operator calls act on Redis alone; processes adopt them at their next sync."""
    operator, worker = stores(60), stores(60)
    breaker = cbsync.CircuitBreaker("billing", store=worker)
    assert worker.sync()
    row = operator.trip("billing", "incident 42")
    assert (row.state, row.reason) == (State.FORCED_OPEN, OpenReason("manual", "incident 42"))
    worker.sync()
    assert rejection(breaker).reason == OpenReason("manual", "incident 42")
    assert operator.reset("billing").state is State.CLOSED
    worker.sync()
    assert breaker.call(ok) == "ok"


def test_the_background_thread_propagates_a_trip_within_the_sync_interval(stores):
    """With no explicit sync, a trip reaches another process in about sync_interval."""
    first, second = stores(0.05), stores(0.05)
    one = cbsync.CircuitBreaker("svc", store=first)
    two = cbsync.CircuitBreaker("svc", store=second)
    one.call(ok)  # a breaker's first call starts its store's background thread
    two.call(ok)
    wait_until(lambda: one._binding.shared and two._binding.shared, message="first sync")
    started = time.monotonic()
    one.trip("now")
    wait_until(lambda: two.state is State.FORCED_OPEN, message="the trip to propagate")
    assert time.monotonic() - started < 1.0  # 0.05 s interval, with room for a busy machine


def test_trial_permits_are_fleet_wide(stores):
    """half_open_max_calls holds across processes; a permit comes back when its call ends."""
    first, second = stores(60), stores(60)
    config = {
        "failure_threshold": 1,
        "timeout": 0.2,
        "half_open_max_calls": 1,
        "success_threshold": 2,
    }
    one, two = pair(first, second, **config)
    open_and_wait(one, first, second)
    with one.guard():  # holds the only trial permit of the fleet
        with pytest.raises(HalfOpenLimitReached):
            two.call(ok)
        assert two.state is State.HALF_OPEN
        assert first.fleet_status()[0].trial_calls == 1
    first.sync()  # returns the permit and counts the success
    second.sync()
    assert two.call(ok) == "ok"
    second.sync()  # the second fleet-wide success closes the circuit
    first.sync()
    assert (one.state, two.state) == (State.CLOSED, State.CLOSED)
    assert last_reason(one) == OpenReason("remote", "trial_successes=2")


def test_a_dead_holders_trial_permit_expires(stores):
    """A process that stops renewing its permit (it died) frees it after the lease."""
    first, second = stores(0.05), stores(60)
    config = {"failure_threshold": 1, "timeout": 0.2, "half_open_max_calls": 1}
    one, two = pair(first, second, **config)
    open_and_wait(one, first, second)
    guard = one.guard()
    guard.__enter__()  # a trial call that never ends
    first.close()  # ... in a process that is gone: nobody renews its lease
    started = time.monotonic()

    def admitted() -> bool:
        try:
            two.call(ok)
        except HalfOpenLimitReached:
            second.sync()
            return False
        return True

    wait_until(admitted, timeout=5, message="the dead holder's lease to expire")
    assert time.monotonic() - started >= 0.5  # it was held until the lease ran out


def test_a_trial_permit_is_given_back_when_its_period_ends_during_the_call(stores):
    """disable() during a trial call frees its fleet-wide permit: others get their trial."""
    first, second = stores(60), stores(60)
    config = {"failure_threshold": 1, "timeout": 0.2, "half_open_max_calls": 1}
    one, two = pair(first, second, **config)
    open_and_wait(one, first, second)
    with one.guard():  # the fleet's only trial permit ...
        assert first.fleet_status()[0].trial_calls == 1
        one.disable()  # ... whose HALF_OPEN period ends here while the call runs
    first.sync()
    first.sync()  # a lease still held would be renewed by these rounds
    assert first.fleet_status()[0].trial_calls == 0
    second.sync()
    assert two.call(ok) == "ok"
    assert two.state is State.HALF_OPEN


def test_reset_of_a_disabled_breaker_adopts_the_fleet_state(stores):
    """Re-enabling one process leaves an OPEN fleet OPEN; its calls count for the fleet again."""
    first, second = stores(60), stores(60)
    config = {"failure_threshold": 1, "timeout": "30s"}
    one, two = pair(first, second, **config)
    failures(one, 1)
    first.sync()
    second.sync()
    two.disable()
    second.sync()
    assert two.state is State.DISABLED
    two.reset()
    assert two.state is State.CLOSED  # here, until the next sync tells it the fleet's state
    second.sync()
    first.sync()
    assert (one.state, two.state) == (State.OPEN, State.OPEN)
    assert last_reason(two) == OpenReason("remote", "consecutive_failures=1")
    [row] = first.fleet_status()
    assert (row.state, row.reason) == (State.OPEN, OpenReason("consecutive_failures", 1))
    # A fleet that is CLOSED stays so, and the rejoined process's calls are flushed.
    one.reset()
    first.sync()
    second.sync()
    two.disable()
    for _ in range(3):
        two.call(ok)
    second.sync()  # counts made while DISABLED are still the fleet's
    two.reset()  # clears the local counts: the next flush starts from zero
    two.call(ok)
    second.sync()
    assert two.state is State.CLOSED
    assert first.fleet_status()[0].window_calls == 4


def test_a_second_trip_publishes_its_reason(stores):
    """trip() on a FORCED_OPEN breaker is for the fleet too: new reason, and re-forces it."""
    first, second = stores(60), stores(60)
    one, two = pair(first, second)
    one.trip("deploy")
    first.sync()
    second.sync()
    assert rejection(two).reason == OpenReason("manual", "deploy")
    one.trip("incident 7")
    first.sync()
    second.sync()
    assert rejection(two).reason == OpenReason("manual", "incident 7")
    assert first.fleet_status()[0].reason == OpenReason("manual", "incident 7")
    second.reset("svc")  # the fleet closes; the first process has not synced yet ...
    one.trip("still broken")  # ... and trips again: the trip wins, everywhere
    first.sync()
    second.sync()
    assert (one.state, two.state) == (State.FORCED_OPEN, State.FORCED_OPEN)
    assert rejection(two).reason == OpenReason("manual", "still broken")


def test_a_redis_that_lost_its_data_is_given_the_opening_as_it_was_made(stores):
    """Keys gone (a restart, an eviction): the local opening is published with its own reason.

    The calls still running when the circuit opened end as failures after it:
    they count in the totals, not in the streak that opened it, and the
    fleet is not judged again from them.
    """
    store = stores(60)
    breaker = cbsync.CircuitBreaker(
        "svc", store=store, failure_threshold=3, failure_rate_threshold=None, timeout="30s"
    )
    breaker.call(ok)
    assert store.sync()
    delete_prefix(stores.url, stores.prefix)  # Redis lost everything
    with store._round_lock:  # no round in between: the opening wakes the background thread
        late = [breaker.acquire(), breaker.acquire()]  # admitted while CLOSED, still running
        failures(breaker, 3)
        assert breaker.state is State.OPEN
        for permit in late:
            permit.failure(OSError("late"))
    assert store.sync()
    [row] = store.fleet_status()
    assert (row.state, row.reason) == (State.OPEN, OpenReason("consecutive_failures", 3))
    assert 20.0 < row.retry_after <= 30.0
    assert last_reason(breaker) == OpenReason("consecutive_failures", 3)


def test_a_count_based_window_shows_at_most_window_size_fleet_calls(stores):
    """The fleet's time buckets are scaled down to window_size calls for a count-based window."""
    first, second = stores(60), stores(60)
    config = {
        "window_type": "count_based",
        "window_size": 10,
        "failure_threshold": None,
        "failure_rate_threshold": 0.9,
    }
    one, two = pair(first, second, **config)
    for _ in range(12):
        one.call(ok)
    first.sync()
    failures(two, 8)  # 20 fleet calls, 8 failures: judged as 10 calls, 4 failures
    second.sync()
    [row] = first.fleet_status()
    assert (row.window_calls, row.window_failure_rate) == (10, 0.4)
    assert two.state is State.CLOSED


# -- keys, construction and configuration ------------------------------------------


def test_keys_live_under_the_prefix_escaped_and_expire(stores):
    """Every key is under the prefix, the name is escaped, and each key has an expiry."""
    name = "https://api.example.com:443/v1 {é}*"
    store = stores(60)
    breaker = cbsync.CircuitBreaker(name, store=store, failure_threshold=1, timeout=0.2)
    assert store.sync()
    failures(breaker, 1)
    store.sync()
    time.sleep(0.25)  # real time: the OPEN period runs on the Redis server's clock
    client = stores.client()
    with breaker.guard():  # a trial permit: the lease key exists meanwhile
        keys = {key.decode() for key in client.scan_iter(match=stores.prefix + "*")}
        ttls = {key: client.pttl(key) for key in keys}
    escaped = urllib.parse.quote(name, safe="")
    assert "/" not in escaped
    assert ":" not in escaped
    assert "*" not in escaped
    assert keys == {
        stores.prefix + part for part in ("idx", "s:" + escaped, "w:" + escaped, "l:" + escaped)
    }
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert [row.name for row in store.fleet_status()] == [name]


def test_constructors_do_no_io(server):
    """RedisStore(), bind() and the breaker's constructor never connect."""
    client = server.client()
    before = client.info("stats")["total_connections_received"]
    store = RedisStore(server.url, prefix="noio:")
    cbsync.CircuitBreaker("svc", store=store)
    cbsync.Registry(store=store).get("other")
    after = client.info("stats")["total_connections_received"]
    assert after == before
    store.close()


def test_closed_calls_send_no_redis_command(server):
    """A thousand CLOSED calls, successes and failures, make no Redis command at all."""
    store = RedisStore(server.url, prefix="cmds:", sync_interval=60)
    breaker = cbsync.CircuitBreaker(
        "svc", store=store, failure_threshold=1000, failure_rate_threshold=None
    )
    assert store.sync()
    client = server.client()

    def commands() -> Dict[str, int]:
        stats = client.info("commandstats")
        return {name: entry["calls"] for name, entry in stats.items()}

    before = commands()
    for i in range(1000):
        if i % 10:
            breaker.call(ok)
        else:
            with pytest.raises(OSError):
                breaker.call(_fail)
    after = commands()
    store.close()
    changed = {name: after[name] - before.get(name, 0) for name in after}
    assert {name: n for name, n in changed.items() if n} == {"cmdstat_info": 1}


def _fail() -> None:
    raise OSError("down")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("redis://localhost", {"prefix": ""}), "prefix=''"),
        (("redis://localhost", {"prefix": 3}), "prefix=3"),
        (("redis://localhost", {"sync_interval": 0}), "sync_interval=0"),
        (("redis://localhost", {"sync_interval": "fast"}), "sync_interval='fast'"),
        (("redis://localhost", {"sync_interval": "2h"}), "between"),
        (("http://localhost", {}), "redis://, rediss:// or unix://"),
        (("redis://:secret@localhost:bad/0", {}), r"\*\*\*"),
        ((object(), {}), "must be a redis:// URL or a redis.Redis client"),
    ],
)
def test_bad_configuration_is_a_config_error(arguments, message):
    """Bad arguments raise ConfigError naming them (a URL's password is hidden)."""
    target, options = arguments
    with pytest.raises(cbsync.ConfigError, match=message) as info:
        RedisStore(target, **options)
    assert "secret" not in str(info.value)


def test_a_closed_store_refuses_new_breakers(stores):
    """bind() on a closed store is a ConfigError; its breakers keep working locally."""
    store = stores(60)
    breaker = cbsync.CircuitBreaker("svc", store=store, failure_threshold=1)
    store.close()
    with pytest.raises(cbsync.ConfigError, match="closed"):
        cbsync.CircuitBreaker("other", store=store)
    failures(breaker, 1)
    assert breaker.state is State.OPEN


def test_a_registry_gives_its_store_to_every_breaker(stores):
    """Registry(store=...) binds the breakers it creates."""
    store = stores(60)
    registry = cbsync.Registry(store=store)
    breaker = registry.get("billing", failure_threshold=2)
    assert store.sync()
    store.trip("billing", "maintenance")
    store.sync()
    assert breaker.state is State.FORCED_OPEN


def test_a_given_client_is_used_as_it_is(stores):
    """A client with decode_responses=True works, and close() leaves it connected."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    store = RedisStore(client, prefix=stores.prefix, sync_interval=60)
    other = stores(60)
    breaker = cbsync.CircuitBreaker("svc", store=store)
    assert store.sync()
    other.trip("svc", "text replies")
    store.sync()
    assert rejection(breaker).reason == OpenReason("manual", "text replies")
    store.close()
    assert client.ping()
    client.close()


# -- outages ------------------------------------------------------------------------


def test_a_redis_outage_never_reaches_callers_and_state_is_resynchronised(server, caplog):
    """Redis killed under load: calls go on locally, one warning, state restored after."""
    caplog.set_level(logging.INFO, logger="cbsync")
    store = RedisStore(server.url, prefix="fault:", sync_interval=0.05)
    breaker = cbsync.CircuitBreaker(
        "svc", store=store, failure_threshold=3, failure_rate_threshold=None, timeout="30s"
    )
    breaker.call(ok)
    wait_until(lambda: breaker._binding.shared, message="the first sync")
    down = threading.Event()
    stop = threading.Event()
    unexpected: List[BaseException] = []
    done = [0] * 4

    def dependency() -> str:
        if down.is_set():
            raise OSError("dependency down")
        return "ok"

    def load(slot: int) -> None:
        while not stop.is_set():
            try:
                breaker.call(dependency)
            except (OSError, CircuitOpenError):
                pass
            except BaseException as exc:  # anything else is a leak from the store
                unexpected.append(exc)
            done[slot] += 1

    threads = [threading.Thread(target=load, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(done) > 2000, message="load")
        server.kill()
        mark = sum(done)
        wait_until(lambda: sum(done) > mark + 2000, message="calls during the outage")
        down.set()  # the dependency fails too: the breaker opens on local state
        wait_until(lambda: breaker.state is State.OPEN, message="a local open")
        wait_until(lambda: _logged(caplog, "unreachable"), message="the outage warning")
        server.start()  # empty: Redis lost everything
        observer = RedisStore(server.url, prefix="fault:", sync_interval=60)
        wait_until(
            lambda: [row.state for row in observer.fleet_status()] == [State.OPEN],
            timeout=15,
            message="the breaker's state to be given back to Redis",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert unexpected == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings if "Redis" in r.getMessage()] == [
        _logged(caplog, "unreachable")
    ]
    assert _logged(caplog, "answers again")
    [row] = observer.fleet_status()
    assert row.reason == OpenReason("consecutive_failures", 3)
    assert 20.0 < row.retry_after <= 30.0
    other = cbsync.CircuitBreaker("svc", store=observer)
    assert observer.sync()
    assert other.state is State.OPEN
    store.close()
    observer.close()


def _logged(caplog: Any, text: str) -> str:
    messages = [r.getMessage() for r in caplog.records if text in r.getMessage()]
    return messages[0] if messages else ""


def test_a_stalled_redis_costs_a_call_at_most_one_timeout(server, caplog):
    """A hung server (SIGSTOP): a trial request gives up after the socket timeout."""
    caplog.set_level(logging.INFO, logger="cbsync")
    store = RedisStore(server.url, prefix="slow:", sync_interval=60)
    breaker = cbsync.CircuitBreaker("svc", store=store, failure_threshold=1, timeout=0.2)
    assert store.sync()
    failures(breaker, 1)
    assert store.sync()
    time.sleep(0.25)  # real time: the OPEN period runs on the Redis server's clock
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert breaker.call(ok) == "ok"  # the trial is decided locally after the timeout
        trial_took = time.monotonic() - started
        started = time.monotonic()
        for _ in range(1000):
            breaker.call(ok)
        closed_took = time.monotonic() - started
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert 0.3 < trial_took < 2.0
    assert closed_took < 0.5  # no call waits for Redis once it is known to be out
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    wait_until(store.sync, message="Redis to answer again")
    store.close()


def test_one_breakers_broken_keys_do_not_stop_the_others(stores, caplog):
    """WRONGTYPE on one breaker's key is no outage: the others sync; one warning, rate-limited."""
    caplog.set_level(logging.INFO, logger="cbsync")
    store, operator = stores(60), stores(60)
    bad = cbsync.CircuitBreaker("bad", store=store, failure_threshold=2)
    good = cbsync.CircuitBreaker("good", store=store)
    stores.client().set(stores.prefix + "s:bad", "another program's string")
    assert store.sync()  # Redis answered: one breaker's keys are not an outage
    operator.trip("good", "still synced")
    assert store.sync()
    assert good.state is State.FORCED_OPEN
    failures(bad, 2)  # the broken one decides on local state
    assert bad.state is State.OPEN
    assert store.sync()
    records = [r for r in caplog.records if r.levelno >= logging.WARNING and "Redis" in r.msg]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert "'bad'" in message
    assert "WRONGTYPE" in message
    assert "unreachable" not in message


def test_a_reply_that_cannot_be_read_concerns_its_breaker_only(stores, caplog):
    """A state hash garbled by another program: trial request and sync isolate that breaker."""
    caplog.set_level(logging.INFO, logger="cbsync")
    store, operator = stores(60), stores(60)
    bad = cbsync.CircuitBreaker("bad", store=store, failure_threshold=1, timeout=0.2)
    good = cbsync.CircuitBreaker("good", store=store)
    assert store.sync()
    failures(bad, 1)
    assert store.sync()
    stores.client().hset(stores.prefix + "s:bad", "st", "garbled")
    time.sleep(0.25)  # real time: the OPEN period runs on the Redis server's clock
    assert bad.call(ok) == "ok"  # the trial request fails: decided locally
    operator.trip("good", "still synced")
    assert store.sync()
    assert good.state is State.FORCED_OPEN
    records = [r for r in caplog.records if r.levelno >= logging.WARNING and "Redis" in r.msg]
    assert [r.levelno for r in records] == [logging.WARNING], [r.getMessage() for r in records]
    assert "'bad'" in records[0].getMessage()


def _refuse_sync_threads(monkeypatch: Any, refused: threading.Event) -> List[str]:
    """Make starting a store's thread fail as on a system out of threads, while ``refused``."""
    attempts: List[str] = []
    start = threading.Thread.start

    def refusing_start(thread: threading.Thread) -> None:
        if thread.name == "cbsync-redis-sync" and refused.is_set():
            attempts.append(thread.name)
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refusing_start)
    return attempts


def test_a_sync_thread_that_cannot_start_never_fails_a_call(stores, monkeypatch, caplog):
    """ "can't start new thread": calls work, one warning, not retried per call; close() works."""
    caplog.set_level(logging.INFO, logger="cbsync")
    refused = threading.Event()
    refused.set()
    attempts = _refuse_sync_threads(monkeypatch, refused)
    store = stores(1.0)  # the first retry waits one sync_interval
    breaker = cbsync.CircuitBreaker(
        "svc", store=store, failure_threshold=3, failure_rate_threshold=None
    )
    failures(breaker, 2)  # each one is judged: each asks for the thread
    assert breaker.call(ok) == "ok"
    failures(breaker, 3)
    assert breaker.state is State.OPEN
    assert len(attempts) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    warnings = [message for message in warnings if "Redis" in message]
    assert len(warnings) == 1
    assert "can't start new thread" in warnings[0]
    assert store.sync()  # an explicit sync needs no thread
    store.close()


def test_a_sync_thread_that_could_not_start_is_started_later(stores, monkeypatch):
    """After a refused start the thread is tried again with backoff, and then syncs."""
    refused = threading.Event()
    refused.set()
    attempts = _refuse_sync_threads(monkeypatch, refused)
    store = stores(0.05)
    breaker = cbsync.CircuitBreaker("svc", store=store, failure_threshold=1000)
    failures(breaker, 1)
    assert len(attempts) == 1
    refused.clear()

    def started() -> bool:
        failures(breaker, 1)  # a judged call asks for the thread again
        return store._thread is not None and store._thread.is_alive()

    wait_until(started, message="the thread to be started again")
    wait_until(lambda: breaker._binding.shared, message="the thread's first sync")
    store.close()
    assert not store._thread.is_alive()


# -- processes ----------------------------------------------------------------------


def test_a_forked_child_restarts_the_background_sync(stores, tmp_path):
    """After os.fork() the child's store syncs by itself (its thread is restarted)."""
    script = textwrap.dedent(
        """
        import os, sys, time
        import cbsync
        from cbsync.integrations.redis import RedisStore

        url, prefix = sys.argv[1], sys.argv[2]
        store = RedisStore(url, prefix=prefix, sync_interval=0.05)
        breaker = cbsync.CircuitBreaker("svc", store=store)
        breaker.call(lambda: None)  # starts the background thread
        assert store.sync()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            deadline = time.monotonic() + 10
            while breaker.state is not cbsync.State.FORCED_OPEN and time.monotonic() < deadline:
                time.sleep(0.01)  # real time: polling a background sync, bounded
            os.write(write, breaker.state.value.encode())
            os._exit(0)
        RedisStore(url, prefix=prefix).trip("svc", "from another process")
        print(os.read(read, 100).decode())
        os.waitpid(pid, 0)
        """
    )
    assert _run_script(script, stores, tmp_path) == "forced_open"


def test_four_processes_share_one_breaker(stores, tmp_path):
    """Spread failures open it for all; a CLI trip and reset reach all; permits stay fleet-wide."""
    context = multiprocessing.get_context("spawn")  # no fork of a threaded pytest
    results = context.Queue()
    queues = [context.Queue() for _ in range(4)]
    processes = [
        context.Process(
            target=_redis_workers.run,
            args=(stores.url, stores.prefix, index, queues[index], results),
            daemon=True,
        )
        for index in range(4)
    ]
    for process in processes:
        process.start()
    try:
        origins = dict(_collect(results, "ready", 4, timeout=60))

        def ask(command: str, argument: Any = None) -> Dict[int, Any]:
            for queue in queues:
                queue.put((command, argument))
            return dict(_collect(results, command, 4))

        def wait_for_all(state: str) -> Dict[int, Any]:
            deadline = time.monotonic() + 10
            while True:
                answers = ask("state")
                if all(answer[0] == state for answer in answers.values()):
                    return answers
                if time.monotonic() > deadline:
                    pytest.fail("not all {}: {}".format(state, answers))
                time.sleep(0.02)  # real time: the workers sync every 0.05 s

        # 2 failures each: no process reaches minimum_calls (8), the fleet does.
        ask("fail", 2)
        opened = wait_for_all("open")
        kinds = {index: answer[1] for index, answer in opened.items()}
        assert set(kinds.values()) <= {"failure_rate", "remote"}, opened
        [row] = stores(60).fleet_status()
        opener = [index for index, origin in origins.items() if origin == row.changed_by]
        assert len(opener) == 1, (row, origins)
        assert kinds[opener[0]] == "failure_rate", (row, opened)

        cli = [sys.executable, "-m", "cbsync"]
        where = ["--redis", stores.url, "--prefix", stores.prefix]
        trip = subprocess.run(
            [*cli, "trip", "shared", "--reason", "maintenance", *where],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,  # the installed cbsync, not the source tree's
        )
        assert trip.returncode == 0, trip.stderr
        tripped = wait_for_all("forced_open")
        assert {answer[1:] for answer in tripped.values()} == {("manual", "maintenance")}
        assert all(answer[:2] == ("rejected", "forced_open") for answer in ask("call").values())

        reset = subprocess.run(
            [*cli, "reset", "shared", *where], capture_output=True, timeout=60, cwd=tmp_path
        )
        assert reset.returncode == 0, reset.stderr
        wait_for_all("closed")
        assert all(answer == ("admitted",) for answer in ask("call").values())

        # Open again, let the OPEN period pass, then 4 x 3 threads ask for a trial.
        ask("fail", 2)
        wait_for_all("open")
        time.sleep(0.35)  # real time: the 0.3 s OPEN period runs on the server's clock
        admitted = ask("trials", 3)
        assert 1 <= sum(admitted.values()) <= _redis_workers.BREAKER["half_open_max_calls"]
        ask("release")
        for queue in queues:
            queue.put(("stop", None))
        for process in processes:
            process.join(30)
        assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(10)


def _collect(results: Any, command: str, count: int, timeout: float = 20) -> List[Any]:
    answers = []
    while len(answers) < count:
        index, kind, answer = results.get(timeout=timeout)
        assert kind == command, (index, kind, answer)
        answers.append((index, answer))
    return answers


def _run_script(script: str, stores: Stores, cwd: Any) -> str:
    result = subprocess.run(
        # Python 3.12+ warns when a process with threads forks: that is the point here.
        [
            sys.executable,
            "-W",
            "ignore::DeprecationWarning",
            "-c",
            textwrap.dedent(script),
            stores.url,
            stores.prefix,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,  # the installed cbsync, not the source tree's
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_forked_childs_calls_before_its_first_sync_count_for_the_fleet(stores, tmp_path):
    """The child's unflushed counts start at the fork: none of its early calls is lost."""
    script = """
        import os, sys
        import cbsync
        from cbsync.integrations.redis import RedisStore

        url, prefix = sys.argv[1], sys.argv[2]
        store = RedisStore(url, prefix=prefix, sync_interval=60)
        breaker = cbsync.CircuitBreaker(
            "svc", store=store, failure_threshold=None, failure_rate_threshold=None
        )
        assert store.sync()  # no call yet, so no background thread to copy

        def boom():
            raise OSError("down")

        pid = os.fork()
        if pid == 0:
            # The first of these starts the child's thread, whose first round
            # runs right after it: the child's counts must start at the fork.
            for _ in range(3):
                try:
                    breaker.call(boom)
                except OSError:
                    pass
            store.sync()
            os._exit(0)
        os.waitpid(pid, 0)
        for _ in range(2):
            breaker.call(lambda: None)
        store.sync()
        [row] = RedisStore(url, prefix=prefix).fleet_status()
        print(row.window_calls, row.window_failure_rate)
        """
    assert _run_script(script, stores, tmp_path) == "5 0.6"


def test_a_child_forked_without_at_fork_hooks_syncs_by_itself(stores, tmp_path):
    """fork() from C, as uWSGI does: the child's store notices and starts its own thread."""
    script = """
        import ctypes, os, sys, time
        import cbsync
        from cbsync.integrations.redis import RedisStore

        url, prefix = sys.argv[1], sys.argv[2]
        store = RedisStore(url, prefix=prefix, sync_interval=60)
        breaker = cbsync.CircuitBreaker(
            "svc", store=store, failure_threshold=3, failure_rate_threshold=None
        )
        idle = RedisStore(url, prefix=prefix, sync_interval=60)
        other = cbsync.CircuitBreaker("idle", store=idle)
        breaker.call(lambda: None)  # each first call starts its store's background thread,
        other.call(lambda: None)  # whose first round runs at once; then it waits 60 s
        deadline = time.monotonic() + 10
        while not (breaker._binding.shared and other._binding.shared):
            assert time.monotonic() < deadline, "no first sync"
            time.sleep(0.01)  # real time: polling a background sync, bounded
        # A thread running at a fork from C can leave the child without a usable
        # GIL (as under uWSGI): fork while both threads wait.
        time.sleep(0.1)  # real time: let both threads settle into their 60 s wait

        def boom():
            raise OSError("down")

        read, write = os.pipe()
        # libc's fork: no os.register_at_fork hook runs (PyDLL keeps the GIL held).
        pid = ctypes.PyDLL(None).fork()
        if pid == 0:
            for _ in range(3):
                try:
                    breaker.call(boom)  # the third opens it: only a live thread publishes
                except OSError:
                    pass
            observer = RedisStore(url, prefix=prefix)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = {row.name: row for row in observer.fleet_status()}["svc"]
                if row.state is cbsync.State.OPEN:
                    break
                time.sleep(0.01)  # real time: polling a background sync, bounded
            started = time.monotonic()
            idle.close()  # the parent's thread object is no thread of this child's
            took = time.monotonic() - started
            report = "{} {} {}".format(row.state.value, row.window_calls, took < 0.5)
            os.write(write, report.encode())
            os._exit(0)
        print(os.read(read, 100).decode())
        os.waitpid(pid, 0)
        """
    if not sys.platform.startswith("linux"):
        pytest.skip("fork() through ctypes is exercised on Linux only")
    assert _run_script(script, stores, tmp_path) == "open 4 True"
