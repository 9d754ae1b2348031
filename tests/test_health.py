"""Health-checked recovery: the shared scheduler, backoff, recovery and stop()."""

import logging
import random
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _support import Clock, failures
from freezegun import freeze_time

import cbsync
from cbsync import _health
from cbsync._health import Scheduler

#: Bound on every wait for something the background threads do.
TIMEOUT = 5.0
OPEN = cbsync.State.OPEN
HALF_OPEN = cbsync.State.HALF_OPEN
CLOSED = cbsync.State.CLOSED


def register(scheduler: Scheduler, breaker: cbsync.CircuitBreaker, check, **options):
    """``breaker.health_check(check, **options)``, on ``scheduler`` instead of the shared one."""
    return scheduler.register(breaker._link, breaker, check, **options)


class StateWaiter(cbsync.Listener):
    """Sets an event per state the breaker enters and keeps the reasons."""

    def __init__(self) -> None:
        self.entered = {state: threading.Event() for state in cbsync.State}
        self.reasons: list = []

    def on_state_change(self, breaker, old, new, reason):
        self.reasons.append((new, reason))
        self.entered[new].set()


def opened(name: str, clock: Clock, **config) -> cbsync.CircuitBreaker:
    """A breaker opened by one failure whose OPEN period never ends on its own
    (its clock only moves by hand), so only a health check can end it."""
    config.setdefault("failure_threshold", 1)
    breaker = cbsync.CircuitBreaker(name, clock=clock, **config)
    failures(breaker, config["failure_threshold"])
    assert breaker.state is OPEN
    return breaker


@pytest.fixture
def handles():
    """Health-check handles to stop after the test."""
    started: list = []
    yield started
    for handle in started:
        handle.stop()


@pytest.fixture(autouse=True)
def _no_leaked_registration():
    """Every test stops the health checks it registered on the shared scheduler."""
    before = set(_health.scheduler()._checks)
    yield
    assert set(_health.scheduler()._checks) <= before


