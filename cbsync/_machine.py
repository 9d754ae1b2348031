"""The breaker's bookkeeping: admission, outcomes, transitions, the fast path.

:class:`Machine` is the base of :class:`cbsync.CircuitBreaker`, which adds
the public API; what a state does lives in ``_states.py`` and the rules in
``_decide.py``.  How the work is split, and why:

* The current state is one small object; a transition swaps it under the
  lock, so a call that remembers the object it was admitted under can tell,
  when it ends, whether its outcome still belongs to the current state
  (``admitted is self._current``).  A stale outcome counts in the totals and
  nothing else: a slow call admitted while CLOSED never closes a circuit
  that opened meanwhile.
* The lock guards bookkeeping only.  It is never held while the protected
  function or a listener runs; events are collected under the lock and
  delivered after it is released.
* Rejections in OPEN and FORCED_OPEN take no lock at all, so a rejected
  caller never waits.
* A CLOSED success that cannot open anything (no failure streak to reset,
  not slow, inside the window's current bucket) takes no lock either: its
  latency is appended to ``_pending`` (``array.append`` is atomic under the
  GIL) and folded into the window, totals and histogram under the lock
  before any decision or snapshot.  Free-threaded CPython builds have no GIL
  to make that append and the ``AtomicCounter`` safe, and would need the
  locked path.
* Every locked path fetches the lock through the ``_lock`` property, which
  compares ``os.getpid()`` and, in a forked child, rebuilds the breaker
  first (:meth:`Machine._after_fork`; see ``_fork.py``).  The lock-free
  paths never pay for it.
* A shared store and the health checks see the breaker only through the
  handle in ``_link.py``; listeners only through the events of ``_events.py``.
"""

import array
import collections
import datetime
import logging
import math
import threading
import time
import types
from typing import Callable, Deque, Dict, List, Mapping, Optional, Tuple, Union, cast

from ._config import CircuitBreakerConfig, ExceptionMatcher, open_period
from ._decide import Counts, decide, success_may_open
from ._errors import CircuitOpenError, HalfOpenLimitReached
from ._events import (
    Event,
    Finished,
    Outcome,
    Rejected,
    Sink,
    StateChanged,
    StateObserver,
    deliver,
    logger,
    notify_success,
)
from ._fork import ForkGuard
from ._metrics import AtomicCounter, LatencyHistogram, Lifetime, Retired
from ._state import State, StateTransition, TransitionReason
from ._states import Admitted, Closed, Disabled, ForcedOpen, HalfOpen, Open, StateObject
from ._states import fleet_state as _fleet_state
from ._windows import CountWindow, TimeWindow
from .stores import LocalTransition, RemoteState, StoreBinding, Totals, TrialVerdict

#: Fast successes waiting to be folded: at this many, the success that sees
#: it folds them if the lock is free at that moment.  Folding seldom matters
#: under threads: a thread preempted while folding makes the others queue.
_PENDING_MAX = 4096
#: ... and at this many it folds them even if it has to wait for the lock:
#: the bound on the memory they take.
_PENDING_HARD_MAX = 4 * _PENDING_MAX
#: State changes kept for ``snapshot().transitions``.
_TRANSITIONS_KEPT = 100

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED
_OPEN = State.OPEN
_FORCED_OPEN = State.FORCED_OPEN
_CLOSED = State.CLOSED


def monotonic() -> float:
    """The default clock.

    Looked up at each call so that freezegun, which replaces
    ``time.monotonic``, drives every breaker built with it.
    """
    return time.monotonic()


def matcher(spec: ExceptionMatcher, on_error: bool) -> Callable[[BaseException], bool]:
    """A classifier for ``failure_on``/``ignore``: types, or a predicate whose
    own exception is logged and answered with ``on_error``."""
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


