"""Fork safety: a forked child's breakers, locks and health checks work."""

import ctypes
import gc
import json
import os
import select
import signal
import sys
import threading
import time
import traceback

import pytest
from _support import failures, ok

import cbsync
from cbsync import _fork, _health

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)"),
    # Deliberate: these tests fork a process that has threads on purpose (a
    # thread holding a lock, a running health check).  Python 3.12+ warns
    # about exactly that with a DeprecationWarning, which filterwarnings=error
    # would turn into a failure; only that warning is silenced.
    pytest.mark.filterwarnings(
        r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to "
        r"deadlocks in the child\.:DeprecationWarning"
    ),
]

#: Bound on how long a child may take to report before it counts as deadlocked.
CHILD_TIMEOUT = 10.0
#: Bound on every wait for a thread.
TIMEOUT = 5.0


def _raw_fork() -> int:
    """fork() straight from libc, as uWSGI does: no os.register_at_fork hooks run.

    PyDLL keeps the GIL held across the call, as a C caller holding it would.
    """
    return int(ctypes.PyDLL(None).fork())


def in_child(body, fork=os.fork):
    """Run ``body()`` in a forked child; return what it returned (JSON), or fail
    with the child's traceback, or fail if it does not report in time."""
    read_fd, write_fd = os.pipe()
    pid = fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            os.close(read_fd)
            try:
                report = {"value": body()}
            except BaseException:
                report = {"error": traceback.format_exc()}
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(write_fd, data) :]
        finally:
            os._exit(0)
    assert pid > 0, "fork failed"
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([read_fd], [], [], max(0.0, remaining))
            if not readable:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(
                    "the child did not report within {}s: deadlocked?".format(CHILD_TIMEOUT)
                )
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks).decode())
    if "error" in report:
        pytest.fail("the child failed:\n" + report["error"])
    return report["value"]


def counts(breaker):
    """The counts a child must keep from its parent."""
    s = breaker.snapshot()
    return [s.state.value, s.successes, s.failures, s.calls_rejected, s.window_calls]


class LockHolder:
    """A thread that holds a lock until released (as if preempted inside it)."""

    def __init__(self, lock) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(lock,), daemon=True)
        self.thread.start()
        assert self.holding.wait(TIMEOUT)

    def _hold(self, lock) -> None:
        with lock:
            self.holding.set()
            self.release.wait(CHILD_TIMEOUT * 2)

    def stop(self) -> None:
        self.release.set()
        self.thread.join(TIMEOUT)


def test_child_keeps_the_parents_state_and_counts(clock):
    """The child starts from a copy of the parent's state and counts; each goes its own way."""
    breaker = cbsync.CircuitBreaker("copied", clock=clock, failure_threshold=3)
    breaker.call(ok)
    breaker.call(ok)
    failures(breaker, 3)
    with pytest.raises(cbsync.CircuitOpenError):
        breaker.call(ok)
    before = counts(breaker)
    assert before == ["open", 2, 3, 1, 5]

    def child():
        # The at-fork hook already rebuilt the breaker (the fast path).
        rebuilt_by_hook = breaker._fork.pid == os.getpid()
        inherited = counts(breaker)
        clock.advance(60)  # the child's own copy of the clock
        breaker.call(ok)
        return {"hook": rebuilt_by_hook, "inherited": inherited, "after": counts(breaker)}

    report = in_child(child)
    assert report["hook"] is True
    assert report["inherited"] == before
    assert report["after"][:3] == ["half_open", 3, 3]
    assert counts(breaker) == before  # the parent is untouched


@pytest.mark.parametrize("fork", [os.fork, _raw_fork], ids=["os.fork", "libc-fork"])
def test_lock_held_by_another_thread_at_fork_does_not_deadlock_the_child(clock, fork):
    """A breaker lock held by a parent thread at fork time is replaced in the child.

    With libc's fork no at-fork hook runs (as under uWSGI): the child notices
    the new pid on its first locked operation.
    """
    if fork is _raw_fork and not sys.platform.startswith("linux"):
        pytest.skip("fork() through ctypes is exercised on Linux only")
    breaker = cbsync.CircuitBreaker("held", clock=clock, failure_threshold=2)
    breaker.call(ok)
    holder = LockHolder(breaker._lock)
    try:

        def child():
            hook_ran = breaker._fork.pid == os.getpid()
            snapshot = breaker.snapshot()  # a locked path: rebuilds if the hook did not
            failures(breaker, 2)
            opened = breaker.state.value
            breaker.reset()
            return {
                "hook": hook_ran,
                "successes": snapshot.successes,
                "window_calls": snapshot.window_calls,
                "opened": opened,
                "after_reset": breaker.call(ok),
            }

        report = in_child(child, fork=fork)
    finally:
        holder.stop()
    assert report["hook"] is (fork is os.fork)
    assert report["successes"] == 1  # counts are kept...
    # ...but the window, which the vanished thread may have been halfway
    # through updating, is cleared rather than trusted.
    assert report["window_calls"] == 0
    assert report["opened"] == "open"
    assert report["after_reset"] == "ok"
    assert breaker.snapshot().successes == 1  # the parent is untouched


def test_trial_permits_held_by_parent_threads_are_returned_in_the_child(clock):
    """A HALF_OPEN trial call running in another parent thread never ends in the child."""
    breaker = cbsync.CircuitBreaker(
        "trial", clock=clock, failure_threshold=1, half_open_max_calls=1, success_threshold=1
    )
    failures(breaker, 1)
    clock.advance(60)
    in_call, release = threading.Event(), threading.Event()

    def slow_trial():
        in_call.set()
        release.wait(CHILD_TIMEOUT * 2)
        return "done"

    trial = threading.Thread(target=breaker.call, args=(slow_trial,), daemon=True)
    trial.start()
    try:
        assert in_call.wait(TIMEOUT)
        with pytest.raises(cbsync.HalfOpenLimitReached):
            breaker.call(ok)

        def child():
            return [breaker.call(ok), breaker.state.value]

        assert in_child(child) == ["ok", "closed"]
        with pytest.raises(cbsync.HalfOpenLimitReached):
            breaker.call(ok)  # still held in the parent
    finally:
        release.set()
        trial.join(TIMEOUT)
    assert breaker.state is cbsync.State.CLOSED


