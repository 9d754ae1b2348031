"""pybreaker's API on cbsync's engine: migrate by changing one import.

>>> import cbsync.compat.pybreaker as pybreaker
>>> db_breaker = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60)
>>> @db_breaker
... def update_customer(cust):
...     raise IOError("database down")
>>> try:
...     update_customer("alice")
... except IOError:
...     pass
>>> db_breaker.fail_counter, db_breaker.current_state
(1, 'closed')
>>> update_customer("alice")
Traceback (most recent call last):
...
cbsync.compat.pybreaker.CircuitBreakerError: Failures threshold reached, circuit breaker opened
>>> db_breaker.current_state
'open'

Everything pybreaker 1.x documents is here -- ``CircuitBreaker`` with
``call()``, ``calling()``, the decorator (functions, methods, generator
functions), ``open()``/``close()``/``half_open()``, ``current_state``,
``fail_counter``, ``success_counter``, ``fail_max``/``reset_timeout``/
``success_threshold`` settable at run time, excluded exceptions and
predicates, listeners, ``name``; ``CircuitBreakerError``,
``CircuitBreakerListener``, ``CircuitMemoryStorage``,
``CircuitRedisStorage``, the state names and classes; all but Tornado's
``call_async()``, which raises ``NotImplementedError`` -- with pybreaker's
semantics: consecutive failures open the circuit, an excluded exception
counts as a success, one trial call at a time in HALF_OPEN, a fixed
``reset_timeout``, and the call that trips the circuit raises
``CircuitBreakerError`` (unless ``throw_new_error_on_trip=False``).

What is cbsync's and not pybreaker's: no lock is held while your function
runs (pybreaker's serialises every caller of a breaker), a call arriving
while the trial call runs is rejected instead of waiting behind it,
``KeyboardInterrupt`` and other non-``Exception`` errors count as nothing,
a listener's exception never reaches the caller, and ``CircuitRedisStorage``
makes no Redis round trip for a CLOSED call.  docs/migrating.md lists every
difference.  Each breaker is a :class:`cbsync.CircuitBreaker` underneath
(``breaker.engine``): its snapshots, cbsync listeners (StatsD...) and health
checks work as for any other.
"""

import contextlib
import datetime
import importlib
import logging
import threading
import types
import weakref
from typing import (
    Any,
    Callable,
    Dict,
    Generator,
    Iterable,
    Iterator,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
    overload,
)

import cbsync
from cbsync import CircuitBreakerConfig, CircuitOpenError, ConfigError, State, TransitionReason
from cbsync._wrapper import BreakerFunctionWrapper
from cbsync.toolkit import parse_duration

from .. import _adjust

__all__ = [
    "STATE_CLOSED",
    "STATE_HALF_OPEN",
    "STATE_OPEN",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerListener",
    "CircuitBreakerState",
    "CircuitBreakerStorage",
    "CircuitClosedState",
    "CircuitHalfOpenState",
    "CircuitMemoryStorage",
    "CircuitOpenState",
    "CircuitRedisStorage",
]

logger = logging.getLogger("cbsync")

STATE_OPEN = "open"
STATE_CLOSED = "closed"
STATE_HALF_OPEN = "half-open"
_STATE_NAMES = (STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN)

#: pybreaker's name for each cbsync state.  FORCED_OPEN (``engine.trip()``)
#: reads as open and DISABLED (``engine.disable()``) as closed.
_NAMES: Dict[State, str] = {
    State.CLOSED: STATE_CLOSED,
    State.OPEN: STATE_OPEN,
    State.HALF_OPEN: STATE_HALF_OPEN,
    State.FORCED_OPEN: STATE_OPEN,
    State.DISABLED: STATE_CLOSED,
}

#: ``reset_timeout=0`` (a trial call at the next call, as in pybreaker): cbsync
#: durations are positive, and this one vanishes when added to any clock
#: reading, so the OPEN period ends where it starts.
_NO_WAIT = 2.2250738585072014e-308

_GENERATOR = types.GeneratorType