def scheduled_waits(caplog, breaker_name: str) -> list:
    """The (n, wait) pairs the scheduler logged for ``breaker_name``."""
    pattern = re.compile(
        r"of '{}': next in ([0-9.]+)s \(n=(\d+)\)".format(re.escape(breaker_name))
    )
    found = []
    for record in caplog.records:
        match = pattern.search(record.getMessage())
        if match:
            found.append((int(match.group(2)), float(match.group(1))))
    return found


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"check": None}, "check"),
        ({"check": "ping"}, "check"),
        ({"interval": 0}, "interval"),
        ({"interval": "soon"}, "interval"),
        ({"interval": -1.0}, "interval"),
        ({"max_interval": float("inf")}, "max_interval"),
        ({"interval": 5, "max_interval": 1}, "max_interval"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": True}, "multiplier"),
        ({"multiplier": float("nan")}, "multiplier"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": "10%"}, "jitter"),
        ({"on_healthy": "closed"}, "on_healthy"),
        ({"on_healthy": None}, "on_healthy"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(kwargs, named):
    """A bad argument raises ConfigError naming it, and registers nothing."""
    breaker = cbsync.CircuitBreaker("bad-args")
    check = kwargs.pop("check", lambda: True)
    with pytest.raises(cbsync.ConfigError, match=r"^{}=".format(named)):
        breaker.health_check(check, **kwargs)
    assert breaker._observers == ()


def test_durations_accept_strings_and_timedeltas(handles):
    """interval and max_interval take the same duration forms as the config."""
    import datetime

    handle = cbsync.CircuitBreaker("durations").health_check(
        lambda: True, interval="250ms", max_interval=datetime.timedelta(minutes=2)
    )
    handles.append(handle)
    assert (handle.interval, handle.max_interval) == (0.25, 120.0)


def test_waits_grow_to_the_cap_within_jitter():
    """The n-th wait is min(interval * multiplier**n, max_interval) +- jitter."""
    breaker = cbsync.CircuitBreaker("waits")
    scheduler = Scheduler()
    handle = register(
        scheduler,
        breaker,
        lambda: True,
        interval=1.0,
        max_interval=10.0,
        multiplier=3.0,
        jitter=0.2,
    )
    rng = random.Random(8)
    for n, base in enumerate([1.0, 3.0, 9.0, 10.0, 10.0]):
        waits = [handle._wait(n, rng) for _ in range(500)]
        assert base * 0.8 <= min(waits) < base * 0.85
        assert base * 1.15 < max(waits) <= base * 1.2
    # A huge n neither overflows nor passes the cap.
    assert 8.0 <= handle._wait(10_000, rng) <= 12.0
    handle.stop()
    exact = register(scheduler, breaker, lambda: True, interval=0.5, multiplier=2.0, jitter=0)
    assert [exact._wait(n, rng) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    exact.stop()


def test_backoff_sequence_observed_in_real_time(clock, handles, caplog):
    """Unhealthy checks are spaced by the growing, capped, jittered waits."""
    caplog.set_level(logging.DEBUG, logger="cbsync")
    breaker = opened("backoff", clock)
    calls: list = []
    fifth = threading.Event()

    def check():
        calls.append(time.monotonic())
        if len(calls) == 5:
            fifth.set()
        return False

    opened_at = time.monotonic()
    handle = breaker.health_check(  # real time: waits of 20, 40, 80, 80, 80 ms, +-25 %
        check, interval=0.02, max_interval=0.08, multiplier=2.0, jitter=0.25
    )
    handles.append(handle)
    assert fifth.wait(TIMEOUT)
    handle.stop()
    waits = scheduled_waits(caplog, "backoff")[:5]
    assert [n for n, _ in waits] == [0, 1, 2, 3, 4]
    for (_, wait), base in zip(waits, [0.02, 0.04, 0.08, 0.08, 0.08]):
        assert base * 0.75 - 0.001 <= wait <= base * 1.25 + 0.001
    gaps = [b - a for a, b in zip([opened_at, *calls], calls[:5])]
    for gap, (_, wait) in zip(gaps, waits):
        # Never early; late only by scheduling delay (generous bound for CI).
        assert wait - 0.002 <= gap <= wait + 1.0
    assert breaker.state is OPEN


@pytest.mark.parametrize("on_healthy", ["half_open", "close"])
def test_healthy_check_recovers_the_breaker(clock, handles, on_healthy):
    """A healthy answer moves OPEN to HALF_OPEN (or CLOSED), reason health_check."""
    waiter = StateWaiter()
    breaker = opened("recovers-" + on_healthy, clock, success_threshold=1)
    breaker.add_listener(waiter)
    answers = iter([False, None, True])

    def check():
        return next(answers, True)

    handle = breaker.health_check(  # real time: three checks 10 ms apart
        check, interval=0.01, multiplier=1.0, on_healthy=on_healthy
    )
    handles.append(handle)
    target = HALF_OPEN if on_healthy == "half_open" else CLOSED
    assert waiter.entered[target].wait(TIMEOUT)
    new, reason = waiter.reasons[-1]
    assert (new, reason) == (target, cbsync.OpenReason("health_check"))
    assert breaker.state is target
    if target is HALF_OPEN:
        # Trial calls decide from here, as after an elapsed OPEN period.
        assert breaker.call(lambda: "trial") == "trial"
        assert breaker.state is CLOSED
    snapshot = breaker.snapshot()
    assert (snapshot.window_calls, snapshot.consecutive_failures) == (0, 0)


def test_a_check_that_raises_is_unhealthy(clock, handles, caplog):
    """An exception from the check counts as unhealthy and never escapes."""
    caplog.set_level(logging.DEBUG, logger="cbsync")
    breaker = opened("raises", clock)
    third = threading.Event()
    calls: list = []

    def check():
        calls.append(1)
        if len(calls) >= 3:
            third.set()
        raise ConnectionRefusedError("still down")

    handle = breaker.health_check(  # real time: three checks 10 ms apart
        check, interval=0.01, multiplier=1.0, jitter=0
    )
    handles.append(handle)
    assert third.wait(TIMEOUT)
    handle.stop()
    assert breaker.state is OPEN
    assert [n for n, _ in scheduled_waits(caplog, "raises")][:3] == [0, 1, 2]
    raised = [r.exc_info[1] for r in caplog.records if r.exc_info and "raised" in r.getMessage()]
    assert raised
    assert all(isinstance(exc, ConnectionRefusedError) for exc in raised)


def test_backoff_resets_after_a_healthy_answer(clock, handles, caplog):
    """After a healthy answer and a failed trial, waits start again from interval."""
    caplog.set_level(logging.DEBUG, logger="cbsync")
    waiter = StateWaiter()
    breaker = opened("resets", clock)
    breaker.add_listener(waiter)
    answers = iter([False, False, True])
    handle = breaker.health_check(  # real time: waits of 10, 20, 40 ms, then 10 ms again
        lambda: next(answers, False), interval=0.01, multiplier=2.0, jitter=0
    )
    handles.append(handle)
    assert waiter.entered[HALF_OPEN].wait(TIMEOUT)
    assert _health.scheduler().wait_for(lambda: handle._runs >= 3, TIMEOUT)
    failures(breaker, 1)  # the trial call fails: OPEN again
    assert breaker.state is OPEN
    assert [n for n, _ in scheduled_waits(caplog, "resets")] == [0, 1, 2, 0]
    assert scheduled_waits(caplog, "resets")[-1][1] == pytest.approx(0.01, abs=0.001)


def test_checks_run_only_while_open(clock, handles):
    """No check runs once the breaker is CLOSED, HALF_OPEN, FORCED_OPEN or DISABLED."""
    moves = {
        "closed": lambda breaker: breaker.reset(),
        "forced-open": lambda breaker: breaker.trip("maintenance"),
        "disabled": lambda breaker: breaker.disable(),
        "half-open": lambda breaker: (clock.advance(60), breaker.call(lambda: "trial")),
    }
    moved_at_call: dict = {name: [] for name in moves}
    for name, move in moves.items():
        breaker = opened(name, clock)
        moved = [False]

        def check(name=name, moved=moved):
            moved_at_call[name].append(moved[0])
            return False

        handle = breaker.health_check(  # real time: due in 10 ms; moved out of OPEN at once
            check, interval=0.01, multiplier=1.0
        )
        handles.append(handle)
        move(breaker)
        moved[0] = True
    # A control breaker that stays OPEN proves the scheduler kept running for
    # well over ten of the others' intervals.
    control = opened("control", clock)
    control_calls = threading.Semaphore(0)
    handle = control.health_check(  # real time: twelve checks 10 ms apart, >= 120 ms
        lambda: control_calls.release(), interval=0.01, multiplier=1.0
    )
    handles.append(handle)
    for _ in range(12):
        assert control_calls.acquire(timeout=TIMEOUT)
    for name, seen in moved_at_call.items():
        assert True not in seen, name
    # Registering on a breaker that is not OPEN does not arm anything either.
    tripped = cbsync.CircuitBreaker("tripped-first")
    tripped.trip()
    handles.append(tripped.health_check(lambda: True, interval=0.01))  # real time: never due
    assert tripped not in [h.breaker for h in _health.scheduler()._armed]
    assert tripped.state is cbsync.State.FORCED_OPEN


@pytest.mark.parametrize("interference", ["trip", "disable", "reopen", "reset"])
def test_state_change_during_a_running_check_is_never_undone(clock, handles, interference):
    """A healthy answer only moves the OPEN state the check started under."""
    breaker = opened("interfered-" + interference, clock)
    started, release = threading.Event(), threading.Event()
    answers = iter([True])

    def check():
        started.set()
        assert release.wait(TIMEOUT)
        return next(answers, False)

    handle = breaker.health_check(  # real time: first check in 10 ms, blocks until released
        check, interval=0.01, multiplier=1.0, on_healthy="close"
    )
    handles.append(handle)
    assert started.wait(TIMEOUT)
    if interference == "trip":
        breaker.trip("maintenance")
        expected = cbsync.State.FORCED_OPEN
    elif interference == "disable":
        breaker.disable()
        expected = cbsync.State.DISABLED
    elif interference == "reopen":
        # Another OPEN period, a new state object: not the one the check saw.
        clock.advance(60)
        failures(breaker, 1)
        expected = OPEN
    else:
        breaker.reset()
        failures(breaker, 1)
        expected = OPEN
    release.set()
    assert _health.scheduler().wait_for(lambda: handle._runs >= 1, TIMEOUT)
    handle.stop()
    assert breaker.state is expected
    kinds = [t.reason.kind for t in breaker.snapshot().transitions]
    assert "health_check" not in kinds


def test_a_hanging_check_does_not_delay_another_breakers_recovery(clock, handles):
    """While one breaker's check hangs, another breaker recovers on time."""
    release = threading.Event()
    hanging_started = threading.Event()
    hanging_calls: list = []

    def hang():
        hanging_calls.append(1)
        hanging_started.set()
        release.wait(TIMEOUT * 2)
        return False

    stuck = opened("stuck", clock)
    handle = stuck.health_check(  # real time: first check in 10 ms; it hangs till the end
        hang, interval=0.01, multiplier=1.0
    )
    handles.append(handle)
    try:
        assert hanging_started.wait(TIMEOUT)
        waiter = StateWaiter()
        healthy = opened("healthy", clock)
        healthy.add_listener(waiter)
        begun = time.monotonic()
        handle = healthy.health_check(  # real time: first check in 20 ms, healthy
            lambda: True, interval=0.02
        )
        handles.append(handle)
        assert waiter.entered[HALF_OPEN].wait(TIMEOUT)
        assert time.monotonic() - begun < TIMEOUT / 2
        # The hanging check was never started a second time meanwhile.
        assert hanging_calls == [1]
        assert stuck.state is OPEN
    finally:
        release.set()


def test_stop_unregisters(clock, handles):
    """After stop() a check is never run, and a running one never moves the breaker."""
    breaker = cbsync.CircuitBreaker("stopped", clock=clock, failure_threshold=1)
    calls: list = []
    early = breaker.health_check(  # real time: would be due 10 ms after opening
        lambda: calls.append(1) or True, interval=0.01
    )
    early.stop()
    early.stop()  # a second stop does nothing
    assert not early.active
    assert breaker._observers == ()
    failures(breaker, 1)

    started, release = threading.Event(), threading.Event()

    def slow_healthy():
        started.set()
        assert release.wait(TIMEOUT)
        return True

    running = breaker.health_check(  # real time: first check in 10 ms, blocks until released
        slow_healthy, interval=0.01
    )
    assert started.wait(TIMEOUT)
    running.stop()
    release.set()
    assert _health.scheduler().wait_for(lambda: running._runs >= 1, TIMEOUT)
    assert breaker.state is OPEN
    assert calls == []
    assert "stopped" in repr(running)


def test_scheduler_thread_starts_lazily_and_exits_when_nothing_is_registered(clock):
    """No thread until a registered breaker is OPEN; it exits after the last stop()."""
    scheduler = Scheduler()
    closed = cbsync.CircuitBreaker("lazy", clock=clock, failure_threshold=1)
    first = register(scheduler, closed, lambda: False, interval=0.01)  # real time: 10 ms apart
    assert scheduler.thread() is None
    failures(closed, 1)
    thread = scheduler.thread()
    assert thread is not None
    assert thread.daemon
    assert scheduler.wait_for(lambda: first._runs >= 2, TIMEOUT)
    closed.reset()
    assert not scheduler._armed  # idle: nothing to wake up for
    second = register(
        scheduler,  # real time: checks 10 ms apart
        opened("lazy-2", clock),
        lambda: False,
        interval=0.01,
    )
    first.stop()
    assert thread.is_alive()  # "lazy-2" is still registered
    second.stop()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert scheduler.thread() is None
    # Registering again starts a new thread.
    third = register(
        scheduler,  # real time: checks 10 ms apart
        opened("lazy-3", clock),
        lambda: False,
        interval=0.01,
    )
    assert scheduler.thread() not in (None, thread)
    third.stop()


def test_checks_run_on_real_time_while_the_clock_is_frozen(handles):
    """freezegun freezing time.monotonic does not stall the scheduler."""
    waiter = StateWaiter()
    with freeze_time("2024-01-01"):
        breaker = cbsync.CircuitBreaker("frozen", failure_threshold=1, listeners=[waiter])
        failures(breaker, 1)
        handle = breaker.health_check(  # real time: first check in 10 ms
            lambda: True, interval=0.01
        )
        handles.append(handle)
        assert waiter.entered[HALF_OPEN].wait(TIMEOUT)


def test_guard_registers_its_health_check(clock):
    """cbsync.guard(..., health_check=) is the resource breaker: it recovers on its own."""

    class Resource:
        def __init__(self) -> None:
            self.up = False
            self.pings = 0

        def query(self):
            if not self.up:
                raise ConnectionError("resource down")
            return "rows"

        def ping(self):
            self.pings += 1
            return self.up

    resource = Resource()
    waiter = StateWaiter()
    breaker = cbsync.CircuitBreaker(
        "resource", clock=clock, failure_threshold=1, success_threshold=1, listeners=[waiter]
    )
    guarded = cbsync.guard(  # real time: guard() uses the default interval, 1 s +-10 %
        resource, breaker, health_check=resource.ping
    )
    try:
        with pytest.raises(ConnectionError):
            guarded.query()
        with pytest.raises(cbsync.CircuitOpenError):
            guarded.query()
        assert breaker._observers[0].check == resource.ping
        resource.up = True
        assert waiter.entered[HALF_OPEN].wait(TIMEOUT)
        assert resource.pings >= 1
        assert guarded.query() == "rows"
        assert breaker.state is CLOSED
    finally:
        for handle in breaker._observers:
            handle.stop()


def test_a_hanging_check_does_not_block_interpreter_exit(tmp_path):
    """The process exits normally while a health check hangs forever."""
    script = tmp_path / "hang.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading
            import cbsync

            started = threading.Event()

            def hang():
                started.set()
                threading.Event().wait()  # never returns

            breaker = cbsync.CircuitBreaker("exit", failure_threshold=1, timeout=3600)
            breaker.health_check(hang, interval=0.01)  # real time: first check in 10 ms
            try:
                breaker.call(lambda: 1 / 0)
            except ZeroDivisionError:
                pass
            assert started.wait(10)
            print("check is hanging; exiting")
            """
        )
    )
    begun = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "check is hanging; exiting" in result.stdout
    assert time.monotonic() - begun < 30
