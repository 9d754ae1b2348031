"""Health-checked recovery: probe a dependency while its circuit is OPEN.

``breaker.health_check(check, ...)`` registers ``check`` with the process's
:class:`Scheduler`.  How the work is split, and why:

* One scheduler thread serves every breaker.  It is started lazily (the first
  time a registered breaker is OPEN), waits on a condition until the earliest
  due check or until a breaker changes state (never a loop reading the
  clock), waits without a timeout while no registered breaker is OPEN, and
  exits once nothing is registered.
* The scheduler never runs a check itself: it hands due checks to a bounded
  set of daemon worker threads (:data:`MAX_CHECK_THREADS`), started on demand
  and gone once the queue is empty.  A check never runs twice at once, so a
  check that hangs holds one worker and delays only its own breaker.  Plain
  daemon threads, not ``concurrent.futures``: its workers are joined at
  interpreter exit, so a hanging check would hang the exit.
* A check is an internal listener of its breaker's state changes (a
  ``StateObserver``, told after the breaker's lock is released); the
  scheduler reads the breaker's *current* state each time, so late or
  reordered notices still leave it right.  It sees the breaker only through
  the narrow :class:`Target` the breaker gives it.
* A healthy result moves the breaker only if it is still in the very OPEN
  state object the check started under (compare-and-set under the breaker's
  lock): a ``trip()``, ``reset()`` or reopen meanwhile is never undone.
* Waits are measured on the real monotonic clock, not the breaker's clock: a
  background thread cannot follow a fake or frozen clock.
* After ``os.fork()`` the scheduler rebuilds its lock and forgets the parent's
  threads (see ``_fork.py``); checks of OPEN breakers are scheduled again.
"""

import collections
import contextlib
import logging
import math
import random
import sys
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Optional,
    Protocol,
    Set,
    Tuple,
)

from ._config import Duration, parse_duration
from ._errors import ConfigError
from ._fork import ForkGuard
from ._state import State

if TYPE_CHECKING:
    from ._events import StateObserver

logger = logging.getLogger("cbsync")

#: Health checks running at once, across every breaker of the process.
MAX_CHECK_THREADS = 4
#: Accepted values of ``on_healthy``.
ON_HEALTHY = ("half_open", "close")


class _RealClock:
    # freezegun replaces module-level references to time.monotonic, not one
    # held in a class: the scheduler waits in real time (Condition.wait), so it
    # must read real time even while a test freezes the clock.
    now = staticmethod(time.monotonic)


def _number(name: str, value: object, low: float, high: float, what: str) -> float:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not low <= float(value) < high
    ):
        raise ConfigError("{}={!r} must be {}".format(name, value, what))
    return float(value)


class Target(Protocol):
    """What a health check needs of its breaker (the breaker gives it this view)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> State: ...

    def open_token(self) -> Optional[object]:
        """The breaker's current OPEN state (an opaque token), or ``None`` if not OPEN."""

    def recover(self, token: object, close: bool, active: Callable[[], bool]) -> bool:
        """Leave OPEN for HALF_OPEN (or CLOSED, with ``close``) if ``token`` is
        still the current state and ``active()`` holds, both read under the
        breaker's lock; whether it did."""

    def watch(self, observer: "StateObserver") -> None:
        """Tell ``observer`` of every state change from now on (under the breaker's lock)."""

    def unwatch(self, observer: "StateObserver") -> None:
        """Stop telling ``observer`` (under the breaker's lock)."""


