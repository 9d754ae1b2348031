"""Protecting code without editing it: ``circuit()``, ``patch()`` and ``guard()``.

* ``@circuit(...)`` decorates a function with a breaker taken from a registry.
* ``patch("module:attr.path")`` wraps code the user does not own, by name,
  now or when its module is imported (wrapt post-import hooks).
* ``guard(obj, breaker)`` returns a proxy whose public method calls go
  through a breaker.

``circuit()`` and ``patch()`` without an explicit registry look the process
default registry up at each call (see ``_registry``), so installing another
default -- as the pytest fixture ``breaker_registry`` does -- takes effect
for code decorated or patched long before.
"""

import inspect
import logging
import sys
import threading
import types
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    Optional,
    Tuple,
    TypeVar,
    Union,
    cast,
)

import wrapt

from ._breaker import CircuitBreaker
from ._config import did_you_mean
from ._errors import CircuitOpenError, ConfigError
from ._events import Outcome
from ._health import HealthCheckHandle
from ._registry import Registry, declare, default_registry, normalize_settings

F = TypeVar("F", bound=Callable[..., Any])

# Typed as Any on purpose: wrapt 1.x ships no types and wrapt 2.x makes these
# classes generic, so a plain subclass type-checks differently with each.
_FunctionWrapper: Any = wrapt.FunctionWrapper
_BoundFunctionWrapper: Any = wrapt.BoundFunctionWrapper
_ObjectProxy: Any = wrapt.ObjectProxy

logger = logging.getLogger("cbsync")

Fallback = Callable[..., Any]


def _check_fallback(fallback: Optional[Fallback], where: str) -> None:
    if fallback is not None and not callable(fallback):
        raise ConfigError("{}: fallback={!r} must be callable".format(where, fallback))


def _check_registry(registry: Optional[Registry], where: str) -> None:
    if registry is not None and not isinstance(registry, Registry):
        raise ConfigError("{}: registry={!r} must be a cbsync.Registry".format(where, registry))


