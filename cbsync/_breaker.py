"""``CircuitBreaker``: the public class, and the ``Listener`` it reports to.

The machinery is below it: ``_machine.py`` (bookkeeping, admission,
outcomes, the lock-free fast path), ``_states.py`` (what each state does),
``_decide.py`` (the rules), ``_permit.py`` (the admission API), ``_link.py``
(the view a store and a health check get).  This module is the surface:
construction and validation, ``call()`` and its decorator, ``acquire()`` and
``rejection()``, manual moves, snapshots, listeners and health checks.
"""

import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, cast

from . import _health
from ._config import CircuitBreakerConfig, Duration
from ._errors import CircuitOpenError, ConfigError
from ._events import Attached, Outcome, deliver
from ._link import Link
from ._machine import Machine
from ._metrics import MetricsSnapshot
from ._permit import Permit
from ._state import State, TransitionReason
from ._states import Admitted, Disabled, ForcedOpen
from ._wrapper import BreakerFunctionWrapper
from .stores import bind_store, check_store

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

_FAILURE = Outcome.FAILURE


class Listener:
    """Base class for breaker listeners; every method does nothing.

    Override the methods you need.  They run in the calling thread after the
    breaker's lock is released, in the order things happened; an exception
    raised by one is logged on logger ``cbsync`` and never reaches the caller.

    >>> import cbsync
    >>> class Opened(cbsync.Listener):
    ...     def on_state_change(self, breaker, old, new, reason):
    ...         print(breaker.name, old.value, "->", new.value, reason)
    >>> breaker = cbsync.CircuitBreaker("demo", listeners=[Opened()])
    >>> breaker.trip("maintenance")
    demo closed -> forced_open manual=maintenance
    """

    def on_attach(self, breaker: "CircuitBreaker") -> None:
        """The listener was added to ``breaker`` (reporters send its state here)."""

    def on_success(self, breaker: "CircuitBreaker", elapsed: float) -> None:
        """A call succeeded after ``elapsed`` seconds."""

    def on_failure(
        self, breaker: "CircuitBreaker", elapsed: float, exc: Optional[BaseException]
    ) -> None:
        """A call failed: ``exc`` is its exception, or ``None`` when it returned a
        value that ``failure_result`` judged a failure (or an integration
        reported a failure without one)."""

    def on_ignored(
        self, breaker: "CircuitBreaker", elapsed: float, exc: Optional[BaseException]
    ) -> None:
        """A call ended in a way that counts as neither success nor failure
        (``exc`` matched ``ignore``; ``None`` when an integration said so
        without an exception)."""

    def on_rejected(self, breaker: "CircuitBreaker", error: CircuitOpenError) -> None:
        """A call was rejected with ``error``; the function did not run."""

    def on_state_change(
        self, breaker: "CircuitBreaker", old: State, new: State, reason: TransitionReason
    ) -> None:
        """The breaker moved from ``old`` to ``new`` for ``reason``."""


def check_listener(listener: object) -> None:
    """Raise :class:`ConfigError` unless ``listener`` is a :class:`Listener`."""
    if not isinstance(listener, Listener):
        raise ConfigError(
            "listener {!r} must be an instance of cbsync.Listener (subclass it and "
            "override the methods you need)".format(listener)
        )