class HealthCheckHandle:
    """A health check registered on a breaker; :meth:`stop` unregisters it.

    Returned by :meth:`CircuitBreaker.health_check`.  The registration keeps
    the breaker and the check alive until it is stopped.
    """

    __slots__ = (
        "_breaker",
        "_check",
        "_failures",
        "_running",
        "_runs",
        "_scheduler",
        "_stopped",
        "_target",
        "interval",
        "jitter",
        "max_interval",
        "multiplier",
        "on_healthy",
    )

    def __init__(
        self,
        scheduler: "Scheduler",
        target: Target,
        breaker: Any,
        check: Callable[[], object],
        interval: float,
        max_interval: float,
        multiplier: float,
        jitter: float,
        on_healthy: str,
    ) -> None:
        self._scheduler = scheduler
        self._target = target
        #: Kept alive while the check is registered (the target holds it weakly).
        self._breaker = breaker
        self._check = check
        self.interval = interval
        self.max_interval = max_interval
        self.multiplier = multiplier
        self.jitter = jitter
        self.on_healthy = on_healthy
        #: Unhealthy results in a row: the ``n`` of the next wait.
        self._failures = 0
        self._running = False
        self._stopped = False
        #: Checks completed, for tests and ``repr``.
        self._runs = 0

    @property
    def breaker(self) -> Any:
        """The :class:`~cbsync.CircuitBreaker` this check recovers."""
        return self._breaker

    @property
    def check(self) -> Callable[[], object]:
        """The registered check."""
        return self._check

    @property
    def active(self) -> bool:
        """``False`` once :meth:`stop` was called."""
        return not self._stopped

    def stop(self) -> None:
        """Unregister the check; calling it again does nothing.

        After ``stop()`` returns the check is never started again and never
        moves the breaker, even if it was running and answers later.
        """
        self._scheduler.unregister(self)

    def state_changed(self) -> None:
        """The breaker changed state (it tells its observers): arm or disarm the check."""
        self._scheduler.state_changed(self)

    def _wait(self, n: int, rng: random.Random) -> float:
        """The ``n``-th wait: ``min(interval * multiplier**n, max_interval)``
        scattered by ± ``jitter`` (a fraction of it)."""
        try:
            base = self.interval * self.multiplier**n
        except OverflowError:
            base = self.max_interval
        base = min(base, self.max_interval)
        if self.jitter:
            base *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return base

    def __repr__(self) -> str:
        return "<HealthCheckHandle {!r} of {!r} every {}s..{}s{}>".format(
            self._check,
            self._target.name,
            self.interval,
            self.max_interval,
            "" if self.active else " stopped",
        )


