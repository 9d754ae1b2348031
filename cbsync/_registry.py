"""``Registry``: named breakers built from configuration profiles.

A registry owns a set of *profiles* -- mappings of
:class:`~cbsync.CircuitBreakerConfig` fields -- and creates each named breaker
once.  The settings of a breaker are, from weakest to strongest: the built-in
defaults, the ``default`` profile, the profile named by ``profile=`` (or,
failing that, a profile named like the breaker), and keyword overrides.

There is one process-wide default registry, :func:`default_registry`.
Everything that takes ``registry=None`` (``@circuit``, ``patch()``, the
integrations) looks the default up each time it needs a breaker, never once
and for all, so that swapping it (as the pytest fixture ``breaker_registry``
does through :func:`set_default_registry`) takes effect for code decorated
long before.  ``cbsync.registry`` is a stable stand-in that delegates every
call to the current default, so ``from cbsync import registry`` never goes
stale.
"""

import threading
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
)

from ._breaker import CircuitBreaker, Listener, announce, check_listener, unannounced
from ._config import FIELD_NAMES, CircuitBreakerConfig, did_you_mean
from ._errors import ConfigError
from ._fork import ForkGuard
from ._metrics import MetricsSnapshot

#: The profile every breaker starts from.
DEFAULT_PROFILE = "default"
#: Accepted spellings of a field, mapped to the field (the seed's YAML uses them).
SYNONYMS: Dict[str, str] = {"window_duration": "failure_window"}

Settings = Dict[str, Any]


def normalize_settings(settings: Mapping[str, Any], where: str) -> Settings:
    """Check the keys of ``settings`` and resolve synonyms.

    ``where`` prefixes every error message (for example ``"profile 'database'"``).
    """
    if not isinstance(settings, Mapping):
        raise ConfigError(
            "{}: expected a mapping of settings, got {} {!r}".format(
                where, type(settings).__name__, settings
            )
        )
    result: Settings = {}
    for key, value in settings.items():
        if not isinstance(key, str):
            raise ConfigError(
                "{}: setting name {!r} (value {!r}) must be a string".format(where, key, value)
            )
        field = SYNONYMS.get(key, key)
        if field not in FIELD_NAMES:
            hint = did_you_mean(key, FIELD_NAMES + tuple(SYNONYMS))
            raise ConfigError(
                "{}: unknown setting {!r} (value {!r}){}".format(where, key, value, hint)
            )
        if field in result:
            spellings = sorted(k for k in settings if SYNONYMS.get(k, k) == field)
            raise ConfigError(
                "{}: {} are the same setting; give only one ({})".format(
                    where,
                    " and ".join(repr(k) for k in spellings),
                    ", ".join("{}={!r}".format(k, settings[k]) for k in spellings),
                )
            )
        result[field] = value
    return result


def build_config(settings: Settings, where: str) -> CircuitBreakerConfig:
    """``CircuitBreakerConfig(**settings)``, with ``where`` prefixed to any error."""
    try:
        return CircuitBreakerConfig(**settings)
    except ConfigError as exc:
        raise ConfigError("{}: {}".format(where, exc)) from exc


class _Entry(NamedTuple):
    breaker: CircuitBreaker
    profile: Optional[str]
    overrides: Settings


class _Declaration(NamedTuple):
    """How code that will use a breaker asks for it (``@circuit``, ``patch()``)."""

    profile: Optional[str]
    overrides: Settings