class CircuitBreaker(Machine):
    """Stops calls to a failing dependency, and lets them through again once
    it recovers.

    ``config`` is a :class:`CircuitBreakerConfig`; its fields may instead be
    given as keywords.  ``clock`` is a callable returning monotonic seconds
    (default: ``time.monotonic``, looked up at each call so freezegun works).
    ``store`` shares the breaker's state with other processes (see
    :mod:`cbsync.stores`).

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

    __slots__ = ("_link",)

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
        self._build(name, config, clock, listeners, store, config_fields)
        deliver(self._listeners, (Attached(self),))

    def _build(
        self,
        name: str,
        config: Optional[CircuitBreakerConfig],
        clock: Optional[Callable[[], float]],
        listeners: Iterable[Listener],
        store: object,
        config_fields: Dict[str, Any],
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
            check_listener(listener)
        self._setup(name, config, clock)
        self._use_listeners(listeners)
        #: The view a store and the health checks get of this breaker.
        self._link = Link(self)
        if store is not None:
            self._binding = bind_store(store, self._link)

    # -- public API --------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name, as shown in errors, logs and metrics."""
        return self._name

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._current.state

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds until an OPEN breaker admits a trial call, else ``None``."""
        return self._current.retry_after(self._now())

    def call(self, func: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run ``func(*args, **kwargs)`` through the breaker.

        Returns its result and re-raises its exception unchanged; raises
        :class:`CircuitOpenError` without calling it when the circuit rejects
        the call.
        """
        # acquire() without a Permit object: the same admission, outcomes
        # and lock-free success path, at less cost per call.
        admitted: Admitted = self._current  # type: ignore[assignment]
        if admitted.free:
            self._count_admitted()
        else:
            admitted = self._admit(admitted)
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
        return cast(F, BreakerFunctionWrapper(func, self))

    def acquire(self) -> Permit:
        """Admit one call: a :class:`Permit` to give exactly one outcome, or
        :class:`CircuitOpenError` (:class:`HalfOpenLimitReached` in HALF_OPEN
        with every trial slot taken) -- for code that talks to a dependency
        itself (an integration; see "writing your own integration" in the
        documentation).

        The permit records the time; its outcome (``success()``,
        ``failure()``, ``ignore()``, ``outcome(exc)``, ``result(value)`` or
        ``release()``) ends the call.  As a context manager it classifies the
        exception leaving the block::

            with breaker.acquire():
                reply = client.request(...)
        """
        return Permit(self, self._admit())

    def rejection(self) -> Optional[CircuitOpenError]:
        """The :class:`CircuitOpenError` :meth:`acquire` would raise now, or
        ``None`` if it would admit a call.

        Takes no permit, counts nothing and changes no state -- the same
        decision :meth:`acquire` makes, read without the lock, so a HALF_OPEN
        answer may be stale by one trial call.  For gating something that is
        not itself a call (a pool checkout); raise the error through
        :meth:`record_rejection` to count it as a rejection.
        """
        return self._current.rejection(self._name, self._now(), self._config)

    def record_rejection(self, error: CircuitOpenError) -> CircuitOpenError:
        """Count ``error`` (from :meth:`rejection`, maybe re-wrapped by an
        integration) as a rejected call, tell the listeners, and return it
        for the caller to raise."""
        if not isinstance(error, CircuitOpenError):
            raise TypeError("record_rejection() takes a CircuitOpenError, not {!r}".format(error))
        return self._reject(error)

    def classify(self, exc: BaseException) -> Outcome:
        """How an exception raised by a protected call counts: ``IGNORED`` if
        it matches ``ignore``, ``FAILURE`` if it matches ``failure_on``, else
        ``SUCCESS`` (the dependency answered)."""
        return self._classify(exc)

    def guard(self) -> "_Guard":
        """A context manager protecting a block of code.

        An exception leaving the block is classified like one raised by the
        function given to :meth:`call`; :class:`CircuitOpenError` is raised on
        entry when the circuit rejects the block.  (:func:`cbsync.guard`, by
        contrast, protects an *object*: it returns a proxy whose method calls
        go through a breaker.)
        """
        return _Guard(self)

    def trip(self, reason: str = "manual") -> None:
        """Force the circuit open: reject everything until :meth:`reset`.

        With a shared store, :meth:`trip` and :meth:`reset` act on the whole fleet.
        """
        self._force(ForcedOpen(TransitionReason("manual", reason)))

    def reset(self) -> None:
        """Close the circuit and clear the window, counters and backoff.

        With a shared store a reset closes the breaker in every process, except
        the reset of a DISABLED breaker: that one re-enables this process only,
        which then adopts the fleet's state at its next sync (if the fleet is
        OPEN, this breaker opens again).
        """
        self._reset()

    def disable(self) -> None:
        """Let every call through and never open; outcomes are still measured.

        With a shared store it stays local to this process, which ignores the
        fleet's state until :meth:`reset` (which rejoins the fleet's state
        rather than closing it everywhere) or :meth:`trip`.
        """
        self._force(Disabled())

    def snapshot(self) -> MetricsSnapshot:
        """A frozen :class:`MetricsSnapshot` of the breaker's metrics."""
        with self._lock:
            now = self._now()
            self._fold_pending()
            self._release_orphans()
            calls, failures, slow = self._window.counts(now)
            self._refresh_fast()
            judged = self._successes + self._failures
            allowed = self._admitted.value()
            rejected = self._rejected.value()
            lifetime = self._lifetime(allowed, rejected)
            # Positional: a NamedTuple built from keywords costs twice as much,
            # and readers snapshot every breaker at every scrape.
            return MetricsSnapshot(
                self._name,
                self._current.state,
                allowed,
                rejected,
                self._successes,
                self._failures,
                self._ignored,
                self._slow_calls,
                self._consecutive,
                calls,
                failures / calls if calls else None,
                slow / calls if calls and self._config.slow_call_duration is not None else None,
                self._successes / judged if judged else None,
                self._histogram.average(),
                self._histogram.percentile(0.99),
                tuple(self._transitions),
                self._dropped.value(),
                self._transition_view,
                lifetime.latency_histogram if self._retired is None else self._histogram.buckets(),
                self._histogram.total,
                self._resets,
                lifetime,
            )

    @property
    def listeners(self) -> Tuple[Listener, ...]:
        """The listeners, in the order they were added."""
        return cast(Tuple[Listener, ...], self._listeners)

    def add_listener(self, listener: Listener) -> None:
        """Add ``listener``; adding one already present does nothing."""
        check_listener(listener)
        with self._lock:
            if listener in self._listeners:
                return
            self._use_listeners((*self.listeners, listener))
        deliver((listener,), (Attached(self),))

    def remove_listener(self, listener: Listener) -> None:
        """Remove ``listener``; raises ``ValueError`` if it was never added."""
        with self._lock:
            if listener not in self._listeners:
                raise ValueError("{!r} is not a listener of {!r}".format(listener, self))
            self._use_listeners(tuple(item for item in self.listeners if item is not listener))

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
            self._link,
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

    def _use_listeners(self, listeners: Tuple[Listener, ...]) -> None:
        self._listeners = listeners
        self._success_listeners = tuple(
            listener
            for listener in listeners
            if getattr(type(listener), "on_success", None) is not Listener.on_success
        )


