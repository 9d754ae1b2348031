"""``CircuitBreaker``: the state machine and its bookkeeping.

How the work is split, and why:

* The current state is one small object (``_Closed``, ``_Open``, ...).  A
  transition swaps it under the lock, so a call that remembers the object it
  was admitted under can tell, when it ends, whether its outcome still
  belongs to the current state (``admitted is self._current``).  A stale
  outcome counts in the totals and nothing else: a slow call admitted while
  CLOSED never closes a circuit that opened meanwhile.
* The lock guards bookkeeping only.  It is never held while the protected
  function or a listener runs; events are collected under the lock and
  delivered after it is released.
* Rejections in OPEN and FORCED_OPEN take no lock at all, so a rejected
  caller never waits.
* A CLOSED success that cannot open anything (no failure streak to reset,
  not slow, inside the window's current bucket) takes no lock either: its
  latency is appended to ``_pending`` (``list.append`` is atomic under the
  GIL) and folded into the window, totals and histogram under the lock before
  any decision or snapshot.  Free-threaded CPython builds have no GIL to make
  that append and the ``AtomicCounter`` safe, and would need the locked path.
* Every locked path fetches the lock through the ``_lock`` property, which
  compares ``os.getpid()`` and, in a forked child, rebuilds the breaker first
  (``_after_fork``; see ``_fork.py``).  The lock-free paths never pay for it.
"""

import array
import collections
import datetime
import logging
import math
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
    cast,
)

import wrapt

from . import _health
from ._config import CircuitBreakerConfig, Duration, ExceptionMatcher, open_period
from ._errors import CircuitOpenError, ConfigError, HalfOpenLimitReached
from ._events import Event, Listener, deliver, logger, notify_success
from ._fork import ForkGuard
from ._metrics import AtomicCounter, LatencyHistogram, MetricsSnapshot
from ._state import OpenReason, State, StateTransition
from ._store import (
    LocalTransition,
    RemoteState,
    StoreBinding,
    TrialVerdict,
    bind_store,
    check_store,
)
from ._windows import CountWindow, TimeWindow

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

#: Fast successes waiting to be folded: at this many, the success that sees
#: it folds them if the lock is free at that moment.  Folding seldom matters
#: under threads: a thread preempted while folding makes the others queue.
_PENDING_MAX = 4096
#: ... and at this many it folds them even if it has to wait for the lock:
#: the bound on the memory they take.
_PENDING_HARD_MAX = 4 * _PENDING_MAX
#: State changes kept for ``snapshot().transitions``.
_TRANSITIONS_KEPT = 100

_CLOSED = State.CLOSED
_OPEN = State.OPEN
_HALF_OPEN = State.HALF_OPEN
_FORCED_OPEN = State.FORCED_OPEN
_DISABLED = State.DISABLED

_SUCCESS = "success"
_FAILURE = "failure"
_IGNORED = "ignored"


def _monotonic() -> float:
    # Looked up at each call so that freezegun, which replaces
    # time.monotonic, drives every breaker built with the default clock.
    return time.monotonic()


class _Closed:
    __slots__ = ()
    state = _CLOSED
    #: Admits every call without a permit.
    free = True


class _Disabled:
    __slots__ = ()
    state = _DISABLED
    free = True


class _Open:
    __slots__ = ("reason", "until")
    state = _OPEN
    free = False

    def __init__(self, until: float, reason: OpenReason) -> None:
        self.until = until
        self.reason = reason


class _HalfOpen:
    __slots__ = ("in_flight", "reason", "successes")
    state = _HALF_OPEN
    free = False

    def __init__(self, reason: OpenReason) -> None:
        self.in_flight = 0
        self.successes = 0
        #: Why the circuit opened before this trial period.
        self.reason = reason


class _ForcedOpen:
    __slots__ = ("reason",)
    state = _FORCED_OPEN
    free = False

    def __init__(self, reason: OpenReason) -> None:
        self.reason = reason


_StateObject = Union[_Closed, _Disabled, _Open, _HalfOpen, _ForcedOpen]
#: What a call is admitted under, handed back when it ends.
Permit = Union[_Closed, _Disabled, _HalfOpen]


def _matcher(spec: ExceptionMatcher, on_error: bool) -> Callable[[BaseException], bool]:
    if isinstance(spec, tuple):
        types = spec
        return lambda exc: isinstance(exc, types)
    predicate = cast(Callable[[BaseException], bool], spec)

    def match(exc: BaseException) -> bool:
        try:
            return bool(predicate(exc))
        except Exception:
            logger.exception(
                "cbsync predicate %r raised while classifying %r; treated as %s",
                predicate,
                exc,
                on_error,
            )
            return on_error

    return match