class Machine:
    """The state machine and bookkeeping of one breaker (see the module docstring)."""

    # Slots, not an instance dict: attribute reads stay the fastest kind
    # however many there are (CPython shares dict keys only up to 30).
    __slots__ = (
        "__weakref__",
        "_admitted",
        "_binding",
        "_clock",
        "_config",
        "_consecutive",
        "_count_admitted",
        "_current",
        "_dropped",
        "_failure_result",
        "_failures",
        "_fast_until",
        "_fold_at",
        "_fork",
        "_histogram",
        "_ignored",
        "_is_failure",
        "_is_ignored",
        "_listeners",
        "_lock_obj",
        "_name",
        "_now",
        "_observers",
        "_orphans",
        "_pending",
        "_rejected",
        "_reopen_count",
        "_resets",
        "_retired",
        "_slow_calls",
        "_slow_limit",
        "_success_listeners",
        "_successes",
        "_transition_counts",
        "_transition_view",
        "_transitions",
        "_warned_drop",
        "_window",
    )

    # Set by _setup(); declared for the type checker.
    _name: str
    _config: CircuitBreakerConfig
    _clock: Optional[Callable[[], float]]
    _now: Callable[[], float]
    _listeners: Tuple[Sink, ...]
    #: The listeners that do something on_success: the lock-free path calls
    #: only these, so a listener of state changes alone costs a call nothing.
    _success_listeners: Tuple[Sink, ...]
    _binding: Optional[StoreBinding]

    def _setup(
        self,
        name: str,
        config: CircuitBreakerConfig,
        clock: Optional[Callable[[], float]],
    ) -> None:
        self._name = name
        self._config = config
        self._clock = clock
        self._now = clock if clock is not None else monotonic
        # Read through the _lock property, which rebuilds it in a forked child.
        self._lock_obj = threading.Lock()
        self._fork = ForkGuard(self._after_fork)
        #: Internal listeners of state changes (health checks), told first.
        self._observers: Tuple[StateObserver, ...] = ()
        self._is_ignored = matcher(config.ignore, on_error=False)
        self._is_failure = matcher(config.failure_on, on_error=True)
        self._failure_result = config.failure_result
        self._slow_limit = (
            config.slow_call_duration if config.slow_call_duration is not None else math.inf
        )
        self._window: Union[CountWindow, TimeWindow] = (
            CountWindow(config.window_size)
            if config.window_type == "count_based"
            else TimeWindow(config.failure_window)
        )
        self._current: StateObject = Closed()
        self._transitions: Deque[StateTransition] = collections.deque(maxlen=_TRANSITIONS_KEPT)
        #: State changes since creation, by (old, new): never reset.
        self._transition_counts: Dict[Tuple[State, State], int] = {}
        #: A read-only copy of it for snapshots, kept until the next transition.
        self._transition_view: Mapping[Tuple[State, State], int] = types.MappingProxyType({})
        self._resets = 0
        #: The counts before the resets, for lifetime totals (from the first reset).
        self._retired: Optional[Retired] = None
        self._reopen_count = 0
        #: Latencies of lock-free successes, not folded yet: an array of
        #: doubles (8 bytes each), appended to without the lock.
        self._pending: array.array[float] = array.array("d")
        #: Fold _pending once it is this long (see _fold_soon).
        self._fold_at = _PENDING_MAX
        self._fast_until = -math.inf
        #: Trial states of permits dropped without an outcome while the lock
        #: was taken: their slots are given back at the next locked operation.
        self._orphans: List[Admitted] = []
        self._dropped = AtomicCounter()
        #: Whether a dropped permit was logged already (at WARNING; once).
        self._warned_drop = False
        self._binding = None
        self._clear_counts()

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

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration; it never changes."""
        return self._config

    @property
    def _lock(self) -> threading.Lock:
        # Every locked path fetches the lock here, so a forked child rebuilds
        # before it locks (its copy may be held by a parent thread that does
        # not exist in the child).  One os.getpid() per locked operation; the
        # lock-free paths (CLOSED fast success, OPEN rejection) never get here.
        self._fork.check()
        return self._lock_obj

    # -- admission -----------------------------------------------------------

    def _admit(self, seen: Optional[StateObject] = None) -> Admitted:
        """Admit a call: the state it is admitted under; or raise :class:`CircuitOpenError`."""
        current = self._current if seen is None else seen
        if current.free:
            self._count_admitted()
            return current  # type: ignore[return-value]
        clock = self._clock
        now = time.monotonic() if clock is None else clock()
        if now < current.until:  # current.refuses(), without the lock (OPEN, FORCED_OPEN)
            if self._observers:
                # No lock here, so no fork check either; but a forked child
                # whose fork ran no at-fork hook (uWSGI) must still restart
                # the health checks that recover this breaker.
                self._fork.check()
            # The common rejection: no lock, and the error's message is only
            # formatted if someone reads it.  (Raised without being held in a
            # local: see _states._Base.admit.)
            raise self._reject(current.error(self._name, now))
        binding = self._binding
        if binding is not None and binding.shared:
            # A trial permit is the fleet's to give (one round trip, no lock held).
            verdict = binding.request_trial()
            if verdict is not None:
                return self._admit_remote(binding, verdict)
        events: List[Event] = []
        with self._lock:
            self._release_orphans()
            current = self._current
            if current.state is _OPEN:
                self._fold_pending()  # the window is judged no more: fold before moving on
            now = self._now()
            admitted = current.admit(self, now, events)
            refusing = self._current
            self._refresh_fast()
        self._emit(events)
        if admitted is None:
            raise self._reject(refusing.error(self._name, now))
        self._count_admitted()
        return cast(Admitted, admitted)

    def _admit_remote(self, binding: StoreBinding, verdict: TrialVerdict) -> Admitted:
        """Admit a call or raise, as the fleet's ``verdict`` says (see ``stores.py``)."""
        events: List[Event] = []
        admitted: Optional[Admitted] = None
        with self._lock:
            self._release_orphans()
            remote = verdict.remote
            if remote is not None and binding.accept_remote(remote):
                self._apply_remote(remote, events)
            current = self._current
            now = self._now()
            if current.free:
                admitted = current  # type: ignore[assignment]
            elif verdict.granted and isinstance(current, HalfOpen):
                current.in_flight += 1
                admitted = current
            if verdict.granted:
                binding.trial_settled(verdict, admitted is not None and not current.free)
            self._refresh_fast()
        self._emit(events)
        if admitted is None:
            raise self._reject(self._fleet_refusal(current, now))
        self._count_admitted()
        return admitted

    def _fleet_refusal(self, current: StateObject, now: float) -> CircuitOpenError:
        """The error for a call the fleet refused in ``current``."""
        if current.refuses(now, self._config):
            return current.error(self._name, now)
        # The local state would admit the call; the fleet did not.
        reason = current.reason or TransitionReason("remote")
        if isinstance(current, HalfOpen):
            return HalfOpenLimitReached(self._name, current.state, reason, None)
        return CircuitOpenError(self._name, current.state, reason, None)

    def _reject(self, error: CircuitOpenError) -> CircuitOpenError:
        """Count ``error`` as a rejection and tell the listeners; return it."""
        self._rejected.increment()
        if self._listeners:
            deliver(self._listeners, (Rejected(self, error),))
        return error

    # -- outcomes ------------------------------------------------------------

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

    def _classify(self, exc: BaseException) -> Outcome:
        if self._is_ignored(exc):
            return _IGNORED
        if self._is_failure(exc):
            return _FAILURE
        return _SUCCESS

    def _raised(self, admitted: Admitted, elapsed: float, exc: Exception) -> None:
        """Record a call that raised ``exc`` (an ``Exception``)."""
        self._record(admitted, elapsed, self._now(), self._classify(exc), exc)

    def _succeeded(self, admitted: Admitted, elapsed: float, end: float) -> None:
        """Record a successful call: without the lock when it cannot change
        anything -- a CLOSED success with no failure streak to reset, not
        slow, before the window's next edge, admitted under the current
        state (see the module docstring)."""
        if end < self._fast_until and elapsed < self._slow_limit and admitted is self._current:
            pending = self._pending
            pending.append(elapsed)
            if len(pending) >= self._fold_at:
                self._fold_soon()
            if self._success_listeners:
                notify_success(self._success_listeners, self, elapsed)
        else:
            self._record(admitted, elapsed, end, _SUCCESS, None)

    def _abandon(self, admitted: Admitted) -> None:
        """A call ended without an outcome: count nothing, return its permit."""
        if not admitted.free:
            with self._lock:
                if admitted is self._current:
                    admitted.release(self)

    def _drop(self, admitted: Admitted) -> None:
        """A permit was garbage-collected without an outcome (any thread, maybe
        inside the garbage collector: never waits for the lock)."""
        self._dropped.increment()
        if not admitted.free:
            lock = self._lock_obj
            if lock.acquire(False):
                try:
                    if admitted is self._current:
                        admitted.release(self)
                finally:
                    lock.release()
            else:
                # Maybe held by this very thread: the next locked operation
                # gives the slot back, before it decides anything.
                self._orphans.append(admitted)

    def _release_orphans(self) -> None:
        orphans = self._orphans
        while orphans:
            admitted = orphans.pop()
            if admitted is self._current:
                admitted.release(self)

    def _record(
        self,
        admitted: Admitted,
        elapsed: float,
        end: float,
        outcome: Outcome,
        exc: Optional[BaseException],
        open_at_least: Optional[float] = None,
    ) -> None:
        """Record one finished call; decide and transition under the lock."""
        events: List[Event] = []
        with self._lock:
            self._fold_pending()
            self._release_orphans()
            current = self._current
            if self._listeners:
                events.append(Finished(self, outcome, elapsed, exc))
            if outcome is _IGNORED:
                self._ignored += 1
                if admitted is current:
                    current.release(self)
            else:
                failed = outcome is _FAILURE
                slow = elapsed >= self._slow_limit
                self._histogram.record(elapsed)
                if slow:
                    self._slow_calls += 1
                if failed:
                    self._failures += 1
                else:
                    self._successes += 1
                if admitted is current:
                    # Only the outcome of a call admitted under the current
                    # state moves the window, the streak and the state; a
                    # stale one counts in the totals above and nowhere else.
                    self._window.record(end, failed, slow)
                    self._consecutive = self._consecutive + 1 if failed else 0
                    current.after_outcome(self, failed, end, open_at_least, events)
            self._refresh_fast()
        self._emit(events)

    # -- what the states ask for (lock held; see _states.Machine) -----------

    def _judge(self, now: float) -> Optional[TransitionReason]:
        calls, failures, slow = self._window.counts(now)
        consecutive = self._consecutive
        if self._binding is not None:
            # The fleet's counts: the store's last sync plus what is not flushed yet.
            calls, failures, slow, consecutive = self._binding.judged_counts(
                calls, failures, slow, consecutive
            )
        return decide(Counts(calls, failures, slow, consecutive), self._config)

    def _open(
        self,
        now: float,
        reason: TransitionReason,
        events: List[Event],
        at_least: Optional[float],
    ) -> None:
        period = open_period(self._config, self._reopen_count)
        if at_least is not None and at_least > period:
            period = min(at_least, self._config.max_timeout)
        self._transition(Open(now + period, reason), reason, events)

    def _reopen(self, now: float, events: List[Event], at_least: Optional[float]) -> None:
        self._reopen_count += 1
        self._open(
            now, TransitionReason("consecutive_failures", self._consecutive), events, at_least
        )

    def _close(self, reason: TransitionReason, events: List[Event]) -> None:
        self._window.clear()
        self._consecutive = 0
        self._reopen_count = 0
        self._transition(Closed(), reason, events)

    def _transition(
        self, new: StateObject, reason: TransitionReason, events: List[Event], remote: bool = False
    ) -> None:
        """Swap the state object; ``remote`` when adopting the fleet's state (not published)."""
        old = self._current.state
        self._current = new
        self._transitions.append(
            StateTransition(old, new.state, reason, datetime.datetime.now(datetime.timezone.utc))
        )
        counts = self._transition_counts
        counts[old, new.state] = counts.get((old, new.state), 0) + 1
        self._transition_view = types.MappingProxyType(dict(counts))
        events.append(StateChanged(self, old, new.state, reason))
        if self._binding is not None and not remote:
            self._binding.changed(self._describe(old, reason))

    def _trial_ended(self, success: bool) -> None:
        if self._binding is not None:
            self._binding.trial_ended(success)

    # -- manual moves ----------------------------------------------------------

    def _force(self, new: Union[ForcedOpen, Disabled]) -> None:
        events: List[Event] = []
        with self._lock:
            current = self._current
            if isinstance(current, ForcedOpen) and isinstance(new, ForcedOpen):
                current.reason = new.reason
                if self._binding is not None:
                    # Tripped again (maybe for a new reason): a trip is for the whole fleet.
                    self._binding.changed(self._describe(_FORCED_OPEN, new.reason))
            elif current.state is not new.state:
                reason = new.reason if new.reason is not None else TransitionReason("disabled")
                self._fold_pending()
                self._transition(new, reason, events)
            self._refresh_fast()
        self._emit(events)

    def _reset(self) -> None:
        events: List[Event] = []
        with self._lock:
            self._fold_pending()  # they are successes of the lifetime totals
            self._retire()
            del self._orphans[:]
            self._window.clear()
            self._clear_counts()
            self._resets += 1
            self._reopen_count = 0
            reset = TransitionReason("reset")
            if self._current.state is not _CLOSED:
                self._transition(Closed(), reset, events)
            elif self._binding is not None:
                # Closed here, maybe not elsewhere: with a store, a reset is fleet-wide.
                self._binding.changed(LocalTransition(_CLOSED, _CLOSED, reset, reset, None, 0))
            self._refresh_fast()
        self._emit(events)

    def _retire(self) -> None:
        """Keep the counts a reset is about to clear, for the lifetime totals (lock held)."""
        retired = self._retired
        if retired is None:
            retired = self._retired = Retired()
        retired.admitted += self._admitted.value()
        retired.rejected += self._rejected.value()
        retired.successes += self._successes
        retired.failures += self._failures
        retired.ignored += self._ignored
        retired.slow += self._slow_calls
        retired.histogram.add(self._histogram)

    def _lifetime(self, allowed: int, rejected: int) -> Lifetime:
        """The totals since creation, given the current ones (lock held)."""
        histogram = self._histogram
        retired = self._retired
        if retired is None:
            return Lifetime(
                allowed,
                rejected,
                self._successes,
                self._failures,
                self._ignored,
                self._slow_calls,
                histogram.buckets(),
                histogram.total,
            )
        merged = LatencyHistogram()
        merged.add(retired.histogram)
        merged.add(histogram)
        return Lifetime(
            retired.admitted + allowed,
            retired.rejected + rejected,
            retired.successes + self._successes,
            retired.failures + self._failures,
            retired.ignored + self._ignored,
            retired.slow + self._slow_calls,
            merged.buckets(),
            merged.total,
        )

    def _recover(self, token: object, close: bool, active: Callable[[], bool]) -> bool:
        """A health check passed: leave OPEN, if ``token`` is still the current state.

        ``active()`` is read under the lock, so a check stopped before this
        takes the lock never moves the breaker.
        """
        events: List[Event] = []
        with self._lock:
            current = self._current
            if current is not token or not isinstance(current, Open) or not active():
                return False
            self._fold_pending()
            reason = TransitionReason("health_check")
            if close:
                self._close(reason, events)
            else:
                self._transition(HalfOpen(current.reason), reason, events)
            self._refresh_fast()
        self._emit(events)
        return True

    # -- shared store (see stores.py) -----------------------------------------

    def _describe(self, old: State, cause: TransitionReason) -> LocalTransition:
        """The current state as a transition from ``old`` (lock held)."""
        current = self._current
        reason = current.reason if current.reason is not None else cause
        until = current.until if isinstance(current, Open) else None
        return LocalTransition(old, current.state, cause, reason, until, self._reopen_count)

    def _totals(self) -> Totals:
        """Counts since creation or reset, fast successes folded in (lock held)."""
        self._fold_pending()
        return Totals(
            self._successes + self._failures, self._failures, self._slow_calls, self._consecutive
        )

    def _totals_at_fork(self) -> Totals:
        """:meth:`_totals` without the lock, counting the fast successes
        unfolded (they are successes, never slow): for fork hooks only."""
        failures = self._failures
        calls = self._successes + len(self._pending) + failures
        return Totals(calls, failures, self._slow_calls, self._consecutive)

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
        fleet.  A breaker told the fleet is in the state it is in already
        keeps its state object as that state says (``renewed``): an OPEN one
        keeps its own reason and takes the fleet's end of the period.
        """
        current = self._current
        if not current.follows_fleet:
            return
        state = remote.state
        reason, cause = remote.reason, remote.cause
        if not remote.mine and state is not _FORCED_OPEN:
            reason = TransitionReason("remote", str(reason))
            cause = TransitionReason("remote", str(cause))
        self._fold_pending()
        self._reopen_count = remote.reopen_count
        until = self._now() + (remote.remaining or 0.0) if state is _OPEN else None
        if state is _CLOSED:
            self._window.clear()
            self._consecutive = 0
        if current.state is state:
            self._current = current.renewed(reason, until)
        else:
            self._transition(_fleet_state(state, reason, until, current), cause, events, True)

    # -- the lock-free success path ---------------------------------------------

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
        window = self._window
        if (
            current.free
            and self._consecutive == 0
            and not (
                current.judges
                and success_may_open(window.calls, window.failures, window.slow, self._config)
            )
        ):
            self._fast_until = window.bucket_end
        else:
            self._fast_until = -math.inf

    # -- delivery ----------------------------------------------------------------

    def _emit(self, events: List[Event]) -> None:
        for event in events:
            if isinstance(event, StateChanged):
                logger.log(
                    logging.WARNING if event.new in (_OPEN, _FORCED_OPEN) else logging.INFO,
                    "circuit breaker %r: %s -> %s (%s)",
                    self._name,
                    event.old.value,
                    event.new.value,
                    event.reason,
                )
                for observer in self._observers:
                    # Health checks arm or disarm (they read the current state).
                    observer.state_changed()
        if self._listeners and events:
            deliver(self._listeners, events)

    # -- fork safety --------------------------------------------------------------

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
        self._current = self._current.after_fork()
        del self._orphans[:]
        for observer in self._observers:
            observer.state_changed()
        if self._binding is not None:
            # The child's counts start here, before it counts anything (see stores.py).
            self._binding.forked()