class Registry:
    """Named circuit breakers, created once from configuration profiles.

    ``profiles`` maps profile names to settings (fields of
    :class:`~cbsync.CircuitBreakerConfig`; ``window_duration`` is accepted for
    ``failure_window``).  Every breaker the registry creates gets its
    ``clock``, its ``store`` and its listeners (present and future).

    >>> import cbsync
    >>> registry = cbsync.Registry({
    ...     "default": {"failure_threshold": 5, "timeout": "30s"},
    ...     "database": {"failure_threshold": 3, "timeout": "10s"},
    ... })
    >>> db = registry.get("orders-db", profile="database")
    >>> db.config.failure_threshold, db.config.timeout
    (3, 10.0)
    >>> registry.get("orders-db", profile="database") is db
    True
    >>> registry["orders-db"] is registry.get("orders-db") is db
    True
    >>> registry.get("billing", failure_threshold=2).config.timeout
    30.0
    >>> "billing" in registry, len(registry)
    (True, 2)
    >>> registry["biling"]
    Traceback (most recent call last):
    ...
    KeyError: "no circuit breaker 'biling' in this registry; did you mean 'billing'?"
    """

    def __init__(
        self,
        profiles: Optional[Mapping[str, Mapping[str, Any]]] = None,
        *,
        store: object = None,
        listeners: Iterable[Listener] = (),
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        if clock is not None and not callable(clock):
            raise ConfigError("clock={!r} must be a callable returning seconds".format(clock))
        listeners = tuple(listeners)
        for listener in listeners:
            check_listener(listener)
        # Guards profiles, breakers and listeners.  Held only for bookkeeping:
        # no user code (a listener's on_attach, a store's bind) runs under it,
        # so such code may hand work to another thread that uses the registry.
        self._lock_obj = threading.RLock()
        self._fork = ForkGuard(self._after_fork)
        self._profiles: Dict[str, Settings] = {}
        self._breakers: Dict[str, _Entry] = {}
        #: Breakers that decorated or patched code will ask for (see declare()).
        self._declared: Dict[str, _Declaration] = {}
        self._listeners: Tuple[Listener, ...] = listeners
        self._store = store
        self._clock = clock
        if profiles is not None:
            self.configure(profiles)

    # -- profiles ------------------------------------------------------------

    def configure(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        """Add or replace profiles (a profile named again is replaced whole).

        Every profile is validated, overlaid on ``default``, before anything
        changes.  Raises :class:`~cbsync.ConfigError` for a bad setting, or
        when the change would alter the configuration of a breaker that
        already exists (configure before creating breakers).
        """
        if not isinstance(profiles, Mapping):
            raise ConfigError(
                "profiles must be a mapping of profile name to settings, got {} {!r}".format(
                    type(profiles).__name__, profiles
                )
            )
        if "circuit_breaker" in profiles and isinstance(profiles["circuit_breaker"], Mapping):
            raise ConfigError(
                "configure() takes profiles, not a whole configuration document (top key "
                "'circuit_breaker'): use cbsync.load_config(document) or "
                "configure(document['circuit_breaker'])"
            )
        new: Dict[str, Settings] = {}
        for profile, settings in profiles.items():
            if not isinstance(profile, str) or not profile:
                raise ConfigError("profile name {!r} must be a non-empty string".format(profile))
            new[profile] = normalize_settings(settings, "profile {!r}".format(profile))
        with self._lock:
            merged = dict(self._profiles)
            merged.update(new)
            default = merged.get(DEFAULT_PROFILE, {})
            build_config(default, "profile {!r}".format(DEFAULT_PROFILE))
            for profile, settings in merged.items():
                if profile != DEFAULT_PROFILE:
                    build_config(_overlay(default, settings), "profile {!r}".format(profile))
            for name, entry in self._breakers.items():
                config = self._resolve(merged, name, entry.profile, entry.overrides)
                if config != entry.breaker.config:
                    raise ConfigError(
                        "breaker {!r} already exists and this configuration would change "
                        "it ({}); configure profiles before the breakers are created".format(
                            name, _differences(entry.breaker.config, config)
                        )
                    )
            self._profiles = merged

    @property
    def profiles(self) -> Tuple[str, ...]:
        """The names of the configured profiles, in the order they were given."""
        return tuple(self._profiles)

    def profile_settings(self, profile: str) -> Settings:
        """The settings ``profile`` gives itself (not overlaid on ``default``)."""
        return dict(self._profiles.get(profile, {}))

    def config_for(
        self, name: str, profile: Optional[str] = None, **overrides: Any
    ) -> CircuitBreakerConfig:
        """The configuration :meth:`get` would give a new breaker ``name``."""
        settings = normalize_settings(overrides, "breaker {!r}".format(name))
        return self._resolve(self._profiles, name, profile, settings)

    # -- breakers ------------------------------------------------------------

    def get(self, name: str, profile: Optional[str] = None, **overrides: Any) -> CircuitBreaker:
        """The breaker called ``name``, created on first use.

        Its settings: the ``default`` profile, overlaid with ``profile`` (or,
        if there is no such profile, the profile named ``name``, if any), then
        with ``overrides``.  Asking again returns the same object:
        ``get(name)`` with neither ``profile`` nor overrides returns an
        existing breaker as it is, however it was created (``registry[name]``
        does too, without creating one); asking with an explicit profile or
        overrides that give a different configuration raises
        :class:`~cbsync.ConfigError`.  Safe to call from any thread: threads
        racing for a new name all get one breaker.

        No listener and no store code runs under the registry's lock, so a
        listener's ``on_attach`` or a store's ``bind`` may use the registry,
        from any thread.  Racing threads may each build a breaker (the store's
        ``bind`` then sees each); the first published is the one returned,
        and the others are dropped before any listener sees them.
        """
        entry = self._breakers.get(name)
        if entry is not None and (
            (profile is None and not overrides)
            or (entry.profile == profile and entry.overrides == overrides)
        ):
            return entry.breaker
        if entry is None and profile is None and not overrides:
            declared = self._declaration(name)
            if declared is not None:
                # Made as the decorated (or patched) code will ask for it.
                profile, overrides = declared.profile, dict(declared.overrides)
        settings = normalize_settings(overrides, "breaker {!r}".format(name))
        while True:
            with self._lock:
                config = self._resolve(self._profiles, name, profile, settings)
                entry = self._breakers.get(name)
                if entry is not None:
                    return _same_config(entry, config)
                listeners = self._listeners
            # Built without the lock, as the store's bind() runs in the
            # constructor; threads racing for a new name may each build one.
            # Its listeners are set before it is published, so that no event
            # of a call made through it is lost; on_attach follows, unlocked.
            candidate = unannounced(
                name, config, clock=self._clock, store=self._store, listeners=listeners
            )
            with self._lock:
                entry = self._breakers.get(name)
                if entry is not None:
                    # Another thread published first: this candidate, which no
                    # listener has seen, is dropped.
                    return _same_config(entry, config)
                if (
                    self._resolve(self._profiles, name, profile, settings) != config
                    or self._listeners != listeners
                ):
                    continue  # configure() or add_listener() meanwhile: build again
                self._breakers[name] = _Entry(candidate, profile, dict(overrides))
            announce(candidate, listeners)
            return candidate

    def __getitem__(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``; ``KeyError`` (suggesting a close name)
        if there is none.

        A breaker that decorated or patched code declared (``@circuit``,
        ``patch()``, which create theirs at the first call) counts as
        existing: it is created now, as that code will ask for it.
        """
        entry = self._breakers.get(name)
        if entry is not None:
            return entry.breaker
        if isinstance(name, str) and self._declaration(name) is not None:
            return self.get(name)
        known = [*self._breakers, *self._declared]
        if self is _default:
            known.extend(_default_declarations)
        hint = did_you_mean(name, known) if isinstance(name, str) else ""
        raise KeyError("no circuit breaker {!r} in this registry{}".format(name, hint))

    def _declaration(self, name: str) -> Optional[_Declaration]:
        declared = self._declared.get(name)
        if declared is None and self is _default:
            declared = _default_declarations.get(name)
        return declared

    def __iter__(self) -> Iterator[str]:
        """The breakers' names, in the order they were created."""
        return iter(list(self._breakers))

    def _all(self) -> List[CircuitBreaker]:
        return [entry.breaker for entry in list(self._breakers.values())]

    def __contains__(self, item: object) -> bool:
        """``name in registry`` (a breaker object is accepted too)."""
        if isinstance(item, CircuitBreaker):
            entry = self._breakers.get(item.name)
            return entry is not None and entry.breaker is item
        return item in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def snapshot(self) -> Dict[str, MetricsSnapshot]:
        """Every breaker's :class:`~cbsync.MetricsSnapshot`, by name."""
        return {breaker.name: breaker.snapshot() for breaker in self._all()}

    # -- listeners -----------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Add ``listener`` to every breaker, present and future."""
        check_listener(listener)
        with self._lock:
            if listener in self._listeners:
                return
            self._listeners = (*self._listeners, listener)
            # A breaker published after this point gets the listener from
            # get(); these get it here, after the lock is released (on_attach
            # is user code).  breaker.add_listener() ignores a listener it
            # already has, so each breaker sees on_attach once.
            breakers = self._all()
        for breaker in breakers:
            if listener not in self._listeners:
                break  # removed meanwhile by remove_listener()
            breaker.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Remove ``listener`` from the registry and its breakers.

        Raises ``ValueError`` if it was never added to the registry.
        """
        with self._lock:
            if listener not in self._listeners:
                raise ValueError("{!r} is not a listener of {!r}".format(listener, self))
            self._listeners = tuple(item for item in self._listeners if item is not listener)
            for breaker in self._all():
                try:
                    breaker.remove_listener(listener)
                except ValueError:
                    pass  # already removed from that breaker directly

    def __repr__(self) -> str:
        return "<Registry profiles={!r} breakers={!r}>".format(
            list(self._profiles), list(self._breakers)
        )

    # -- internals -----------------------------------------------------------

    @property
    def _lock(self) -> "threading.RLock":
        # Every locked path fetches the lock here: a forked child (whose copy
        # may be held by a thread of the parent) gets a fresh one first.
        self._fork.check()
        return self._lock_obj

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock; profiles and breakers are kept."""
        self._lock_obj = threading.RLock()

    @staticmethod
    def _resolve(
        profiles: Mapping[str, Settings],
        name: str,
        profile: Optional[str],
        overrides: Settings,
    ) -> CircuitBreakerConfig:
        chosen: Optional[str] = None
        for candidate in (profile, name):
            if candidate is not None and candidate != DEFAULT_PROFILE and candidate in profiles:
                chosen = candidate
                break
        settings = dict(profiles.get(DEFAULT_PROFILE, {}))
        if chosen is not None:
            settings.update(profiles[chosen])
        settings.update(overrides)
        where = "breaker {!r}".format(name)
        if chosen is not None:
            where += " (profile {!r})".format(chosen)
        return build_config(settings, where)


def _same_config(entry: _Entry, config: CircuitBreakerConfig) -> CircuitBreaker:
    """``entry``'s breaker, if ``config`` is its configuration; else a ``ConfigError``."""
    if entry.breaker.config != config:
        raise ConfigError(
            "breaker {!r} already exists with another configuration ({}); give "
            "the same profile and settings each time, or use another name".format(
                entry.breaker.name, _differences(entry.breaker.config, config)
            )
        )
    return entry.breaker


def _overlay(base: Settings, top: Settings) -> Settings:
    merged = dict(base)
    merged.update(top)
    return merged


def _differences(old: CircuitBreakerConfig, new: CircuitBreakerConfig) -> str:
    parts: List[str] = []
    for field in FIELD_NAMES:
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            parts.append("{}: {!r} now, {!r} asked".format(field, before, after))
    return "; ".join(parts)


class _DefaultRegistry(Registry):
    """``cbsync.registry``: a stand-in for whatever registry is the default now.

    Every method and property is the current default registry's
    (:func:`default_registry`), looked up at each use, so a reference taken
    early -- ``from cbsync import registry`` at import time -- follows the
    pytest fixture's swap.  It holds nothing itself.
    """

    def __init__(self) -> None:
        """Nothing to build: the state is the default registry's."""

    def configure(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        _default.configure(profiles)

    @property
    def profiles(self) -> Tuple[str, ...]:
        return _default.profiles

    def profile_settings(self, profile: str) -> Settings:
        return _default.profile_settings(profile)

    def config_for(
        self, name: str, profile: Optional[str] = None, **overrides: Any
    ) -> CircuitBreakerConfig:
        return _default.config_for(name, profile, **overrides)

    def get(self, name: str, profile: Optional[str] = None, **overrides: Any) -> CircuitBreaker:
        return _default.get(name, profile, **overrides)

    def __getitem__(self, name: str) -> CircuitBreaker:
        return _default[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_default)

    def __contains__(self, item: object) -> bool:
        return item in _default

    def __len__(self) -> int:
        return len(_default)

    def snapshot(self) -> Dict[str, MetricsSnapshot]:
        return _default.snapshot()

    def add_listener(self, listener: Listener) -> None:
        _default.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        _default.remove_listener(listener)

    def __repr__(self) -> str:
        return "<cbsync.registry, now {!r}>".format(_default)


#: Breakers declared by code that uses the default registry, whichever it is
#: when they are first needed (so the pytest fixture's fresh default knows them).
_default_declarations: Dict[str, _Declaration] = {}

#: The process-wide default registry.
_default = Registry()
#: ``cbsync.registry``.
registry: Registry = _DefaultRegistry()


def default_registry() -> Registry:
    """The process-wide default registry, as it is now.

    ``cbsync.registry`` always delegates to it; this returns the registry
    object itself (the one the ``breaker_registry`` fixture installs, in a
    test).
    """
    return _default


def set_default_registry(registry: Registry) -> Registry:
    """Install ``registry`` as the process default; return the previous one.

    ``cbsync.registry`` follows it (it delegates to the current default).
    """
    global _default
    if not isinstance(registry, Registry) or isinstance(registry, _DefaultRegistry):
        raise ConfigError(
            "registry={!r} must be a cbsync.Registry (not cbsync.registry itself, "
            "which stands for the default)".format(registry)
        )
    previous = _default
    _default = registry
    return previous


def declare(
    registry: Optional[Registry], name: str, profile: Optional[str], overrides: Settings
) -> None:
    """Note that code will ask ``registry`` (``None``: the default registry,
    whichever it is then) for breaker ``name`` with ``profile`` and
    ``overrides``, so that ``registry[name]`` and ``registry.get(name)``
    create it as that code will ask for it.  The first declaration of a name
    wins; one that asks differently meets the usual ``ConfigError`` when it runs.
    """
    if registry is None or isinstance(registry, _DefaultRegistry):
        table = _default_declarations
    else:
        table = registry._declared
    table.setdefault(name, _Declaration(profile, dict(overrides)))


def resolve_registry(registry: Optional[Registry]) -> Registry:
    """``registry``, or the current default when it is ``None``.

    ``cbsync.registry`` given explicitly also means the current default.
    """
    if registry is None or isinstance(registry, _DefaultRegistry):
        return _default
    return registry