class Scheduler:
    """Runs the health checks of every breaker registered with it.

    One instance serves the whole process (:func:`scheduler`); tests may build
    their own.
    """

    def __init__(self) -> None:
        #: Registered, not stopped.
        self._checks: Set[HealthCheckHandle] = set()
        #: Checks waiting for their turn, by real-clock due time.
        self._armed: Dict[HealthCheckHandle, float] = {}
        #: Checks handed to the workers, with the state they were started under.
        self._jobs: Deque[Tuple[HealthCheckHandle, object]] = collections.deque()
        self._new_process()
        self._fork = ForkGuard(self._after_fork)

    def _new_process(self) -> None:
        self._mutex = threading.Lock()
        #: The scheduler thread waits here for a due check or a change.
        self._wake = threading.Condition(self._mutex)
        #: Notified each time a check completes.
        self._done = threading.Condition(self._mutex)
        self._thread: Optional[threading.Thread] = None
        self._workers = 0
        self._busy = 0
        #: Log records made under the mutex, emitted after it is released: a
        #: logging handler may itself call a breaker with a health check.
        self._notes: List[Tuple[int, str, Tuple[object, ...], Any]] = []
        # Each process draws its own jitter: forked workers sharing the
        # parent's random state would all probe at the same instants.
        self._random = random.Random()

    def _after_fork(self) -> None:
        self._new_process()
        self._jobs.clear()
        self._armed.clear()
        now = _RealClock.now()
        with self._locked():
            for handle in self._checks:
                # Its run was in a thread of the parent; it ends nowhere here.
                handle._running = False
            for handle in self._checks:
                self._sync(handle, now)

    # -- registration (any thread) -----------------------------------------

    def register(
        self,
        target: Target,
        breaker: Any,
        check: Callable[[], object],
        *,
        interval: Duration = 1.0,
        max_interval: Duration = 60.0,
        multiplier: float = 2.0,
        jitter: float = 0.1,
        on_healthy: str = "half_open",
    ) -> HealthCheckHandle:
        """Validate the arguments and register ``check`` for ``breaker``,
        seen through ``target``."""
        if not callable(check):
            raise ConfigError(
                "check={!r} must be a callable taking no arguments (an exception or a "
                "falsy result means unhealthy)".format(check)
            )
        interval_s = parse_duration("interval", interval)
        max_interval_s = parse_duration("max_interval", max_interval)
        if max_interval_s < interval_s:
            raise ConfigError(
                "max_interval={!r} is below interval={!r}".format(max_interval, interval)
            )
        multiplier_f = _number("multiplier", multiplier, 1.0, math.inf, "a number of at least 1")
        jitter_f = _number("jitter", jitter, 0.0, 1.0, "a fraction in [0, 1)")
        if on_healthy not in ON_HEALTHY:
            raise ConfigError("on_healthy={!r} must be 'half_open' or 'close'".format(on_healthy))
        handle = HealthCheckHandle(
            self,
            target,
            breaker,
            check,
            interval_s,
            max_interval_s,
            multiplier_f,
            jitter_f,
            on_healthy,
        )
        target.watch(handle)
        self._fork.check()
        with self._locked():
            self._checks.add(handle)
            self._sync(handle, _RealClock.now())
        return handle

    def unregister(self, handle: HealthCheckHandle) -> None:
        """Stop ``handle``: never start it again, drop a result still to come."""
        self._fork.check()
        with self._mutex:
            if handle._stopped:
                return
            handle._stopped = True
            self._checks.discard(handle)
            self._armed.pop(handle, None)
            # Wake the scheduler: it exits when nothing is left.
            self._wake.notify()
        # unwatch() takes the breaker's lock, which orders this stop() after
        # a recovery that already saw the handle active (see Target.recover).
        handle._target.unwatch(handle)

    def state_changed(self, handle: HealthCheckHandle) -> None:
        """``handle``'s breaker changed state: arm or disarm its check."""
        self._fork.check()
        with self._locked():
            self._sync(handle, _RealClock.now())

    # -- scheduling (the mutex is held) ------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the mutex; then emit the log records made meanwhile."""
        with self._mutex:
            yield
            notes = self._take_notes()
        self._emit_notes(notes)

    def _note(self, level: int, message: str, *args: object, exc: bool = False) -> None:
        self._notes.append((level, message, args, sys.exc_info() if exc else None))

    def _take_notes(self) -> List[Tuple[int, str, Tuple[object, ...], Any]]:
        notes, self._notes = self._notes, []
        return notes

    @staticmethod
    def _emit_notes(notes: List[Tuple[int, str, Tuple[object, ...], Any]]) -> None:
        for level, message, args, exc_info in notes:
            logger.log(level, message, *args, exc_info=exc_info)

    def _sync(self, handle: HealthCheckHandle, now: float) -> None:
        if handle._stopped or handle._running or handle not in self._checks:
            return
        state = handle._target.state
        if state is State.OPEN:
            if handle not in self._armed:
                wait = handle._wait(handle._failures, self._random)
                self._armed[handle] = now + wait
                if logger.isEnabledFor(logging.DEBUG):
                    self._note(
                        logging.DEBUG,
                        "cbsync health check %r of %r: next in %.3fs (n=%d)",
                        handle._check,
                        handle._target.name,
                        wait,
                        handle._failures,
                    )
                self._ensure_thread()
                self._wake.notify()
            return
        if self._armed.pop(handle, None) is not None:
            self._wake.notify()
        if state is State.CLOSED or state is State.DISABLED:
            handle._failures = 0

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        thread = threading.Thread(target=self._run, name="cbsync-health-scheduler", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            # No thread at interpreter shutdown, or the system is out of them;
            # the next state change tries again.
            self._note(
                logging.WARNING, "cbsync could not start the health-check scheduler", exc=True
            )
            return
        self._thread = thread

    def _dispatch(self, handle: HealthCheckHandle) -> None:
        token = handle._target.open_token()
        if token is None:
            return
        handle._running = True
        self._jobs.append((handle, token))
        if self._workers - self._busy < len(self._jobs) and self._workers < MAX_CHECK_THREADS:
            worker = threading.Thread(target=self._work, name="cbsync-health-check", daemon=True)
            try:
                worker.start()
            except RuntimeError:
                self._note(
                    logging.WARNING, "cbsync could not start a health-check thread", exc=True
                )
                if self._workers == 0:
                    # Nobody will run the queue: put the checks back on the
                    # schedule, to be tried again after their next wait.
                    queued = [job[0] for job in self._jobs]
                    self._jobs.clear()
                    now = _RealClock.now()
                    for waiting in queued:
                        waiting._running = False
                        self._sync(waiting, now)
                return
            self._workers += 1

    # -- threads -----------------------------------------------------------

    def _run(self) -> None:
        me = threading.current_thread()
        with self._mutex:
            while self._checks and self._thread is me:
                now = _RealClock.now()
                timeout: Optional[float] = None
                for handle, due in list(self._armed.items()):
                    if due <= now:
                        del self._armed[handle]
                        self._dispatch(handle)
                    elif timeout is None or due - now < timeout:
                        timeout = due - now
                if self._notes:
                    notes = self._take_notes()
                    self._mutex.release()
                    try:
                        self._emit_notes(notes)
                    finally:
                        self._mutex.acquire()
                    continue  # things may have changed meanwhile
                # Sleeps until the earliest due check, or forever while no
                # registered breaker is OPEN; state changes notify it.
                self._wake.wait(timeout)
            if self._thread is me:
                self._thread = None

    def _work(self) -> None:
        ran = False
        while True:
            with self._mutex:
                if ran:
                    self._busy -= 1
                # Deciding to exit and leaving the count happen together, so
                # _dispatch never counts on a worker that is already leaving.
                if not self._jobs:
                    self._workers -= 1
                    return
                handle, started_under = self._jobs.popleft()
                self._busy += 1
            ran = False
            try:
                self._run_check(handle, started_under)
                ran = True
            finally:
                if not ran:
                    # A BaseException from the check ends this thread.
                    with self._mutex:
                        self._busy -= 1
                        self._workers -= 1

    def _run_check(self, handle: HealthCheckHandle, started_under: object) -> None:
        healthy = False
        try:
            try:
                healthy = bool(handle._check())
            except Exception:
                logger.debug(
                    "cbsync health check %r of %r raised: unhealthy",
                    handle._check,
                    handle._target.name,
                    exc_info=True,
                )
            else:
                if not healthy:
                    logger.debug(
                        "cbsync health check %r of %r answered falsy: unhealthy",
                        handle._check,
                        handle._target.name,
                    )
            if healthy and not handle._stopped:
                handle._target.recover(
                    started_under, handle.on_healthy == "close", lambda: handle.active
                )
        finally:
            with self._locked():
                handle._running = False
                handle._runs += 1
                handle._failures = 0 if healthy else handle._failures + 1
                self._sync(handle, _RealClock.now())
                self._done.notify_all()

    # -- for tests ---------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after a check completes (or at once)."""
        self._fork.check()
        with self._mutex:
            return self._done.wait_for(predicate, timeout)

    def thread(self) -> Optional[threading.Thread]:
        """The scheduler thread, if one is running."""
        return self._thread


_SCHEDULER = Scheduler()


def scheduler() -> Scheduler:
    """The scheduler shared by every breaker of the process."""
    return _SCHEDULER