@pytest.mark.parametrize("fork", [os.fork, _raw_fork], ids=["os.fork", "libc-fork"])
def test_health_check_runs_in_the_child(clock, fork):
    """The child restarts the health-check threads; a check running at fork time
    (hanging in a parent thread) is scheduled again in the child."""
    if fork is _raw_fork and not sys.platform.startswith("linux"):
        pytest.skip("fork() through ctypes is exercised on Linux only")
    parent = os.getpid()
    half_open = threading.Event()  # only ever set in the child

    class OnHalfOpen(cbsync.Listener):
        def on_state_change(self, breaker, old, new, reason):
            if new is cbsync.State.HALF_OPEN:
                half_open.set()

    breaker = cbsync.CircuitBreaker(
        "forked-health", clock=clock, failure_threshold=1, listeners=[OnHalfOpen()]
    )
    failures(breaker, 1)
    started, release = threading.Event(), threading.Event()

    def check():
        if os.getpid() != parent:
            return True  # the dependency is back, as far as the child can see
        started.set()
        release.wait(CHILD_TIMEOUT * 2)
        return False

    handle = breaker.health_check(check, interval=0.01)  # real time: first check in 10 ms
    try:
        assert started.wait(TIMEOUT)  # the parent's check is running (hanging) now

        def child():
            if fork is _raw_fork:
                # No hook ran: a rejected call, which takes no lock, is all the
                # child does, and is enough for it to notice.
                with pytest.raises(cbsync.CircuitOpenError):
                    breaker.call(ok)
            # Waiting on the listener's event, not on the scheduler (whose own
            # methods would notice the fork themselves).
            recovered = half_open.wait(TIMEOUT)
            thread = _health.scheduler().thread()
            return {
                "recovered": recovered,
                "reason": breaker.snapshot().transitions[-1].reason.kind,
                "new_thread": thread is not None and thread.is_alive(),
            }

        report = in_child(child, fork=fork)
        assert report == {"recovered": True, "reason": "health_check", "new_thread": True}
        assert breaker.state is cbsync.State.OPEN  # the parent's check still hangs
    finally:
        release.set()
        handle.stop()


@pytest.mark.parametrize("fork", [os.fork, _raw_fork], ids=["os.fork", "libc-fork"])
def test_registry_lock_held_at_fork_does_not_deadlock_the_child(fork):
    """A registry whose lock a parent thread held at fork time creates breakers in the child."""
    if fork is _raw_fork and not sys.platform.startswith("linux"):
        pytest.skip("fork() through ctypes is exercised on Linux only")
    registry = cbsync.Registry({"default": {"failure_threshold": 2}})
    existing = registry.get("existing")
    holder = LockHolder(registry._lock)
    try:

        def child():
            created = registry.get("created-in-child")
            return [
                registry.get("existing") is existing,
                created.config.failure_threshold,
                sorted(registry),
            ]

        report = in_child(child, fork=fork)
    finally:
        holder.stop()
    assert report == [True, 2, ["created-in-child", "existing"]]
    assert "created-in-child" not in registry  # the parent is untouched


def test_fork_guard_rebuilds_once_however_many_threads_race():
    """In a child, threads racing through check() rebuild the owner exactly once."""

    class Owner:
        def __init__(self) -> None:
            self.rebuilds = 0
            self.guard = _fork.ForkGuard(self.rebuild)

        def rebuild(self) -> None:
            self.rebuilds += 1
            time.sleep(0.01)  # real time: widen the window in which racing threads arrive

    owner = Owner()
    assert owner.guard.check() is False  # same process: nothing to do
    owner.guard.pid = -1  # as if the owner had been built in another process

    def racer(barrier, results):
        barrier.wait(TIMEOUT)
        results.append(owner.guard.check())

    barrier = threading.Barrier(8)
    results: list = []
    threads = [threading.Thread(target=racer, args=(barrier, results)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert owner.rebuilds == 1
    assert sorted(results) == [False] * 7 + [True]
    assert owner.guard.pid == os.getpid()


def test_fork_guard_does_not_keep_its_owner_alive():
    """A guard refers to its owner weakly; a collected owner is skipped after fork."""

    class Owner:
        def __init__(self) -> None:
            self.guard = _fork.ForkGuard(self.rebuild)

        def rebuild(self) -> None:
            raise AssertionError("a collected owner must not be rebuilt")

    owner = Owner()
    guard = owner.guard
    del owner
    gc.collect()
    guard.pid = -1
    assert guard.check() is True  # nothing left to rebuild; no error


def test_rebuild_failure_in_the_at_fork_hook_is_logged_and_retried(caplog):
    """A rebuild that raises in the at-fork hook is logged, and tried again on first use."""

    class Flaky:
        def __init__(self) -> None:
            self.attempts = 0
            self.guard = _fork.ForkGuard(self.rebuild)

        def rebuild(self) -> None:
            self.attempts += 1
            if self.attempts == 1:
                raise RuntimeError("first rebuild fails")

    flaky = Flaky()
    flaky.guard.pid = -1
    _fork._after_fork_in_child()
    assert "could not rebuild" in caplog.text
    assert flaky.guard.pid == -1
    assert flaky.guard.check() is True
    assert flaky.attempts == 2