_REJECTED = "Timeout not elapsed yet, circuit breaker still open"
_TRIAL_BUSY = "Trial call in progress, circuit breaker half-open"
_FORCED = "Circuit breaker forced open"
_TRIPPED = "Failures threshold reached, circuit breaker opened"
_TRIAL_FAILED = "Trial call failed, circuit breaker opened"
_NO_ASYNC = (
    "cbsync.compat.pybreaker does not support call_async() or "
    "__pybreaker_call_async=True: they run Tornado coroutines and return Tornado "
    "futures, and cbsync is a synchronous breaker that drives no event loop; "
    "protect the blocking call with call() or the decorator instead, or keep "
    "pybreaker for that code"
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
#: An ``exclude`` entry: an exception type, or a predicate ``exc -> bool``.
Exclusion = Union[Type[BaseException], Callable[[BaseException], bool]]


class CircuitBreakerError(cbsync.CircuitBreakerError):
    """Raised instead of calling the function when the circuit rejects the
    call, and -- with ``throw_new_error_on_trip=True`` -- by the failing call
    that opens the circuit (its own exception is the ``__cause__``).

    A rejection's ``__cause__`` is the :class:`cbsync.CircuitOpenError`
    behind it, which carries ``retry_after``.  Also a
    :class:`cbsync.CircuitBreakerError`, so ``except cbsync.CircuitBreakerError``
    catches it too.
    """


class CircuitBreakerListener:
    """Base class of pybreaker listeners: override the methods you need.

    They run in the calling thread, never under a lock; an exception raised
    by one is logged on logger ``cbsync`` and never reaches the caller.
    """

    def before_call(
        self, cb: "CircuitBreaker", func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        """``cb`` admitted a call and is about to call ``func(*args, **kwargs)``
        (for a ``calling()`` block, ``func`` stands for the block)."""

    def failure(self, cb: "CircuitBreaker", exc: BaseException) -> None:
        """A call through ``cb`` raised ``exc``, a failure (not excluded)."""

    def success(self, cb: "CircuitBreaker") -> None:
        """A call through ``cb`` succeeded (or raised an excluded exception)."""

    def state_change(
        self,
        cb: "CircuitBreaker",
        old_state: "Optional[CircuitBreakerState]",
        new_state: "CircuitBreakerState",
    ) -> None:
        """``cb`` moved from ``old_state`` to ``new_state``."""


class CircuitBreakerState:
    """A state of a breaker, as ``breaker.state`` and listeners see it:
    ``name`` is ``"closed"``, ``"open"`` or ``"half-open"``."""

    __slots__ = ()
    name = ""

    def __repr__(self) -> str:
        return "<{} {!r}>".format(type(self).__name__, self.name)


class CircuitClosedState(CircuitBreakerState):
    """Calls run as usual; consecutive failures reaching ``fail_max`` open the circuit."""

    __slots__ = ()
    name = STATE_CLOSED


class CircuitOpenState(CircuitBreakerState):
    """Calls fail at once with :class:`CircuitBreakerError` until
    ``reset_timeout`` has passed; the next call is then a trial call."""

    __slots__ = ()
    name = STATE_OPEN


class CircuitHalfOpenState(CircuitBreakerState):
    """One trial call at a time: ``success_threshold`` successes close the
    circuit, a failure opens it again."""

    __slots__ = ()
    name = STATE_HALF_OPEN


_STATES: Dict[str, CircuitBreakerState] = {
    STATE_CLOSED: CircuitClosedState(),
    STATE_OPEN: CircuitOpenState(),
    STATE_HALF_OPEN: CircuitHalfOpenState(),
}


def _state_name(state: object, field: str) -> str:
    if state not in _STATE_NAMES:
        raise ConfigError(
            "{}={!r} is not a circuit state: use {}".format(
                field, state, ", ".join(repr(name) for name in _STATE_NAMES)
            )
        )
    return state


class CircuitBreakerStorage:
    """Where a breaker's state lives: :class:`CircuitMemoryStorage` (this
    process) or :class:`CircuitRedisStorage` (shared through Redis).

    In pybreaker a storage is called on every call; here it only says where
    the state lives, and cbsync's engine keeps it.  Its ``state``,
    ``counter``, ``success_counter`` and ``opened_at`` read the breaker it
    belongs to; one storage belongs to one breaker.  Other storages
    (subclasses of this class) are not supported: write a cbsync store
    instead (:mod:`cbsync.stores`).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._initial = STATE_CLOSED
        self._owner: Optional[weakref.ReferenceType[CircuitBreaker]] = None

    @property
    def name(self) -> str:
        """``"memory"`` or ``"redis"``."""
        return self._name

    @property
    def state(self) -> str:
        """The breaker's ``current_state`` (the initial state before a breaker uses it)."""
        breaker = self._breaker()
        return self._initial if breaker is None else breaker.current_state

    @property
    def counter(self) -> int:
        """The breaker's ``fail_counter``."""
        breaker = self._breaker()
        return 0 if breaker is None else breaker.fail_counter

    @property
    def success_counter(self) -> int:
        """The breaker's ``success_counter``."""
        breaker = self._breaker()
        return 0 if breaker is None else breaker.success_counter

    @property
    def opened_at(self) -> Optional[datetime.datetime]:
        """When the breaker last opened (UTC), or ``None`` if it never did."""
        owner = self._breaker()
        return None if owner is None else owner._opened_at

    def _breaker(self) -> "Optional[CircuitBreaker]":
        return None if self._owner is None else self._owner()

    def _claim(self, breaker: "CircuitBreaker") -> None:
        owner = self._breaker()
        if owner is not None:
            raise ConfigError(
                "state_storage={!r} already belongs to {!r}: give each breaker its own "
                "storage (breakers share state through CircuitRedisStorage with the "
                "same namespace)".format(self, owner)
            )
        self._owner = weakref.ref(breaker)

    def _engine_name(self, name: Optional[str]) -> str:
        return name or "pybreaker"

    def _store(self) -> object:
        return None

    def __repr__(self) -> str:
        return "<{} {}>".format(type(self).__name__, self.state)


class CircuitMemoryStorage(CircuitBreakerStorage):
    """The breaker's state lives in this process; ``state`` is the initial one
    (``STATE_CLOSED``, ``STATE_OPEN`` -- open for one ``reset_timeout`` --
    or ``STATE_HALF_OPEN``)."""

    def __init__(self, state: str) -> None:
        super().__init__("memory")
        self._initial = _state_name(state, "state")


class CircuitRedisStorage(CircuitBreakerStorage):
    """The breaker's state is shared, through Redis, by every breaker with a
    ``CircuitRedisStorage`` of the same ``namespace`` on the same database --
    in this process and in every other.

    Backed by :class:`cbsync.integrations.redis.RedisStore`: a CLOSED call
    makes no Redis round trip (counts are flushed every ``sync_interval``
    seconds, a cbsync keyword), transitions are atomic, trial calls are
    fleet-wide, and a Redis outage never reaches a caller (breakers decide on
    their own state meanwhile).  Keys live under ``<namespace>:pybreaker:``
    (``pybreaker:`` without a namespace) and expire when unused.

    ``state`` is the state of a breaker the fleet has never moved (pybreaker:
    of keys that do not exist yet).  ``fallback_circuit_state`` must be
    ``"closed"``: during an outage breakers go on with their own state, which
    is what a closed fallback allows and more (they still open on their own
    failures); rejecting every call while Redis is unreachable is not
    supported.  ``cluster_mode=True`` is not supported either: cbsync's
    Redis store needs one Redis server (or a primary), not Redis Cluster.
    ``redis_object`` is a ``redis.Redis`` client (or a ``redis://`` URL);
    give the client short ``socket_timeout`` and ``socket_connect_timeout``.
    """

    def __init__(
        self,
        state: str,
        redis_object: Any,
        namespace: Optional[str] = None,
        fallback_circuit_state: str = STATE_CLOSED,
        cluster_mode: bool = False,
        *,
        sync_interval: Union[float, str, datetime.timedelta] = 0.25,
    ) -> None:
        super().__init__("redis")
        self._initial = _state_name(state, "state")
        if _state_name(fallback_circuit_state, "fallback_circuit_state") != STATE_CLOSED:
            raise ConfigError(
                "fallback_circuit_state={!r} is not supported: while Redis is "
                "unreachable cbsync breakers go on deciding on their own state (as a "
                "'closed' fallback, and they still open on their own failures); "
                "rejecting every call during an outage is not an option".format(
                    fallback_circuit_state
                )
            )
        if cluster_mode:
            raise ConfigError(
                "cluster_mode={!r} is not supported: cbsync's Redis store runs its "
                "scripts on one Redis server (or a primary with replicas), not on "
                "Redis Cluster".format(cluster_mode)
            )
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ConfigError(
                "namespace={!r} must be a non-empty string or None".format(namespace)
            )
        try:
            import redis

            # By name, as the CLI finds its integration commands: the core
            # never imports an integration at its top, nor statically.
            integration = importlib.import_module("cbsync.integrations.redis")
        except ImportError as exc:
            raise ImportError(
                "CircuitRedisStorage needs the redis package: pip install 'cbsync[redis]'"
            ) from exc
        if not isinstance(redis_object, (str, redis.Redis)):
            raise ConfigError(
                "redis_object={!r} must be a redis.Redis client or a redis:// URL "
                "(Redis Cluster clients are not supported)".format(redis_object)
            )
        self._namespace = namespace
        prefix = "{}:pybreaker:".format(namespace) if namespace else "pybreaker:"
        #: The :class:`cbsync.integrations.redis.RedisStore` the breaker is bound
        #: to (no I/O until the breaker is used).  Typed ``Any``: the type checker
        #: of a source checkout does not see the integrations as cbsync's.
        self.store: Any = integration.RedisStore(
            redis_object, prefix=prefix, sync_interval=sync_interval
        )

    @property
    def namespace(self) -> Optional[str]:
        """The namespace breakers share their state under."""
        return self._namespace

    def close(self) -> None:
        """Stop the store's background thread (a cbsync addition); the breaker
        goes on with its own state."""
        self.store.close()

    def _engine_name(self, name: Optional[str]) -> str:
        # The fleet's breaker is the namespace's, whatever each process calls it.
        return self._namespace or "pybreaker"

    def _store(self) -> object:
        return self.store


def _count(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError("{}={!r} must be a whole number of at least 1".format(field, value))
    return value


def _timeout(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return _NO_WAIT
    return parse_duration("reset_timeout", value)


def _exclusion(item: object) -> Exclusion:
    if isinstance(item, type):
        if issubclass(item, BaseException):
            return item
    elif callable(item):
        return cast(Callable[[BaseException], bool], item)
    raise ConfigError(
        "excluded exception {!r} must be an exception type or a predicate exc -> bool".format(item)
    )


class _Exclusions:
    """The excluded exceptions, read without a lock by every failed call.

    Replaced whole (one tuple) when the list changes, so a reader sees the
    old list or the new one, never half of each.
    """

    __slots__ = ("_rule",)

    def __init__(self, items: Tuple[Exclusion, ...]) -> None:
        self.set(items)

    def set(self, items: Tuple[Exclusion, ...]) -> None:
        types_ = tuple(item for item in items if isinstance(item, type))
        predicates = tuple(item for item in items if not isinstance(item, type))
        self._rule: Tuple[Tuple[Type[BaseException], ...], Tuple[Callable[..., Any], ...]] = (
            types_,
            predicates,
        )

    def excluded(self, exc: BaseException) -> bool:
        types_, predicates = self._rule
        if isinstance(exc, types_):
            return True
        return any(predicate(exc) for predicate in predicates)

    def is_failure(self, exc: BaseException) -> bool:
        """cbsync's ``failure_on``: anything not excluded.  An excluded
        exception then counts as a success, as in pybreaker."""
        return not self.excluded(exc)


_LISTENER_METHODS = ("before_call", "success", "failure", "state_change")


def _overrides(listener: object, method: str) -> bool:
    """Whether ``listener`` has ``method``, other than a base class's no-op
    (this module's, or pybreaker's own for listeners written against it)."""
    if not callable(getattr(listener, method, None)):
        return False
    found = getattr(type(listener), method, None)
    return not (
        getattr(found, "__qualname__", "") == "CircuitBreakerListener." + method
        and getattr(found, "__module__", "") in (__name__, "pybreaker")
    )


def _check_listener(listener: object) -> None:
    if isinstance(listener, type):
        raise ConfigError("listener {!r} is a class: give an instance of it".format(listener))
    if isinstance(listener, cbsync.Listener) or not any(
        callable(getattr(listener, method, None)) for method in _LISTENER_METHODS
    ):
        raise ConfigError(
            "listener {!r} has none of before_call, success, failure, state_change: "
            "subclass cbsync.compat.pybreaker.CircuitBreakerListener (cbsync "
            "listeners go on breaker.engine.add_listener())".format(listener)
        )


def _safely(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        method(*args, **kwargs)
    except Exception:
        logger.exception(
            "cbsync.compat.pybreaker listener method %r raised; the call is not affected",
            method,
        )


class _Relay(cbsync.Listener):
    """Tells a breaker's pybreaker listeners of failures and state changes,
    and the breaker of the trip a failure causes (in the failing thread)."""

    def __init__(self, breaker: "CircuitBreaker") -> None:
        # Weak: the engine holds this relay, and must not keep its breaker alive.
        self._ref = weakref.ref(breaker)

    def on_failure(
        self, breaker: cbsync.CircuitBreaker, elapsed: float, exc: Optional[BaseException]
    ) -> None:
        owner = self._ref()
        if owner is not None and exc is not None:
            for method in owner._on_failure:
                _safely(method, owner, exc)

    def on_state_change(
        self, breaker: cbsync.CircuitBreaker, old: State, new: State, reason: TransitionReason
    ) -> None:
        owner = self._ref()
        if owner is None:
            return
        if new is State.OPEN:
            # Listeners run in the thread whose call made the transition: the
            # call that tripped the circuit reads this right after its outcome.
            owner._local.opened_from = old
        old_name, new_name = _NAMES[old], _NAMES[new]
        if new_name == STATE_OPEN and old_name != STATE_OPEN:
            owner._opened_at = datetime.datetime.now(datetime.timezone.utc)
        if old_name != new_name:
            for method in owner._on_state_change:
                _safely(method, owner, _STATES[old_name], _STATES[new_name])


class _SuccessRelay(cbsync.Listener):
    """Tells pybreaker listeners of successes.  Attached only while one of
    them listens to successes: a breaker whose listeners do not keeps
    cbsync's lock-free success path free of any listener call."""

    def __init__(self, breaker: "CircuitBreaker") -> None:
        self._ref = weakref.ref(breaker)

    def on_success(self, breaker: cbsync.CircuitBreaker, elapsed: float) -> None:
        owner = self._ref()
        if owner is not None:
            for method in owner._on_success:
                _safely(method, owner)


def _calling_block() -> None:
    """Stands for the block of a ``with breaker.calling():`` statement (the
    ``func`` that ``before_call`` listeners are given)."""


class CircuitBreaker:
    """pybreaker's ``CircuitBreaker``, on a :class:`cbsync.CircuitBreaker`.

    ``fail_max`` consecutive failures open the circuit; it rejects calls with
    :class:`CircuitBreakerError` for ``reset_timeout`` seconds, then admits
    one trial call at a time until ``success_threshold`` of them succeed
    (closed) or one fails (open again).  An exception that matches
    ``exclude`` (types, or predicates ``exc -> bool``) counts as a success.
    ``state_storage`` is a :class:`CircuitMemoryStorage` (the default) or a
    :class:`CircuitRedisStorage`.  ``name`` is shown in cbsync's logs; with
    a Redis storage the logs show the namespace, the breaker's fleet-wide
    identity.

    No lock is held while the protected function runs, so threads sharing a
    breaker run their calls at the same time.

    >>> import cbsync.compat.pybreaker as pybreaker
    >>> breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=30, name="payments")
    >>> breaker.call(len, "abc")
    3
    >>> breaker.open()
    True
    >>> breaker.call(len, "abc")
    Traceback (most recent call last):
    ...
    cbsync.compat.pybreaker.CircuitBreakerError: Timeout not elapsed yet, ...
    >>> breaker.close()
    >>> breaker.current_state
    'closed'
    """

    def __init__(
        self,
        fail_max: int = 5,
        reset_timeout: float = 60,
        success_threshold: int = 1,
        exclude: Optional[Iterable[Exclusion]] = None,
        listeners: Optional[Iterable[CircuitBreakerListener]] = None,
        state_storage: Optional[CircuitBreakerStorage] = None,
        name: Optional[str] = None,
        throw_new_error_on_trip: bool = True,
    ) -> None:
        #: Guards changes of settings, listeners and exclusions; never held during a call.
        self._lock = threading.Lock()
        self._fail_max = _count("fail_max", fail_max)
        self._success_threshold = _count("success_threshold", success_threshold)
        timeout = _timeout(reset_timeout)
        self._reset_timeout = reset_timeout
        self._name = self._checked_name(name)
        self._throw_new_error_on_trip = bool(throw_new_error_on_trip)
        excluded = tuple(_exclusion(item) for item in (exclude or ()))
        self._exclusions = _Exclusions(excluded)
        self._exclusion_order = excluded
        listeners = tuple(listeners or ())
        for listener in listeners:
            _check_listener(listener)
        storage = CircuitMemoryStorage(STATE_CLOSED) if state_storage is None else state_storage
        if not isinstance(storage, (CircuitMemoryStorage, CircuitRedisStorage)):
            raise ConfigError(
                "state_storage={!r} is not supported: use CircuitMemoryStorage or "
                "CircuitRedisStorage (to share state some other way, write a cbsync store: "
                "see cbsync.stores)".format(storage)
            )
        storage._claim(self)
        self._storage = storage
        self._opened_at: Optional[datetime.datetime] = None
        #: Per thread: the state a failure just opened the circuit from.
        self._local = threading.local()
        self._relay = _Relay(self)
        self._success_relay = _SuccessRelay(self)
        config = CircuitBreakerConfig(
            failure_threshold=self._fail_max,
            failure_rate_threshold=None,
            timeout=timeout,
            backoff_multiplier=1.0,
            success_threshold=self._success_threshold,
            half_open_max_calls=1,
            failure_on=self._exclusions.is_failure,
        )
        self._engine = cbsync.CircuitBreaker(
            storage._engine_name(self._name),
            config,
            store=storage._store(),
            listeners=(self._relay,),
        )
        if storage._initial == STATE_OPEN:
            _adjust.start_in(self._engine, State.OPEN, TransitionReason("manual", "initial state"))
            self._opened_at = datetime.datetime.now(datetime.timezone.utc)
        elif storage._initial == STATE_HALF_OPEN:
            _adjust.start_in(
                self._engine, State.HALF_OPEN, TransitionReason("manual", "initial state")
            )
        self._listeners: Tuple[Any, ...] = ()
        self._before: Tuple[Callable[..., Any], ...] = ()
        self._on_success: Tuple[Callable[..., Any], ...] = ()
        self._on_failure: Tuple[Callable[..., Any], ...] = ()
        self._on_state_change: Tuple[Callable[..., Any], ...] = ()
        with self._lock:
            self._use_listeners(listeners)

    # -- calls ------------------------------------------------------------------

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func(*args, **kwargs)`` through the breaker and return its result.

        Raises :class:`CircuitBreakerError` without calling it when the
        circuit is open (or half-open with its trial call running).  The
        function's own exception is re-raised unchanged -- except by the
        failure that opens the circuit, which raises
        :class:`CircuitBreakerError` when ``throw_new_error_on_trip`` is set.
        A generator function's generator is guarded until it is exhausted.
        """
        permit = self._admit(func, args, kwargs)
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            self._failed(permit, exc)
            raise
        except BaseException:
            permit.release()
            raise
        if type(result) is _GENERATOR:
            generator = cast(Generator[Any, Any, Any], result)
            return cast(T, _GuardedGenerator(self, permit, generator))
        permit.success()
        return result

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Protect the block of a ``with`` statement as :meth:`call` protects a function.

        >>> import cbsync.compat.pybreaker as pybreaker
        >>> breaker = pybreaker.CircuitBreaker()
        >>> with breaker.calling():
        ...     pass  # talk to the dependency
        """
        permit = self._admit(_calling_block, (), {})
        try:
            yield
        except Exception as exc:
            self._failed(permit, exc)
            raise
        except BaseException:
            permit.release()
            raise
        permit.success()

    def call_async(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Not supported: raises ``NotImplementedError`` (pybreaker runs a
        Tornado coroutine here; cbsync is a synchronous breaker)."""
        raise NotImplementedError(_NO_ASYNC)

    @overload
    def __call__(self, func: F) -> F: ...

    @overload
    def __call__(self, **options: Any) -> Callable[[F], F]: ...

    def __call__(self, *call_args: Any, **call_kwargs: Any) -> Any:
        """Decorate a function, method or generator function: ``@breaker`` or ``@breaker()``.

        Every call of the decorated function goes through :meth:`call`; it
        keeps its name, docstring and signature, and binds as a method,
        classmethod or staticmethod would.  ``@breaker(__pybreaker_call_async=True)``
        (Tornado coroutines) raises ``NotImplementedError``.
        """
        if call_kwargs.pop("__pybreaker_call_async", False):
            raise NotImplementedError(_NO_ASYNC)
        if call_kwargs:
            raise TypeError(
                "{!r} takes no options (got {})".format(self, ", ".join(sorted(call_kwargs)))
            )
        if not call_args:
            return self._decorate
        if len(call_args) > 1:
            raise TypeError("@breaker decorates one function, got {!r}".format(call_args))
        return self._decorate(call_args[0])

    def _decorate(self, func: F) -> F:
        candidate: object = func
        if not callable(candidate) and not isinstance(candidate, (classmethod, staticmethod)):
            raise TypeError("@breaker needs a callable, got {!r}".format(func))
        return cast(F, BreakerFunctionWrapper(func, self))

    def _admit(
        self, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> cbsync.Permit:
        """A permit for a call of ``func``, the ``before_call`` listeners told;
        or :class:`CircuitBreakerError` when the circuit rejects the call."""
        try:
            permit = self._engine.acquire()
        except CircuitOpenError as error:
            raise CircuitBreakerError(_rejection_message(error)) from error
        if self._before:
            self._before_call(permit, func, args, kwargs)
        return permit

    def _before_call(
        self,
        permit: cbsync.Permit,
        func: Callable[..., Any],
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
    ) -> None:
        try:
            for method in self._before:
                _safely(method, self, func, *args, **kwargs)
        except BaseException:  # KeyboardInterrupt in a listener: no call, no outcome
            permit.release()
            raise

    def _failed(self, permit: cbsync.Permit, exc: Exception) -> None:
        """Record ``exc`` (excluded: a success); raise :class:`CircuitBreakerError`
        if this very failure opened the circuit and the breaker says so."""
        local = self._local
        local.opened_from = None
        permit.outcome(exc)
        opened_from = local.opened_from
        if opened_from is not None:
            local.opened_from = None
            if self._throw_new_error_on_trip:
                message = _TRIAL_FAILED if opened_from is State.HALF_OPEN else _TRIPPED
                raise CircuitBreakerError(message) from exc

    # -- state --------------------------------------------------------------------

    @property
    def current_state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``.

        An OPEN breaker whose ``reset_timeout`` has passed is still
        ``"open"``: its next call moves it to ``"half-open"``.
        """
        return _NAMES[self._engine.state]

    @property
    def state(self) -> CircuitBreakerState:
        """The current state as an object: a :class:`CircuitClosedState`,
        :class:`CircuitOpenState` or :class:`CircuitHalfOpenState`, whose
        ``name`` is :attr:`current_state`.  Assigning a state name moves the
        breaker there as :meth:`close`, :meth:`open` or :meth:`half_open` do."""
        return _STATES[self.current_state]

    @state.setter
    def state(self, state: str) -> None:
        name = _state_name(state, "state")
        if name == STATE_OPEN:
            self.open()
        elif name == STATE_HALF_OPEN:
            self.half_open()
        else:
            self.close()

    def open(self) -> bool:
        """Open the circuit for ``reset_timeout`` seconds (from now, also if it
        was open); then a trial call is admitted.  Returns
        ``throw_new_error_on_trip``, as pybreaker does."""
        _adjust.open_for_period(self._engine, TransitionReason("manual", "open()"))
        self._opened_at = datetime.datetime.now(datetime.timezone.utc)
        return self._throw_new_error_on_trip

    def half_open(self) -> None:
        """Move to half-open: the next call is a trial call."""
        _adjust.half_open(self._engine, TransitionReason("manual", "half_open()"))

    def close(self) -> None:
        """Close the circuit and clear the failure and success counts."""
        self._engine.reset()

    @property
    def fail_counter(self) -> int:
        """Consecutive failures so far (0 after a success, and when the circuit closes).

        With a :class:`CircuitRedisStorage` this is this process's streak; the
        fleet's, kept in Redis, is what opens the circuit.
        """
        return _adjust.consecutive_failures(self._engine)

    @property
    def success_counter(self) -> int:
        """Successful trial calls since the circuit became half-open; 0 otherwise."""
        return _adjust.trial_successes(self._engine)

    @property
    def engine(self) -> cbsync.CircuitBreaker:
        """The :class:`cbsync.CircuitBreaker` doing the work (a cbsync addition):
        ``snapshot()``, cbsync listeners such as StatsD's, health checks."""
        return self._engine

    # -- settings -----------------------------------------------------------------

    @property
    def fail_max(self) -> int:
        """Consecutive failures that open the circuit; may be set at any time."""
        return self._fail_max

    @fail_max.setter
    def fail_max(self, number: int) -> None:
        self._change("_fail_max", number, failure_threshold=_count("fail_max", number))

    @property
    def reset_timeout(self) -> float:
        """Seconds the circuit stays open before a trial call; may be set at any
        time, and a change applies to the current open period too."""
        return self._reset_timeout

    @reset_timeout.setter
    def reset_timeout(self, timeout: float) -> None:
        self._change("_reset_timeout", timeout, timeout=_timeout(timeout))

    @property
    def success_threshold(self) -> int:
        """Successful trial calls that close a half-open circuit; may be set at any time."""
        return self._success_threshold

    @success_threshold.setter
    def success_threshold(self, threshold: int) -> None:
        self._change(
            "_success_threshold",
            threshold,
            success_threshold=_count("success_threshold", threshold),
        )

    def _change(self, attribute: str, value: object, **config: Any) -> None:
        """Keep ``value`` as ``attribute`` and give the engine the configuration
        with ``config`` changed (see ``cbsync._adjust.replace_config``)."""
        with self._lock:
            _adjust.replace_config(self._engine, **config)
            setattr(self, attribute, value)

    @property
    def name(self) -> Optional[str]:
        """The breaker's name (``None`` unless given).  Changing it later does
        not rename it in cbsync's logs and metrics."""
        return self._name

    @name.setter
    def name(self, name: Optional[str]) -> None:
        self._name = self._checked_name(name)

    @staticmethod
    def _checked_name(name: object) -> Optional[str]:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError("name={!r} must be a non-empty string or None".format(name))
        return name

    # -- excluded exceptions -----------------------------------------------------

    @property
    def excluded_exceptions(self) -> Tuple[Exclusion, ...]:
        """The excluded exception types and predicates, in the order added."""
        return self._exclusion_order

    def add_excluded_exception(self, exception: Exclusion) -> None:
        """Exclude ``exception`` (a type, or a predicate ``exc -> bool``): a call
        raising it counts as a success."""
        self.add_excluded_exceptions(exception)

    def add_excluded_exceptions(self, *exceptions: Exclusion) -> None:
        """Exclude each of ``exceptions``."""
        checked = tuple(_exclusion(item) for item in exceptions)
        with self._lock:
            self._set_exclusions(self._exclusion_order + checked)

    def remove_excluded_exception(self, exception: Exclusion) -> None:
        """Stop excluding ``exception``; ``ValueError`` if it is not excluded."""
        with self._lock:
            self._set_exclusions(_without(self._exclusion_order, exception))

    def is_system_error(self, exception: BaseException) -> bool:
        """Whether ``exception`` counts as a failure (it is not excluded)."""
        return self._exclusions.is_failure(exception)

    def _set_exclusions(self, items: Tuple[Exclusion, ...]) -> None:
        self._exclusion_order = items
        self._exclusions.set(items)

    # -- listeners -----------------------------------------------------------------

    @property
    def listeners(self) -> Tuple[CircuitBreakerListener, ...]:
        """The listeners, in the order added."""
        return cast(Tuple[CircuitBreakerListener, ...], self._listeners)

    def add_listener(self, listener: CircuitBreakerListener) -> None:
        """Add ``listener``."""
        self.add_listeners(listener)

    def add_listeners(self, *listeners: CircuitBreakerListener) -> None:
        """Add each of ``listeners``."""
        for listener in listeners:
            _check_listener(listener)
        with self._lock:
            self._use_listeners(self._listeners + listeners)

    def remove_listener(self, listener: CircuitBreakerListener) -> None:
        """Remove ``listener``; ``ValueError`` if it was not added."""
        with self._lock:
            self._use_listeners(_without(self._listeners, listener))

    def _use_listeners(self, listeners: Tuple[Any, ...]) -> None:
        """Install ``listeners`` (lock held): each event's methods as one
        tuple, read without a lock by the calls and the relays."""
        had_success = bool(self._on_success)
        self._listeners = listeners
        self._before = _methods(listeners, "before_call")
        self._on_success = _methods(listeners, "success")
        self._on_failure = _methods(listeners, "failure")
        self._on_state_change = _methods(listeners, "state_change")
        if self._on_success and not had_success:
            self._engine.add_listener(self._success_relay)
        elif had_success and not self._on_success:
            self._engine.remove_listener(self._success_relay)

    def __repr__(self) -> str:
        return "<cbsync.compat.pybreaker.CircuitBreaker {!r} {}>".format(
            self._name, self.current_state
        )


def _without(items: Tuple[T, ...], item: T) -> Tuple[T, ...]:
    """``items`` without the first one equal to ``item``; ``ValueError`` if
    there is none (as ``list.remove``, which pybreaker uses)."""
    remaining = list(items)
    remaining.remove(item)
    return tuple(remaining)


def _methods(listeners: Tuple[Any, ...], method: str) -> Tuple[Callable[..., Any], ...]:
    return tuple(
        getattr(listener, method) for listener in listeners if _overrides(listener, method)
    )


def _rejection_message(error: CircuitOpenError) -> str:
    if error.state is State.HALF_OPEN:
        return _TRIAL_BUSY
    if error.state is State.FORCED_OPEN:
        return _FORCED
    return _REJECTED


class _GuardedGenerator(Generator[Any, Any, Any]):
    """The generator of a protected generator function: the call it stands
    for ends when the generator does -- a success when it is exhausted, its
    exception's outcome when it raises -- and counts nothing if it is closed
    (or dropped) before that."""

    __slots__ = ("_generator", "_owner", "_permit")

    def __init__(
        self,
        owner: CircuitBreaker,
        permit: cbsync.Permit,
        generator: Generator[Any, Any, Any],
    ) -> None:
        self._owner = owner
        self._permit = permit
        self._generator = generator

    def send(self, value: Any) -> Any:
        return self._step(self._generator.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._step(self._generator.throw, typ)
        return self._step(self._generator.throw, typ, val, tb)

    def close(self) -> None:
        try:
            self._generator.close()
        finally:
            if not self._permit.done:
                self._permit.release()

    def _step(self, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return method(*args)
        except StopIteration:
            if not self._permit.done:
                self._permit.success()
            raise
        except Exception as exc:
            if not self._permit.done:
                self._owner._failed(self._permit, exc)
            raise
        except BaseException:
            if not self._permit.done:
                self._permit.release()
            raise

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            logger.exception("cbsync.compat.pybreaker: closing a dropped generator raised")

    def __repr__(self) -> str:
        return "<guarded {!r}>".format(self._generator)