class CircuitBreaker:
    """Stops calls to a failing dependency, and lets them through again once
    it recovers.

    ``config`` is a :class:`CircuitBreakerConfig`; its fields may instead be
    given as keywords.  ``clock`` is a callable returning monotonic seconds
    (default: ``time.monotonic``, looked up at each call so freezegun works).

    >>> import cbsync
    >>> breaker = cbsync.CircuitBreaker("payments", failure_threshold=2)
    >>> def charge():
    ...     raise IOError("gateway down")
    >>> for _ in range(2):
    ...     try:
    ...         breaker.call(charge)
    ...     except IOError:
    ...         pass
    >>> breaker.state
    <State.OPEN: 'open'>
    >>> breaker.call(charge)
    Traceback (most recent call last):
    ...
    cbsync._errors.CircuitOpenError: circuit 'payments' is open (consecutive_failures=2); ...
    """

    def __init__(
        self,
        name: str,
        config: Optional[CircuitBreakerConfig] = None,
        *,
        clock: Optional[Callable[[], float]] = None,
        listeners: Iterable[Listener] = (),
        store: object = None,
        **config_fields: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("name={!r} must be a non-empty string".format(name))
        if config is not None and config_fields:
            raise ConfigError(
                "give either config= or config fields ({}), not both".format(
                    ", ".join(sorted(config_fields))
                )
            )
        if config is None:
            config = CircuitBreakerConfig(**config_fields)
        elif not isinstance(config, CircuitBreakerConfig):
            raise ConfigError("config={!r} must be a CircuitBreakerConfig".format(config))
        if clock is not None and not callable(clock):
            raise ConfigError("clock={!r} must be a callable returning seconds".format(clock))
        if store is not None:
            check_store(store)  # before anything else is built; bound at the end
        listeners = tuple(listeners)
        for listener in listeners:
            _check_listener(listener)
        self._name = name
        self._config = config
        self._clock = clock
        self._now: Callable[[], float] = clock if clock is not None else _monotonic
        # Read through the _lock property, which rebuilds it in a forked child.
        self._lock_obj = threading.Lock()
        self._fork = ForkGuard(self._after_fork)
        #: Registered health checks; told about every state change.
        self._health_checks: Tuple[_health.HealthCheckHandle, ...] = ()
        self._listeners: Tuple[Listener, ...] = listeners
        self._is_ignored = _matcher(config.ignore, on_error=False)
        self._is_failure = _matcher(config.failure_on, on_error=True)
        self._failure_result = config.failure_result
        self._slow_limit = (
            config.slow_call_duration if config.slow_call_duration is not None else math.inf
        )
        self._window: Union[CountWindow, TimeWindow] = (
            CountWindow(config.window_size)
            if config.window_type == "count_based"
            else TimeWindow(config.failure_window)
        )
        self._current: _StateObject = _Closed()
        self._transitions: Deque[StateTransition] = collections.deque(maxlen=_TRANSITIONS_KEPT)
        self._reopen_count = 0
        #: Latencies of lock-free successes, not folded yet: an array of
        #: doubles (8 bytes each), appended to without the lock.
        self._pending: array.array[float] = array.array("d")
        #: Fold _pending once it is this long (see _fold_soon).
        self._fold_at = _PENDING_MAX
        self._fast_until = -math.inf
        self._clear_counts()
        #: Link to a shared store (see _store.py); None keeps everything local.
        self._binding: Optional[StoreBinding] = None
        if store is not None:
            self._binding = bind_store(store, self)
        deliver(listeners, [("on_attach", (self,))])

    def _clear_counts(self) -> None:
        self._successes = 0
        self._failures = 0
        self._ignored = 0
        self._slow_calls = 0
        self._consecutive = 0
        self._histogram = LatencyHistogram()
        self._admitted = AtomicCounter()
        self._count_admitted = self._admitted.increment
        self._rejected = AtomicCounter()

    # -- public API --------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name, as shown in errors, logs and metrics."""
        return self._name

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration; it never changes."""
        return self._config

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._current.state

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds until an OPEN breaker admits a trial call, else ``None``."""
        current = self._current
        if isinstance(current, _Open):
            return max(0.0, current.until - self._now())
        return None

    def call(self, func: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run ``func(*args, **kwargs)`` through the breaker.

        Returns its result and re-raises its exception unchanged; raises
        :class:`CircuitOpenError` without calling it when the circuit rejects
        the call.
        """
        # Only free states are admitted here; the others go through _acquire.
        admitted: Permit = self._current  # type: ignore[assignment]
        if admitted.free:
            self._count_admitted()
        else:
            admitted = self._acquire(admitted)
        clock = self._clock
        # time.monotonic is looked up at each call, so freezegun drives it.
        start = time.monotonic() if clock is None else clock()
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            self._raised(admitted, self._now() - start, exc)
            raise
        except BaseException:
            self._abandon(admitted)
            raise
        end = time.monotonic() if clock is None else clock()
        elapsed = end - start
        if self._failure_result is not None and self._result_fails(result):
            self._record(admitted, elapsed, end, _FAILURE, None)
        else:
            self._succeeded(admitted, elapsed, end)
        return result

    def __call__(self, func: F) -> F:
        """Decorate ``func`` so that every call goes through the breaker.

        Works on functions, methods, classmethods and staticmethods; keeps
        ``__name__``, ``__doc__`` and the signature; the breaker is reachable
        as ``func.breaker``.
        """
        candidate: object = func
        if not callable(candidate) and not isinstance(candidate, (classmethod, staticmethod)):
            raise ConfigError("@{!r} needs a callable, got {!r}".format(self, func))
        return cast(F, _BreakerFunctionWrapper(func, self))

    def guard(self) -> "_Guard":
        """A context manager protecting a block of code.

        An exception leaving the block is classified like one raised by the
        function given to :meth:`call`; :class:`CircuitOpenError` is raised on
        entry when the circuit rejects the block.
        """
        return _Guard(self)

    def trip(self, reason: str = "manual") -> None:
        """Force the circuit open: reject everything until :meth:`reset`.

        With a shared store, :meth:`trip` and :meth:`reset` act on the whole fleet.
        """
        self._force(_ForcedOpen(OpenReason("manual", reason)))

    def reset(self) -> None:
        """Close the circuit and clear the window, counters and backoff.

        With a shared store a reset closes the breaker in every process, except
        the reset of a DISABLED breaker: that one re-enables this process only,
        which then adopts the fleet's state at its next sync (if the fleet is
        OPEN, this breaker opens again).
        """
        events: List[Event] = []
        with self._lock:
            del self._pending[:]
            self._window.clear()
            self._clear_counts()
            self._reopen_count = 0
            if not isinstance(self._current, _Closed):
                self._transition(_Closed(), OpenReason("reset"), events)
            elif self._binding is not None:
                # Closed here, maybe not elsewhere: with a store, a reset is fleet-wide.
                reset = OpenReason("reset")
                self._binding.changed(LocalTransition(_CLOSED, _CLOSED, reset, reset, None, 0))
            self._refresh_fast()
        self._emit(events)

    def disable(self) -> None:
        """Let every call through and never open; outcomes are still measured.

        With a shared store it stays local to this process, which ignores the
        fleet's state until :meth:`reset` (which rejoins the fleet's state
        rather than closing it everywhere) or :meth:`trip`.
        """
        self._force(_Disabled())

    def snapshot(self) -> MetricsSnapshot:
        """A frozen :class:`MetricsSnapshot` of the breaker's metrics."""
        with self._lock:
            now = self._now()
            self._fold_pending()
            calls, failures, slow = self._window.counts(now)
            self._refresh_fast()
            judged = self._successes + self._failures
            return MetricsSnapshot(
                name=self._name,
                state=self._current.state,
                calls_allowed=self._admitted.value(),
                calls_rejected=self._rejected.value(),
                successes=self._successes,
                failures=self._failures,
                ignored=self._ignored,
                slow_calls=self._slow_calls,
                consecutive_failures=self._consecutive,
                window_calls=calls,
                window_failure_rate=failures / calls if calls else None,
                window_slow_call_rate=(
                    slow / calls if calls and self._config.slow_call_duration is not None else None
                ),
                success_rate=self._successes / judged if judged else None,
                average_latency=self._histogram.average(),
                p99_latency=self._histogram.percentile(0.99),
                transitions=tuple(self._transitions),
            )

    def add_listener(self, listener: Listener) -> None:
        """Add ``listener``; adding one already present does nothing."""
        _check_listener(listener)
        with self._lock:
            if listener in self._listeners:
                return
            self._listeners = (*self._listeners, listener)
        deliver((listener,), [("on_attach", (self,))])

    def remove_listener(self, listener: Listener) -> None:
        """Remove ``listener``; raises ``ValueError`` if it was never added."""
        with self._lock:
            if listener not in self._listeners:
                raise ValueError("{!r} is not a listener of {!r}".format(listener, self))
            self._listeners = tuple(item for item in self._listeners if item is not listener)

    def health_check(
        self,
        check: Callable[[], object],
        *,
        interval: Duration = 1.0,
        max_interval: Duration = 60.0,
        multiplier: float = 2.0,
        jitter: float = 0.1,
        on_healthy: str = "half_open",
    ) -> _health.HealthCheckHandle:
        """Probe the dependency with ``check()`` while the circuit is OPEN.

        ``check`` takes no arguments; an exception or a falsy result means
        unhealthy.  It runs only while the breaker is OPEN (never while
        CLOSED, HALF_OPEN, FORCED_OPEN or DISABLED), on a background thread
        shared by every breaker.  The ``n``-th wait after the circuit opened
        (or after the last unhealthy answer) is ``min(interval *
        multiplier**n, max_interval)`` seconds of real time, scattered by ±
        ``jitter`` (a fraction of the wait).  A healthy answer moves the
        breaker to HALF_OPEN (``on_healthy="half_open"``: trial calls decide)
        or straight to CLOSED (``"close"``), with reason ``health_check``, and
        resets the waits; a ``trip()``, ``reset()`` or reopen that happened
        while the check ran is never undone by it.

        Returns a handle; ``handle.stop()`` unregisters the check.

        >>> import cbsync
        >>> breaker = cbsync.CircuitBreaker("db")
        >>> handle = breaker.health_check(lambda: True, interval="500ms", on_healthy="close")
        >>> handle.stop()
        """
        return _health.scheduler().register(
            self,
            check,
            interval=interval,
            max_interval=max_interval,
            multiplier=multiplier,
            jitter=jitter,
            on_healthy=on_healthy,
        )

    def __repr__(self) -> str:
        return "<CircuitBreaker {!r} {}>".format(self._name, self._current.state.value)

    # -- admission and outcomes (also used by guard() and the integrations) --

    def _acquire(self, seen: Optional[_StateObject] = None) -> Permit:
        """Admit a call or raise :class:`CircuitOpenError`."""
        current = self._current if seen is None else seen
        if current.free:
            self._count_admitted()
            return cast(Permit, current)
        if current.state is _OPEN:
            clock = self._clock
            now = time.monotonic() if clock is None else clock()
            until = current.until  # type: ignore[union-attr]
            if now < until:
                if self._health_checks:
                    # No lock here, so no fork check either; but a forked child
                    # whose fork ran no at-fork hook (uWSGI) must still restart
                    # the health checks that recover this breaker.
                    self._fork.check()
                # The common rejection: no lock, and the error's message is
                # only formatted if someone reads it.
                raise self._reject(
                    CircuitOpenError(self._name, _OPEN, current.reason, until - now)  # type: ignore[union-attr]
                )
        elif isinstance(current, _ForcedOpen):
            raise self._reject(CircuitOpenError(self._name, _FORCED_OPEN, current.reason, None))
        binding = self._binding
        if binding is not None and binding.shared:
            # A trial permit is the fleet's to give (one round trip, no lock held).
            verdict = binding.request_trial()
            if verdict is not None:
                return self._admit_remote(binding, verdict)
        events: List[Event] = []
        error: Optional[CircuitOpenError] = None
        with self._lock:
            current = self._current
            if isinstance(current, _Open):
                now = self._now()
                if now >= current.until:
                    self._fold_pending()
                    self._transition(
                        _HalfOpen(current.reason), OpenReason("open_period_elapsed"), events
                    )
                    current = self._current
                else:
                    error = CircuitOpenError(
                        self._name, _OPEN, current.reason, current.until - now
                    )
            if isinstance(current, _HalfOpen):
                if current.in_flight < self._config.half_open_max_calls:
                    current.in_flight += 1
                else:
                    error = HalfOpenLimitReached(self._name, _HALF_OPEN, current.reason, None)
            elif isinstance(current, _ForcedOpen):
                error = CircuitOpenError(self._name, _FORCED_OPEN, current.reason, None)
            self._refresh_fast()
        self._emit(events)
        if error is not None:
            raise self._reject(error)
        self._count_admitted()
        return cast(Permit, current)

    def _admit_remote(self, binding: StoreBinding, verdict: TrialVerdict) -> Permit:
        """Admit a call or raise, as the fleet's ``verdict`` says (see _store.py)."""
        events: List[Event] = []
        error: Optional[CircuitOpenError] = None
        permit: Optional[Permit] = None
        with self._lock:
            remote = verdict.remote
            if remote is not None and binding.accept_remote(remote):
                self._apply_remote(remote, events)
            current = self._current
            if current.free:
                permit = cast(Permit, current)
            elif verdict.granted and isinstance(current, _HalfOpen):
                current.in_flight += 1
                permit = current
            else:
                error = self._rejection()
                if error is None:
                    # The local state would admit the call; the fleet did not.
                    reason = getattr(current, "reason", OpenReason("remote"))
                    if isinstance(current, _HalfOpen):
                        error = HalfOpenLimitReached(self._name, _HALF_OPEN, reason, None)
                    else:
                        error = CircuitOpenError(self._name, current.state, reason, None)
            if verdict.granted:
                binding.trial_settled(verdict, permit is not None and not current.free)
            self._refresh_fast()
        self._emit(events)
        if error is not None:
            raise self._reject(error)
        self._count_admitted()
        return cast(Permit, permit)

    def _rejection(self) -> Optional[CircuitOpenError]:
        """The error :meth:`_acquire` would raise now, or ``None`` if it would admit a call.

        Takes no permit, counts nothing and changes no state (raise the error
        through :meth:`_reject` to count it as a rejection).  For integrations
        that gate something which is not itself a call, such as a SQLAlchemy
        pool checkout.  Read without the lock: a HALF_OPEN answer may be stale
        by one trial call.  Keep it in step with :meth:`_acquire`.
        """
        current = self._current
        if current.free:
            return None
        if isinstance(current, _Open):
            remaining = current.until - self._now()
            if remaining > 0:
                return CircuitOpenError(self._name, _OPEN, current.reason, remaining)
            return None
        if isinstance(current, _ForcedOpen):
            return CircuitOpenError(self._name, _FORCED_OPEN, current.reason, None)
        if isinstance(current, _HalfOpen) and (
            current.in_flight >= self._config.half_open_max_calls
        ):
            return HalfOpenLimitReached(self._name, _HALF_OPEN, current.reason, None)
        return None

    def _reject(self, error: CircuitOpenError) -> CircuitOpenError:
        self._rejected.increment()
        if self._listeners:
            deliver(self._listeners, [("on_rejected", (self, error))])
        return error

    def _result_fails(self, result: object) -> bool:
        try:
            return bool(self._failure_result(result))  # type: ignore[misc]
        except Exception:
            logger.exception(
                "cbsync failure_result predicate of %r raised on %r; counted as a success",
                self._name,
                result,
            )
            return False

    def _classify(self, exc: BaseException) -> str:
        if self._is_ignored(exc):
            return _IGNORED
        if self._is_failure(exc):
            return _FAILURE
        return _SUCCESS

    def _raised(
        self,
        admitted: Permit,
        elapsed: float,
        exc: Exception,
        open_at_least: Optional[float] = None,
    ) -> None:
        """Record a call that raised ``exc`` (an ``Exception``)."""
        self._record(admitted, elapsed, self._now(), self._classify(exc), exc, open_at_least)

    def _succeeded(self, admitted: Permit, elapsed: float, end: float) -> None:
        """Record a successful call (of :meth:`call`, a guarded block or an
        integration): without the lock when it cannot change anything -- a
        CLOSED success with no failure streak to reset, not slow, before the
        window's next edge, admitted under the current state (see the module
        docstring)."""
        if end < self._fast_until and elapsed < self._slow_limit and admitted is self._current:
            pending = self._pending
            pending.append(elapsed)
            if len(pending) >= self._fold_at:
                self._fold_soon()
            if self._listeners:
                notify_success(self._listeners, self, elapsed)
        else:
            self._record(admitted, elapsed, end, _SUCCESS, None)

    def _abandon(self, admitted: Permit) -> None:
        """A call ended by a ``BaseException``: count nothing, return its permit."""
        if isinstance(admitted, _HalfOpen):
            with self._lock:
                if admitted is self._current:
                    admitted.in_flight -= 1
                    if self._binding is not None:
                        self._binding.trial_ended(False)

    def _record(
        self,
        admitted: Permit,
        elapsed: float,
        end: float,
        outcome: str,
        exc: Optional[BaseException],
        open_at_least: Optional[float] = None,
    ) -> None:
        """Record one finished call; decide and transition under the lock."""
        config = self._config
        events: List[Event] = []
        with self._lock:
            self._fold_pending()
            current = self._current
            if outcome is _IGNORED:
                self._ignored += 1
                events.append(("on_ignored", (self, elapsed, exc)))
                if admitted is current and isinstance(current, _HalfOpen):
                    current.in_flight -= 1
                    if self._binding is not None:
                        self._binding.trial_ended(False)
            else:
                failed = outcome is _FAILURE
                slow = elapsed >= self._slow_limit
                self._histogram.record(elapsed)
                if slow:
                    self._slow_calls += 1
                if failed:
                    self._failures += 1
                    events.append(("on_failure", (self, elapsed, exc)))
                else:
                    self._successes += 1
                    events.append(("on_success", (self, elapsed)))
                if admitted is current:
                    # Only the outcome of a call admitted under the current
                    # state moves the window, the streak and the state; a
                    # stale one counts in the totals above and nowhere else.
                    self._window.record(end, failed, slow)
                    self._consecutive = self._consecutive + 1 if failed else 0
                    if isinstance(current, _Closed):
                        reason = self._judge(end)
                        if reason is not None:
                            self._open(end, reason, events, open_at_least)
                    elif isinstance(current, _HalfOpen):
                        current.in_flight -= 1
                        if self._binding is not None:
                            self._binding.trial_ended(not failed)
                        if failed:
                            # The first failed trial reopens: a failure streak
                            # the trial period could not break.
                            self._reopen_count += 1
                            reason = OpenReason("consecutive_failures", self._consecutive)
                            self._open(end, reason, events, open_at_least)
                        else:
                            current.successes += 1
                            if current.successes >= config.success_threshold:
                                self._close(
                                    OpenReason("trial_successes", current.successes), events
                                )
            self._refresh_fast()
        self._emit(events)

    # -- fork safety and health checks ------------------------------------

    @property
    def _lock(self) -> threading.Lock:
        # Every locked path fetches the lock here, so a forked child rebuilds
        # before it locks (its copy may be held by a parent thread that does
        # not exist in the child).  One os.getpid() per locked operation; the
        # lock-free paths (CLOSED fast success, OPEN rejection) never get here.
        self._fork.check()
        return self._lock_obj

    def _after_fork(self) -> None:
        """In a forked child, before first use: fresh lock, same state and counts.

        A lock still held here was held by a thread of the parent, which may
        have been interrupted halfway through updating the window: the window
        is then cleared rather than trusted.  Calls that were running in other
        threads of the parent never end in the child, so a HALF_OPEN state is
        replaced by one with no trial call in flight (its successes kept).
        """
        torn = self._lock_obj.locked()
        self._lock_obj = threading.Lock()
        if torn:
            self._window.clear()
            self._refresh_fast()
        current = self._current
        if isinstance(current, _HalfOpen):
            fresh = _HalfOpen(current.reason)
            fresh.successes = current.successes
            self._current = fresh
        if self._health_checks:
            _health.state_changed(self)
        if self._binding is not None:
            # The child's counts start here, before it counts anything (see _store.py).
            self._binding.forked()

    def _recover(self, started_under: object, close: bool, active: Callable[[], bool]) -> bool:
        """A health check passed: leave OPEN, if ``started_under`` is still current.

        ``active()`` is read under the lock, so a check stopped before this
        takes the lock never moves the breaker.
        """
        events: List[Event] = []
        with self._lock:
            current = self._current
            if current is not started_under or not isinstance(current, _Open) or not active():
                return False
            self._fold_pending()
            reason = OpenReason("health_check")
            if close:
                self._close(reason, events)
            else:
                self._transition(_HalfOpen(current.reason), reason, events)
            self._refresh_fast()
        self._emit(events)
        return True

    # -- decisions and transitions (the lock is held) ----------------------

    def _judge(self, now: float) -> Optional[OpenReason]:
        """Return why the CLOSED circuit must open now, or ``None``."""
        config = self._config
        consecutive = self._consecutive
        calls, failures, slow = self._window.counts(now)
        if self._binding is not None:
            # The fleet's counts: the store's last sync plus what is not flushed yet.
            calls, failures, slow, consecutive = self._binding.judged_counts(
                calls, failures, slow, consecutive
            )
        if config.failure_threshold is not None and consecutive >= config.failure_threshold:
            return OpenReason("consecutive_failures", consecutive)
        if calls < config.minimum_calls:
            return None
        if config.failure_rate_threshold is not None:
            rate = failures / calls
            if rate >= config.failure_rate_threshold:
                return OpenReason("failure_rate", round(rate, 4))
        if config.slow_call_duration is not None:
            rate = slow / calls
            if rate >= config.slow_call_rate_threshold:
                return OpenReason("slow_call_rate", round(rate, 4))
        return None

    def _open_period(self) -> float:
        return open_period(self._config, self._reopen_count)

    def _open(
        self,
        now: float,
        reason: OpenReason,
        events: List[Event],
        at_least: Optional[float] = None,
    ) -> None:
        period = self._open_period()
        if at_least is not None and at_least > period:
            period = min(at_least, self._config.max_timeout)
        self._transition(_Open(now + period, reason), reason, events)

    def _close(self, reason: OpenReason, events: List[Event]) -> None:
        self._window.clear()
        self._consecutive = 0
        self._reopen_count = 0
        self._transition(_Closed(), reason, events)

    def _force(self, new: Union[_ForcedOpen, _Disabled]) -> None:
        events: List[Event] = []
        with self._lock:
            current = self._current
            if isinstance(current, _ForcedOpen) and isinstance(new, _ForcedOpen):
                current.reason = new.reason
                if self._binding is not None:
                    # Tripped again (maybe for a new reason): a trip is for the whole fleet.
                    self._binding.changed(self._describe(_FORCED_OPEN, new.reason))
            elif type(current) is not type(new):
                reason = new.reason if isinstance(new, _ForcedOpen) else OpenReason("disabled")
                self._fold_pending()
                self._transition(new, reason, events)
            self._refresh_fast()
        self._emit(events)

    def _transition(
        self, new: _StateObject, reason: OpenReason, events: List[Event], remote: bool = False
    ) -> None:
        """Swap the state object; ``remote`` when adopting the fleet's state (not published)."""
        old = self._current.state
        self._current = new
        self._transitions.append(
            StateTransition(old, new.state, reason, datetime.datetime.now(datetime.timezone.utc))
        )
        events.append(("on_state_change", (self, old, new.state, reason)))
        if self._binding is not None and not remote:
            self._binding.changed(self._describe(old, reason))

    # -- shared store (see _store.py) ---------------------------------------

    def _describe(self, old: State, cause: OpenReason) -> LocalTransition:
        """The current state as a transition from ``old`` (lock held)."""
        current = self._current
        reason: OpenReason = getattr(current, "reason", cause)
        until = current.until if isinstance(current, _Open) else None
        return LocalTransition(old, current.state, cause, reason, until, self._reopen_count)

    def _totals(self) -> Tuple[int, int, int, int]:
        """``(calls, failures, slow, consecutive)`` since creation or reset (lock held).

        Calls are successes and failures; fast successes are folded in first.
        """
        self._fold_pending()
        return (
            self._successes + self._failures,
            self._failures,
            self._slow_calls,
            self._consecutive,
        )

    def _synchronise(self, update: Callable[[], Optional[RemoteState]]) -> None:
        """Run ``update()`` under the lock and adopt the state it returns, if any.

        The one way a store changes a breaker's state; listeners are told
        after the lock is released, as for any transition.
        """
        events: List[Event] = []
        with self._lock:
            remote = update()
            if remote is not None:
                self._apply_remote(remote, events)
                self._refresh_fast()
        self._emit(events)

    def _apply_remote(self, remote: RemoteState, events: List[Event]) -> None:
        """Make the fleet's state this breaker's (lock held).

        A transition made by another process is reported with reason kind
        ``"remote"`` (its value: that process's reason), except FORCED_OPEN,
        which keeps its ``"manual"`` reason.  A DISABLED breaker ignores the
        fleet.  An OPEN breaker that is told the fleet is OPEN keeps its own
        reason and takes the fleet's end of the period.
        """
        current = self._current
        if isinstance(current, _Disabled):
            return
        state = remote.state
        reason, cause = remote.reason, remote.cause
        if not remote.mine and state is not _FORCED_OPEN:
            reason = OpenReason("remote", str(reason))
            cause = OpenReason("remote", str(cause))
        self._fold_pending()
        self._reopen_count = remote.reopen_count
        if state is _OPEN:
            until = self._now() + (remote.remaining or 0.0)
            if isinstance(current, _Open):
                current.until = until
            else:
                self._transition(_Open(until, reason), cause, events, remote=True)
        elif state is _HALF_OPEN:
            opened_for = current.reason if isinstance(current, (_Open, _HalfOpen)) else reason
            if isinstance(current, _HalfOpen):
                # A later trial period: calls admitted in this one no longer count.
                self._current = _HalfOpen(opened_for)
            else:
                self._transition(_HalfOpen(opened_for), cause, events, remote=True)
        elif state is _FORCED_OPEN:
            if isinstance(current, _ForcedOpen):
                current.reason = reason
            else:
                self._transition(_ForcedOpen(reason), cause, events, remote=True)
        else:
            self._window.clear()
            self._consecutive = 0
            if not isinstance(current, _Closed):
                self._transition(_Closed(), cause, events, remote=True)

    def _fold_pending(self) -> None:
        pending = self._pending
        n = len(pending)
        if n:
            # Appends only ever add at the end, so the first n are exactly
            # what was read; deleting them loses nothing appended meanwhile.
            batch = pending[:n].tolist()
            del pending[:n]
            # No streak to reset: a success only takes this path while the
            # breaker has none (see _refresh_fast).
            self._successes += n
            self._histogram.record_many(batch)
            self._window.record_successes(n)

    def _fold_soon(self) -> None:
        """Fold the fast successes, without queueing behind another thread
        unless they reach :data:`_PENDING_HARD_MAX`."""
        # The lock object itself: the _lock property's fork check costs a
        # system call.  A lock copied held into a forked child only fails
        # this attempt; the property rebuilds it below.
        lock = self._lock_obj
        if lock.acquire(False):
            # While this thread folds (and may lose the GIL doing so), the
            # others go on appending without calling here.
            self._fold_at = _PENDING_HARD_MAX
            try:
                self._fold_pending()
                self._refresh_fast()
            finally:
                self._fold_at = _PENDING_MAX
                lock.release()
        elif len(self._pending) >= _PENDING_HARD_MAX:
            with self._lock:
                self._fold_pending()
                self._refresh_fast()
        else:
            # Another thread holds the lock: try again 64 successes later.
            self._fold_at = len(self._pending) + 64

    def _refresh_fast(self) -> None:
        """Allow lock-free successes until the window's next edge, if no
        success could change anything before then."""
        current = self._current
        if (
            current.free
            and self._consecutive == 0
            and not (isinstance(current, _Closed) and self._success_may_open())
        ):
            self._fast_until = self._window.fast_until
        else:
            self._fast_until = -math.inf

    def _success_may_open(self) -> bool:
        # A success lowers both rates, but the one that brings the window up
        # to minimum_calls is judged, and may find a rate at its threshold.
        # The smallest count that reaches the minimum is the worst case: any
        # further success only lowers the rates, and a full count window
        # evicting an outcome to make room never raises them.
        config = self._config
        window = self._window
        calls = window.calls + max(1, config.minimum_calls - window.calls)
        if (
            config.failure_rate_threshold is not None
            and window.failures / calls >= config.failure_rate_threshold
        ):
            return True
        return (
            config.slow_call_duration is not None
            and window.slow / calls >= config.slow_call_rate_threshold
        )

    def _emit(self, events: List[Event]) -> None:
        for method, args in events:
            if method == "on_state_change":
                _, old, new, reason = args
                logger.log(
                    logging.WARNING if new in (_OPEN, _FORCED_OPEN) else logging.INFO,
                    "circuit breaker %r: %s -> %s (%s)",
                    self._name,
                    old.value,
                    new.value,
                    reason,
                )
                if self._health_checks:
                    # Arm or disarm the checks (they read the current state).
                    _health.state_changed(self)
        if self._listeners:
            deliver(self._listeners, events)