def unannounced(
    name: str,
    config: CircuitBreakerConfig,
    *,
    clock: Optional[Callable[[], float]],
    store: object,
    listeners: Tuple[Listener, ...],
) -> CircuitBreaker:
    """A breaker whose listeners are set but not yet told ``on_attach``.

    For :class:`~cbsync.Registry`: it builds a breaker with its listeners
    (so no event of a call made through it is lost), publishes it, and only
    then delivers ``on_attach`` (:func:`announce`), outside its lock -- and
    never for a breaker it dropped because another thread published first.
    """
    breaker = CircuitBreaker.__new__(CircuitBreaker)
    breaker._build(name, config, clock, listeners, store, {})
    return breaker


def announce(breaker: CircuitBreaker, listeners: Iterable[Listener]) -> None:
    """Tell ``listeners`` they were attached to ``breaker`` (see :func:`unannounced`)."""
    deliver(tuple(listeners), (Attached(breaker),))


class _Guard:
    """``with breaker.guard():`` -- protected blocks.

    One guard object may be entered again, nested or from several threads at
    once (like a lock kept in a variable): each thread's entries are a stack
    of permits.
    """

    __slots__ = ("_breaker", "_entries")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._entries: Dict[int, List[Permit]] = {}

    def __enter__(self) -> CircuitBreaker:
        permit = self._breaker.acquire()
        self._entries.setdefault(threading.get_ident(), []).append(permit)
        return self._breaker

    def __exit__(self, exc_type: object, exc: Optional[BaseException], tb: object) -> None:
        ident = threading.get_ident()
        stack = self._entries[ident]
        permit = stack.pop()
        if not stack:
            del self._entries[ident]
        permit.__exit__(exc_type, exc, tb)