def _protected_call(
    breaker: CircuitBreaker,
    wrapped: Callable[..., Any],
    instance: object,
    args: Tuple[Any, ...],
    kwargs: Dict[str, Any],
    fallback: Optional[Fallback],
    fallback_on_failure: bool,
) -> Any:
    """Call ``wrapped`` through ``breaker``, with the fallback if any.

    The fallback gets what the protected function gets: the instance (or the
    class, for a classmethod) first when there is one.
    """
    if fallback is None:
        return breaker.call(wrapped, *args, **kwargs)
    # A CircuitOpenError raised *inside* the function (by another, nested
    # breaker) must not be mistaken for this breaker's rejection.
    if not fallback_on_failure:
        entered = False

        def run() -> Any:
            nonlocal entered
            entered = True
            return wrapped(*args, **kwargs)

        try:
            return breaker.call(run)
        except CircuitOpenError:
            if entered:
                raise
            return _call_fallback(fallback, instance, args, kwargs)
    # Falling back on failure needs the outcome as the breaker recorded it:
    # the call is made here on a permit, whose outcome says how it counted.
    try:
        permit = breaker.acquire()
    except CircuitOpenError:
        return _call_fallback(fallback, instance, args, kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except Exception as exc:
        if permit.outcome(exc) is Outcome.FAILURE:
            return _call_fallback(fallback, instance, args, kwargs)
        raise
    except BaseException:
        permit.release()
        raise
    if permit.result(result) is Outcome.FAILURE:
        return _call_fallback(fallback, instance, args, kwargs)
    return result


def _call_fallback(
    fallback: Fallback, instance: object, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> Any:
    if instance is None:
        return fallback(*args, **kwargs)
    return fallback(instance, *args, **kwargs)


class _BreakerSource:
    """Finds the breaker of a decorated or patched function at call time.

    With no explicit registry the current default is used; the breaker found
    in a registry is remembered, as a registry never replaces a breaker.  The
    breaker is declared to the registry (see ``_registry.declare``), so that
    it can be looked up by name before the first call.
    """

    __slots__ = ("_cache", "name", "overrides", "profile", "registry")

    def __init__(
        self,
        name: str,
        profile: Optional[str],
        registry: Optional[Registry],
        overrides: Dict[str, Any],
    ) -> None:
        self.name = name
        self.profile = profile
        self.registry = registry
        self.overrides = overrides
        self._cache: Tuple[Optional[Registry], Optional[CircuitBreaker]] = (None, None)
        # Created at the first call; until then registry[name] finds it by this.
        declare(registry, name, profile, overrides)

    def get(self) -> CircuitBreaker:
        registry = self.registry if self.registry is not None else default_registry()
        cached_registry, breaker = self._cache
        if cached_registry is registry and breaker is not None:
            return breaker
        breaker = registry.get(self.name, self.profile, **self.overrides)
        self._cache = (registry, breaker)
        return breaker


def _qualified_name(func: object) -> str:
    # classmethod/staticmethod objects only gained __qualname__ in 3.10.
    target = getattr(func, "__func__", func)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if not qualname:
        raise ConfigError("cannot name a breaker for {!r}: give name= to circuit()".format(func))
    return "{}.{}".format(module, qualname) if module else str(qualname)


class _BoundCircuitWrapper(_BoundFunctionWrapper):  # type: ignore[misc]
    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker calls go through now (from the current registry)."""
        return cast(CircuitBreaker, self._self_parent._self_source.get())


class _CircuitWrapper(_FunctionWrapper):  # type: ignore[misc]
    """What ``@circuit()`` returns: wrapt binding, plus ``.breaker``."""

    __bound_function_wrapper__ = _BoundCircuitWrapper

    def __init__(
        self,
        wrapped: Any,
        source: _BreakerSource,
        fallback: Optional[Fallback],
        fallback_on_failure: bool,
    ) -> None:
        def wrapper(
            wrapped: Callable[..., Any],
            instance: object,
            args: Tuple[Any, ...],
            kwargs: Dict[str, Any],
        ) -> Any:
            return _protected_call(
                source.get(), wrapped, instance, args, kwargs, fallback, fallback_on_failure
            )

        super().__init__(wrapped, wrapper)
        self._self_source = source
        self._self_invoke = wrapper
        # A plain function called directly needs no binding; wrapt's own
        # __call__ would look __self__ up on it (and fail) at every call.
        self._self_direct = isinstance(wrapped, types.FunctionType)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._self_direct:
            return self._self_invoke(self.__wrapped__, None, args, kwargs)
        return super().__call__(*args, **kwargs)

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker calls go through now (from the current registry)."""
        return self._self_source.get()


def circuit(
    name: Optional[str] = None,
    profile: Optional[str] = None,
    registry: Optional[Registry] = None,
    fallback: Optional[Fallback] = None,
    fallback_on_failure: bool = False,
    **overrides: Any,
) -> Callable[[F], F]:
    """Protect a function with a breaker from a registry.

    ``name`` defaults to ``module.qualname``; the breaker is
    ``registry.get(name, profile, **overrides)``, the registry being
    ``cbsync.registry`` (looked up at each call) unless one is given.
    ``fallback``, called with the arguments the function receives (``self``
    or ``cls`` first for a method), provides the result when the call is
    rejected and, with ``fallback_on_failure=True``, when it fails (the
    failure is still recorded).  Works on functions, methods, classmethods
    and staticmethods; the breaker is reachable as ``func.breaker``.

    >>> import cbsync
    >>> registry = cbsync.Registry()
    >>> @cbsync.circuit(registry=registry, fallback=lambda currency: 1.0,
    ...                 fallback_on_failure=True, failure_threshold=2)
    ... def fetch_rate(currency):
    ...     raise IOError("rates service down")
    >>> fetch_rate("EUR"), fetch_rate("EUR"), fetch_rate("EUR")
    (1.0, 1.0, 1.0)
    >>> fetch_rate.breaker.state, fetch_rate.breaker.snapshot().failures
    (<State.OPEN: 'open'>, 2)
    """
    if callable(name):
        raise ConfigError(
            "circuit() makes a decorator: write @cbsync.circuit() with parentheses "
            "(got {!r} as the name)".format(name)
        )
    where = "circuit(name={!r})".format(name)
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError("{}: name must be a non-empty string".format(where))
    _check_fallback(fallback, where)
    _check_registry(registry, where)
    normalize_settings(overrides, where)  # unknown keys fail here, not at the first call

    def decorate(func: F) -> F:
        target: object = func  # typed callable, but legacy callers pass anything
        if not callable(target) and not isinstance(target, (classmethod, staticmethod)):
            raise ConfigError("{}: cannot decorate {!r}, not callable".format(where, target))
        source = _BreakerSource(
            name if name is not None else _qualified_name(func), profile, registry, overrides
        )
        return cast(F, _CircuitWrapper(func, source, fallback, fallback_on_failure))

    return decorate


# -- patch() -------------------------------------------------------------------


def _lookup(parent: object, attribute: str) -> Tuple[object, bool]:
    """``parent.attribute`` without binding it, and whether ``parent`` itself
    holds it (rather than a base class).  Raises ``AttributeError``."""
    if inspect.isclass(parent):
        for index, cls in enumerate(inspect.getmro(parent)):
            if attribute in vars(cls):
                return vars(cls)[attribute], index == 0
    value = getattr(parent, attribute)
    try:
        own = attribute in vars(parent)
    except TypeError:
        own = False
    return value, own


def _missing(target: str, owner: str, parent: object, attribute: str) -> ConfigError:
    hint = did_you_mean(attribute, (n for n in dir(parent) if not n.startswith("__")))
    return ConfigError(
        "cbsync.patch({!r}): {} has no attribute {!r}{}".format(target, owner, attribute, hint)
    )


class Patch:
    """A patch made by :func:`patch`; :meth:`undo` removes it."""

    def __init__(
        self,
        target: str,
        module: str,
        path: str,
        breaker: Union[CircuitBreaker, _BreakerSource],
        fallback: Optional[Fallback],
        fallback_on_failure: bool,
    ) -> None:
        self.target = target
        self._module = module
        self._path = path
        self._breaker = breaker
        self._fallback = fallback
        self._fallback_on_failure = fallback_on_failure
        self._lock = threading.Lock()
        self._undone = False
        self._applied: Optional[Tuple[object, str, object, bool, object]] = None

    @property
    def applied(self) -> bool:
        """Whether the wrapper is in place now (``False`` while its module is
        not imported yet, and after :meth:`undo`)."""
        return self._applied is not None

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker the patched calls go through (from the current registry)."""
        if isinstance(self._breaker, CircuitBreaker):
            return self._breaker
        return self._breaker.get()

    def _wrapper(
        self,
        wrapped: Callable[..., Any],
        instance: object,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
    ) -> Any:
        if self._undone:
            # undo() could not take the wrapper out (something was wrapped
            # over it); it now calls straight through.
            return wrapped(*args, **kwargs)
        return _protected_call(
            self.breaker,
            wrapped,
            instance,
            args,
            kwargs,
            self._fallback,
            self._fallback_on_failure,
        )

    def _apply(self, module: object) -> None:
        with self._lock:
            if self._undone or self._applied is not None:
                return
            parent: object = module
            owner = "module {!r}".format(self._module)
            parts = self._path.split(".")
            original: object = module
            own = False
            for index, attribute in enumerate(parts):
                parent = original
                try:
                    original, own = _lookup(parent, attribute)
                except AttributeError:
                    raise _missing(self.target, owner, parent, attribute) from None
                owner = repr(".".join([self._module, *parts[: index + 1]]))
            if not callable(original) and not isinstance(original, (classmethod, staticmethod)):
                raise ConfigError(
                    "cbsync.patch({!r}): {} is {!r}, not a function".format(
                        self.target, owner, original
                    )
                )
            wrapper = wrapt.wrap_function_wrapper(module, self._path, self._wrapper)
            self._applied = (parent, parts[-1], original, own, wrapper)

    def _apply_on_import(self, module: object) -> None:
        """wrapt's post-import hook: apply the patch, or log why it cannot be.

        It runs inside the user's own ``import`` statement: raising here would
        fail that import (and drop the module from ``sys.modules``) for a
        mistake in the patch, so the module is left importable and unpatched.
        """
        try:
            self._apply(module)
        except ConfigError as exc:
            logger.error("%s -- module %r was imported without this patch", exc, self._module)
        except Exception:
            logger.exception(
                "cbsync.patch(%r) failed -- module %r was imported without this patch",
                self.target,
                self._module,
            )

    def undo(self) -> None:
        """Restore the original exactly, or cancel the patch if its module is
        not imported yet.  Calling it again does nothing."""
        with self._lock:
            self._undone = True
            applied, self._applied = self._applied, None
        if applied is None:
            return
        parent, attribute, original, own, wrapper = applied
        try:
            current = vars(parent).get(attribute)
        except TypeError:
            current = getattr(parent, attribute, None)
        if current is not wrapper:
            logger.warning(
                "cbsync.patch(%r).undo(): %r was wrapped again after this patch; "
                "the patch now calls straight through instead of being removed",
                self.target,
                attribute,
            )
            return
        if own:
            setattr(parent, attribute, original)
        else:
            delattr(parent, attribute)

    def __repr__(self) -> str:
        state = "undone" if self._undone else "applied" if self.applied else "pending"
        return "<cbsync.Patch {!r} {}>".format(self.target, state)


def patch(
    target: str,
    breaker: Optional[CircuitBreaker] = None,
    *,
    name: Optional[str] = None,
    profile: Optional[str] = None,
    registry: Optional[Registry] = None,
    fallback: Optional[Fallback] = None,
    fallback_on_failure: bool = False,
    **overrides: Any,
) -> Patch:
    """Put a function you do not own behind a breaker, by name.

    ``target`` is ``"module:attribute.path"``, e.g.
    ``"legacy.billing:Client.charge"``.  Without ``breaker``, the breaker is
    ``registry.get(name, profile, **overrides)`` (looked up at each call; the
    name defaults to ``module.attribute.path``).  If the module is not
    imported yet the patch is applied when it is; ``patch`` never imports
    it.  Returns a :class:`Patch` whose ``undo()`` restores the original
    exactly.  ``fallback`` and ``fallback_on_failure`` work as in
    :func:`circuit`.

    A path that does not resolve to a function raises
    :class:`~cbsync.ConfigError` naming the missing part when the module is
    already imported.  When the patch is applied later, as the module is
    imported, the same error is logged at ERROR on logger ``cbsync`` instead
    of failing the import: the module imports unpatched and
    ``handle.applied`` stays ``False``.

    Code that copied the function before the patch (``from module import
    func`` run earlier) keeps calling the original.
    """
    where = "cbsync.patch({!r})".format(target)
    if not isinstance(target, str) or target.count(":") != 1:
        raise ConfigError(
            "{}: the target must look like 'package.module:attribute.path'".format(where)
        )
    module_name, path = (part.strip() for part in target.split(":"))
    if not module_name or not path or "" in path.split(".") or "" in module_name.split("."):
        raise ConfigError(
            "{}: the target must look like 'package.module:attribute.path'".format(where)
        )
    _check_fallback(fallback, where)
    _check_registry(registry, where)
    source: Union[CircuitBreaker, _BreakerSource]
    if breaker is not None:
        if not isinstance(breaker, CircuitBreaker):
            raise ConfigError("{}: breaker={!r} must be a CircuitBreaker".format(where, breaker))
        given = [
            "{}=".format(key)
            for key, value in (("name", name), ("profile", profile), ("registry", registry))
            if value is not None
        ] + ["{}=".format(key) for key in overrides]
        if given:
            raise ConfigError(
                "{}: give either breaker= or {}, not both".format(where, ", ".join(given))
            )
        source = breaker
    else:
        normalize_settings(overrides, where)
        source = _BreakerSource(
            name if name is not None else "{}.{}".format(module_name, path),
            profile,
            registry,
            overrides,
        )
    handle = Patch(target, module_name, path, source, fallback, fallback_on_failure)
    module = sys.modules.get(module_name)
    if module is not None:
        handle._apply(module)
    else:
        # Fires at once if another thread imported the module meanwhile
        # (a bad path is then logged, as for any import after patch()).
        wrapt.when_imported(module_name)(handle._apply_on_import)
    return handle


# -- guard() -------------------------------------------------------------------


_METHOD_TYPES = (
    types.MethodType,
    types.FunctionType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
)


class _Guarded(_ObjectProxy):  # type: ignore[misc]
    """The proxy returned by :func:`guard`."""

    def __init__(
        self,
        wrapped: object,
        breaker: CircuitBreaker,
        methods: Optional[Collection[str]],
        health: Optional[HealthCheckHandle],
    ) -> None:
        super().__init__(wrapped)
        self._self_breaker = breaker
        self._self_methods = None if methods is None else frozenset(methods)
        self._self_health = health

    @property
    def __cbsync_health_check__(self) -> Optional[HealthCheckHandle]:
        """The handle of the ``health_check=`` given to :func:`guard`, or ``None``.

        A dunder name, like wrapt's ``__wrapped__``, so that it shadows no
        attribute of the guarded object.
        """
        return self._self_health

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.__wrapped__, name)
        methods = self._self_methods
        if methods is None:
            protect = not name.startswith("_") and isinstance(value, _METHOD_TYPES)
        else:
            protect = name in methods and callable(value)
        if not protect:
            return value
        breaker = self._self_breaker

        def through(
            wrapped: Callable[..., Any],
            instance: object,
            args: Tuple[Any, ...],
            kwargs: Dict[str, Any],
        ) -> Any:
            return breaker.call(wrapped, *args, **kwargs)

        return wrapt.FunctionWrapper(value, through)

    def __repr__(self) -> str:
        return "<cbsync.guard of {!r} via {!r}>".format(self.__wrapped__, self._self_breaker)


def guard(
    obj: Any,
    breaker: CircuitBreaker,
    methods: Optional[Collection[str]] = None,
    health_check: Optional[Callable[[], object]] = None,
) -> Any:
    """A proxy of ``obj`` whose public method calls go through ``breaker``.

    Only the methods named in ``methods`` are protected when it is given.
    Attribute reads and writes pass through untouched.  ``health_check``, a
    callable, is registered with ``breaker.health_check()`` so that an OPEN
    breaker learns when the resource is back; the proxy's
    ``__cbsync_health_check__`` attribute holds its handle (``None`` without
    ``health_check``), whose ``stop()`` unregisters it.

    >>> import cbsync, sqlite3
    >>> breaker = cbsync.CircuitBreaker("local-db")
    >>> db = cbsync.guard(sqlite3.connect(":memory:"), breaker, methods=["execute"])
    >>> db.execute("select 1").fetchone()
    (1,)
    >>> breaker.snapshot().successes
    1
    >>> db.close()
    """
    if not isinstance(breaker, CircuitBreaker):
        raise ConfigError("guard(): breaker={!r} must be a CircuitBreaker".format(breaker))
    if methods is not None:
        if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
            raise ConfigError(
                "guard(): methods={!r} must be a collection of method names".format(methods)
            )
        for method in methods:
            if not callable(getattr(obj, method, None)):
                hint = did_you_mean(method, (n for n in dir(obj) if not n.startswith("__")))
                raise ConfigError("guard(): {!r} has no method {!r}{}".format(obj, method, hint))
    health: Optional[HealthCheckHandle] = None
    if health_check is not None:
        if not callable(health_check):
            raise ConfigError("guard(): health_check={!r} must be a callable".format(health_check))
        health = breaker.health_check(health_check)
    return _Guarded(obj, breaker, methods, health)