def _check_listener(listener: object) -> None:
    if not isinstance(listener, Listener):
        raise ConfigError(
            "listener {!r} must be an instance of cbsync.Listener (subclass it and "
            "override the methods you need)".format(listener)
        )


class _Guard:
    """``with breaker.guard():`` -- protected blocks.

    One guard object may be entered again, nested or from several threads at
    once (like a lock kept in a variable): each thread's entries are a stack.
    """

    __slots__ = ("_breaker", "_entries")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._entries: Dict[int, List[Tuple[Permit, float]]] = {}

    def __enter__(self) -> CircuitBreaker:
        breaker = self._breaker
        admitted = breaker._acquire()
        self._entries.setdefault(threading.get_ident(), []).append((admitted, breaker._now()))
        return breaker

    def __exit__(self, exc_type: object, exc: Optional[BaseException], tb: object) -> None:
        breaker = self._breaker
        ident = threading.get_ident()
        stack = self._entries[ident]
        admitted, start = stack.pop()
        if not stack:
            del self._entries[ident]
        if exc is None:
            end = breaker._now()
            breaker._succeeded(admitted, end - start, end)
        elif isinstance(exc, Exception):
            breaker._raised(admitted, breaker._now() - start, exc)
        else:
            breaker._abandon(admitted)


if TYPE_CHECKING:
    _BoundFunctionWrapper = wrapt.BoundFunctionWrapper[Any, Any]
    _FunctionWrapper = wrapt.FunctionWrapper[Any, Any]
else:  # wrapt < 2 has no type parameters
    _BoundFunctionWrapper = wrapt.BoundFunctionWrapper
    _FunctionWrapper = wrapt.FunctionWrapper


class _BoundBreakerWrapper(_BoundFunctionWrapper):
    @property
    def breaker(self) -> CircuitBreaker:
        return cast(CircuitBreaker, self._self_parent._self_breaker)


class _BreakerFunctionWrapper(_FunctionWrapper):
    """``@breaker``: wrapt's binding for methods, a direct call for functions.

    wrapt's own ``__call__`` looks ``__self__`` up on a plain function at
    every call, raising and clearing an AttributeError each time; a plain
    function needs no binding, so it is called straight through the breaker.
    Methods, classmethods and staticmethods are bound by wrapt as usual.
    """

    __bound_function_wrapper__ = _BoundBreakerWrapper

    def __init__(self, wrapped: Callable[..., Any], breaker: CircuitBreaker) -> None:
        def wrapper(
            wrapped: Callable[..., Any], instance: object, args: Tuple[Any, ...], kwargs: Any
        ) -> Any:
            return breaker.call(wrapped, *args, **kwargs)

        super().__init__(wrapped, wrapper)
        self._self_breaker = breaker

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_breaker.call(self.__wrapped__, *args, **kwargs)

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker every call goes through."""
        breaker: CircuitBreaker = self._self_breaker
        return breaker
