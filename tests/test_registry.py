"""Tests for cbsync.Registry and the process-wide default registry."""

import threading
import weakref

import pytest

import cbsync
from cbsync import State, _registry
from cbsync.stores import StoreBinding
from cbsync.testing import FakeClock

PROFILES = {
    "default": {"failure_threshold": 5, "timeout": "30s", "minimum_calls": 10},
    "database": {"failure_threshold": 3, "timeout": "10s"},
    "http_service": {"window_duration": "30s", "minimum_calls": 20},
}


class Recorder(cbsync.Listener):
    """Remembers the names of the breakers it heard from."""

    def __init__(self) -> None:
        self.attached = []
        self.failures = []

    def on_attach(self, breaker):
        self.attached.append(breaker.name)

    def on_failure(self, breaker, elapsed, exc):
        self.failures.append(breaker.name)


class DownError(Exception):
    """The dependency is down."""


def fail():
    raise DownError("down")


def test_get_returns_the_same_breaker_for_a_name():
    """Asking twice for a name returns one breaker object."""
    registry = cbsync.Registry()
    breaker = registry.get("payments")
    assert isinstance(breaker, cbsync.CircuitBreaker)
    assert breaker.name == "payments"
    assert registry.get("payments") is breaker
    assert registry.get("other") is not breaker


def test_no_profiles_gives_built_in_defaults():
    """Without profiles a breaker has CircuitBreakerConfig's defaults."""
    assert cbsync.Registry().get("x").config == cbsync.CircuitBreakerConfig()


def test_default_profile_overlays_built_in_defaults():
    """The default profile applies to every breaker."""
    registry = cbsync.Registry({"default": {"failure_threshold": 7, "timeout": "1m"}})
    config = registry.get("anything").config
    assert (config.failure_threshold, config.timeout) == (7, 60.0)
    assert config.success_threshold == cbsync.CircuitBreakerConfig().success_threshold


def test_named_profile_overlays_default():
    """profile= picks a profile laid over default."""
    config = cbsync.Registry(PROFILES).get("orders-db", profile="database").config
    assert (config.failure_threshold, config.timeout, config.minimum_calls) == (3, 10.0, 10)


def test_profile_named_like_the_breaker_applies():
    """Without profile=, a profile named like the breaker is used."""
    config = cbsync.Registry(PROFILES).get("database").config
    assert (config.failure_threshold, config.timeout) == (3, 10.0)


def test_unknown_profile_falls_back_to_name_then_default():
    """An unknown profile= means the name's profile, else default."""
    registry = cbsync.Registry(PROFILES)
    assert registry.get("database", profile="nope").config.failure_threshold == 3
    config = registry.get("svc", profile="nope").config
    assert (config.failure_threshold, config.timeout) == (5, 30.0)


def test_keyword_overrides_come_last():
    """Keyword overrides beat every profile."""
    config = cbsync.Registry(PROFILES).get("db2", profile="database", timeout=2).config
    assert (config.failure_threshold, config.timeout) == (3, 2.0)


def test_window_duration_is_a_synonym_of_failure_window():
    """window_duration sets failure_window, in profiles and overrides."""
    registry = cbsync.Registry(PROFILES)
    assert registry.get("http_service").config.failure_window == 30.0
    assert registry.get("w", window_duration="5s").config.failure_window == 5.0


def test_window_duration_and_failure_window_together_is_an_error():
    """Giving both spellings in one profile is a ConfigError."""
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.Registry({"p": {"window_duration": "30s", "failure_window": "60s"}})
    assert str(info.value) == (
        "profile 'p': 'failure_window' and 'window_duration' are the same setting; "
        "give only one (failure_window='60s', window_duration='30s')"
    )


def test_same_name_with_same_resulting_config_is_the_same_object():
    """Different arguments resolving to the same config return the breaker."""
    registry = cbsync.Registry(PROFILES)
    breaker = registry.get("database")
    assert registry.get("database", profile="database") is breaker
    assert registry.get("database", failure_threshold=3) is breaker


def test_same_name_with_different_config_is_an_error():
    """A second get() asking for another config raises ConfigError."""
    registry = cbsync.Registry()
    registry.get("payments", failure_threshold=2)
    with pytest.raises(cbsync.ConfigError) as info:
        registry.get("payments", failure_threshold=4)
    assert str(info.value) == (
        "breaker 'payments' already exists with another configuration "
        "(failure_threshold: 2 now, 4 asked); give the same profile and settings each "
        "time, or use another name"
    )


def test_bad_override_names_breaker_field_and_value():
    """A bad keyword value raises ConfigError naming breaker, field and value."""
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.Registry(PROFILES).get("db", profile="database", minimum_calls=0)
    assert str(info.value) == (
        "breaker 'db' (profile 'database'): minimum_calls=0 must be a whole number of at least 1"
    )


def test_misspelt_override_suggests_the_field():
    """An unknown keyword names the closest field."""
    with pytest.raises(cbsync.ConfigError, match="did you mean 'failure_threshold'"):
        cbsync.Registry().get("db", failure_treshold=3)


def test_bad_profile_value_is_rejected_at_configure():
    """configure() validates each profile overlaid on default."""
    registry = cbsync.Registry({"default": {"timeout": "1m"}})
    with pytest.raises(cbsync.ConfigError) as info:
        registry.configure({"fast": {"max_timeout": "10s"}})
    assert str(info.value) == "profile 'fast': max_timeout='10s' is below timeout='1m'"
    assert registry.profiles == ("default",)


def test_configure_rejects_non_mappings():
    """A profile that is not a mapping raises ConfigError naming it."""
    with pytest.raises(cbsync.ConfigError, match=r"profile 'db': expected a mapping"):
        cbsync.Registry({"db": [1, 2]})
    with pytest.raises(cbsync.ConfigError, match="profiles must be a mapping"):
        cbsync.Registry(["db"])  # type: ignore[arg-type]


def test_configure_refuses_a_whole_document():
    """Passing the load_config shape to configure() says what to do instead."""
    with pytest.raises(cbsync.ConfigError, match=r"use cbsync\.load_config\(document\)"):
        cbsync.Registry().configure({"circuit_breaker": {"default": {"timeout": 5}}})


def test_configure_adds_and_replaces_profiles():
    """configure() replaces a named profile whole and keeps the others."""
    registry = cbsync.Registry(PROFILES)
    registry.configure({"database": {"timeout": "5s"}, "cache": {"failure_threshold": 2}})
    assert registry.profiles == ("default", "database", "http_service", "cache")
    assert registry.profile_settings("database") == {"timeout": "5s"}
    config = registry.get("database").config
    assert (config.failure_threshold, config.timeout) == (5, 5.0)


def test_configure_refuses_to_change_an_existing_breaker():
    """Reconfiguring a profile an existing breaker uses is a ConfigError."""
    registry = cbsync.Registry(PROFILES)
    breaker = registry.get("database")
    with pytest.raises(cbsync.ConfigError, match="breaker 'database' already exists"):
        registry.configure({"database": {"timeout": "5s"}})
    assert registry.get("database") is breaker
    registry.configure({"database": {"failure_threshold": 3, "timeout": 10}})
    assert registry.get("database") is breaker


def test_config_for_previews_without_creating():
    """config_for() resolves a config and creates nothing."""
    registry = cbsync.Registry(PROFILES)
    assert registry.config_for("x", profile="database").timeout == 10.0
    assert len(registry) == 0


class SlowAttach(cbsync.Listener):
    """Counts attachments and holds each one briefly, to widen any creation race."""

    def __init__(self) -> None:
        self.attached = 0
        self.lock = threading.Lock()

    def on_attach(self, breaker):
        with self.lock:
            self.attached += 1
        threading.Event().wait(0.02)  # real time: keep a racing creator inside the constructor


def test_racing_threads_get_one_breaker():
    """16 threads asking for one new name all get the same breaker, built once."""
    listener = SlowAttach()
    registry = cbsync.Registry(PROFILES, listeners=[listener])
    barrier = threading.Barrier(16)
    results = []
    lock = threading.Lock()

    def worker():
        barrier.wait(timeout=10)
        breaker = registry.get("shared", profile="database")
        with lock:
            results.append(breaker)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 16
    assert len({id(breaker) for breaker in results}) == 1
    assert len(registry) == 1
    assert listener.attached == 1


#: Seconds a test waits at most for a helper thread (never reached when all is well).
JOIN = 5.0


def get_in_another_thread(registry, name):
    """``registry.get(name)`` from a new thread; the breaker, or None if it did not
    return within JOIN seconds (it then blocks on something this thread holds)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(registry.get(name)), daemon=True)
    thread.start()
    thread.join(timeout=JOIN)
    return result[0] if result else None


class HandsOffAttach(Recorder):
    """on_attach hands work to another thread: fetch this breaker and call it."""

    def __init__(self, registry) -> None:
        super().__init__()
        self.registry = registry
        self.seen = []

    def on_attach(self, breaker):
        super().on_attach(breaker)
        done = threading.Event()

        def work():
            same = self.registry.get(breaker.name)
            with pytest.raises(DownError):
                same.call(fail)
            if not breaker.name.endswith("-sibling"):
                self.registry.get(breaker.name + "-sibling")  # a new name: takes the lock
            done.set()

        threading.Thread(target=work, daemon=True).start()
        finished = done.wait(JOIN)
        # The failure made while on_attach still runs reaches this listener too.
        self.seen.append((breaker.name, finished, breaker.name in self.failures))


def test_on_attach_in_get_may_use_the_registry_from_another_thread():
    """get() runs no listener under the registry lock: on_attach can hand work to a thread."""
    registry = cbsync.Registry()
    listener = HandsOffAttach(registry)
    registry.add_listener(listener)
    breaker = registry.get("payments")
    assert sorted(listener.seen) == [("payments", True, True), ("payments-sibling", True, True)]
    assert breaker.snapshot().failures == 1
    assert registry.get("payments") is breaker
    assert list(registry) == ["payments", "payments-sibling"]


def test_on_attach_in_add_listener_may_use_the_registry_from_another_thread():
    """add_listener() runs no on_attach under the registry lock."""
    registry = cbsync.Registry()
    breaker = registry.get("payments")
    listener = HandsOffAttach(registry)
    registry.add_listener(listener)
    assert sorted(listener.seen) == [("payments", True, True), ("payments-sibling", True, True)]
    assert breaker.snapshot().failures == 1


class HandsOffStore:
    """A store whose bind() asks the registry for another breaker from a thread."""

    def __init__(self) -> None:
        self.registry = None
        self.answers = {}

    def bind(self, breaker):
        if breaker.name == "main":
            other = get_in_another_thread(self.registry, "side")
            self.answers[breaker.name] = other is not None
        return StoreBinding()


def test_store_bind_may_use_the_registry_from_another_thread():
    """A store's bind() does not run under the registry lock."""
    store = HandsOffStore()
    registry = cbsync.Registry(store=store)
    store.registry = registry
    breaker = registry.get("main")
    assert store.answers == {"main": True}
    assert list(registry) == ["side", "main"]
    assert registry.get("main") is breaker


def test_a_breaker_that_loses_the_race_is_dropped_unseen():
    """Two builders of one name: the first published wins; listeners never see the other."""
    built = []
    from_thread = []

    class RacingStore:
        def bind(self, breaker):
            # The store sees each breaker built through its handle.
            built.append(weakref.ref(breaker))
            if len(built) == 1:  # the other thread builds and publishes meanwhile
                from_thread.append(get_in_another_thread(registry, breaker.name))
            return StoreBinding()

    listener = Recorder()
    registry = cbsync.Registry(store=RacingStore(), listeners=[listener])
    breaker = registry.get("x")
    assert from_thread == [breaker]
    assert len(built) == 2
    winner = built[1]()
    assert winner is not None
    assert winner.alive
    breaker.trip()  # the second handle built is the published breaker's
    assert winner.state is State.FORCED_OPEN
    assert built[0]() is None  # the loser is garbage already
    assert listener.attached == ["x"]
    assert len(registry) == 1


def test_configure_while_a_breaker_is_built_is_not_lost():
    """A breaker built from profiles that configure() changed meanwhile is rebuilt."""
    changed = []

    class Reconfiguring:
        def bind(self, breaker):
            if not changed:  # stands for another thread's configure() at this moment
                changed.append(breaker.config.failure_threshold)
                registry.configure({"database": {"failure_threshold": 4}})
            return StoreBinding()

    registry = cbsync.Registry({"database": {"failure_threshold": 3}}, store=Reconfiguring())
    breaker = registry.get("database")
    assert changed == [3]
    assert breaker.config.failure_threshold == 4
    assert registry.config_for("database") == breaker.config


def test_breakers_get_the_registry_clock():
    """A registry's clock drives the breakers it creates."""
    clock = FakeClock()
    registry = cbsync.Registry(clock=clock)
    breaker = registry.get("x", failure_threshold=1, timeout=10)
    with pytest.raises(DownError):
        breaker.call(fail)
    assert breaker.retry_after == 10.0
    clock.advance(4)
    assert breaker.retry_after == 6.0


def test_listeners_apply_to_present_and_future_breakers():
    """add_listener reaches existing breakers and ones created later."""
    first = Recorder()
    registry = cbsync.Registry(listeners=[first])
    early = registry.get("early")
    late_listener = Recorder()
    registry.add_listener(late_listener)
    registry.add_listener(late_listener)
    later = registry.get("later")
    for breaker in (early, later):
        with pytest.raises(DownError):
            breaker.call(fail)
    assert first.attached == ["early", "later"]
    assert late_listener.attached == ["early", "later"]
    assert late_listener.failures == ["early", "later"]


def test_remove_listener_detaches_it_everywhere():
    """remove_listener stops events from every breaker."""
    listener = Recorder()
    registry = cbsync.Registry(listeners=[listener])
    breaker = registry.get("x")
    registry.remove_listener(listener)
    with pytest.raises(DownError):
        breaker.call(fail)
    with pytest.raises(DownError):
        registry.get("y").call(fail)
    assert listener.failures == []
    with pytest.raises(ValueError, match="is not a listener"):
        registry.remove_listener(listener)


def test_non_listener_is_rejected():
    """Listeners must be cbsync.Listener instances (the breaker's own check and message)."""
    expected = r"must be an instance of cbsync\.Listener \(subclass it and override"
    with pytest.raises(cbsync.ConfigError, match=expected):
        cbsync.Registry(listeners=[object()])  # type: ignore[list-item]
    with pytest.raises(cbsync.ConfigError, match=expected):
        cbsync.Registry().add_listener(print)  # type: ignore[arg-type]


def test_store_is_passed_to_breakers():
    """The registry hands its store to each breaker it creates."""
    store = object()
    registry = cbsync.Registry(store=store)
    with pytest.raises(cbsync.ConfigError, match="store="):
        registry.get("x")


def test_iteration_membership_len_and_snapshot():
    """Iteration yields names in creation order; in, len and snapshot work."""
    registry = cbsync.Registry()
    registry.get("a")
    b = registry.get("b")
    with pytest.raises(DownError):
        b.call(fail)
    assert list(registry) == ["a", "b"]
    assert "a" in registry
    assert b in registry
    assert "c" not in registry
    assert cbsync.CircuitBreaker("a") not in registry
    assert len(registry) == 2
    snapshot = registry.snapshot()
    assert sorted(snapshot) == ["a", "b"]
    assert snapshot["b"].failures == 1
    assert snapshot["a"].failures == 0


def test_cbsync_registry_stands_for_the_default_registry(breaker_registry):
    """cbsync.registry is a Registry whose every call goes to the process default."""
    default = cbsync.default_registry()
    assert default is _registry.default_registry() is breaker_registry
    assert isinstance(cbsync.registry, cbsync.Registry)
    cbsync.registry.configure({"db": {"failure_threshold": 2}})
    assert default.profiles == cbsync.registry.profiles == ("db",)
    assert cbsync.registry.profile_settings("db") == {"failure_threshold": 2}
    assert cbsync.registry.config_for("x", "db").failure_threshold == 2
    breaker = cbsync.registry.get("stand-in", profile="db")
    assert default.get("stand-in") is breaker
    assert cbsync.registry["stand-in"] is breaker
    assert "stand-in" in cbsync.registry
    assert "stand-in" in default
    assert list(cbsync.registry) == list(default) == ["stand-in"]
    assert len(cbsync.registry) == len(default) == 1
    assert cbsync.registry.snapshot().keys() == default.snapshot().keys()
    listener = cbsync.Listener()
    cbsync.registry.add_listener(listener)
    assert listener in breaker.listeners
    cbsync.registry.remove_listener(listener)
    assert listener not in breaker.listeners


def test_every_public_registry_member_is_delegated():
    """The stand-in overrides every public Registry member, so none reads its own state."""
    public = {
        name
        for name in vars(cbsync.Registry)
        if not name.startswith("_")
        or name in ("__getitem__", "__iter__", "__contains__", "__len__")
    }
    stand_in = type(cbsync.registry)
    assert public <= set(vars(stand_in)), public - set(vars(stand_in))


def test_set_default_registry_swaps_and_keeps_cbsync_registry_in_sync():
    """set_default_registry installs a registry and returns the previous one."""
    from cbsync import registry as imported_early

    fresh = cbsync.Registry()
    previous = _registry.set_default_registry(fresh)
    try:
        assert _registry.default_registry() is fresh
        assert cbsync.default_registry() is fresh
        assert _registry.resolve_registry(None) is fresh
        assert _registry.resolve_registry(cbsync.registry) is fresh
        breaker = imported_early.get("swapped")
        assert fresh.get("swapped") is breaker
        assert "swapped" in cbsync.registry
    finally:
        assert _registry.set_default_registry(previous) is fresh
    assert cbsync.default_registry() is previous
    assert "swapped" not in cbsync.registry
    assert "swapped" not in imported_early
    with pytest.raises(cbsync.ConfigError, match=r"not cbsync\.registry itself"):
        _registry.set_default_registry(cbsync.registry)
    with pytest.raises(cbsync.ConfigError, match=r"must be a cbsync\.Registry"):
        _registry.set_default_registry(object())  # type: ignore[arg-type]


def test_a_breaker_is_found_by_name_however_it_was_made():
    """get(name) and registry[name] return a breaker created with a profile or overrides."""
    registry = cbsync.Registry({"database": {"failure_threshold": 3}})
    db = registry.get("orders-db", profile="database")
    flaky = registry.get("flaky", failure_threshold=2)
    assert registry.get("orders-db") is db
    assert registry.get("flaky") is flaky
    assert registry["orders-db"] is db
    assert registry["flaky"] is flaky
    assert registry.get("orders-db", profile="database") is db  # the same arguments again
    assert len(registry) == 2


def test_a_different_explicit_configuration_is_still_an_error():
    """Asking for an existing name with other explicit settings is a ConfigError."""
    registry = cbsync.Registry({"database": {"failure_threshold": 3}})
    registry.get("orders-db", profile="database")
    with pytest.raises(cbsync.ConfigError, match="already exists with another configuration"):
        registry.get("orders-db", failure_threshold=9)
    with pytest.raises(cbsync.ConfigError, match="failure_threshold: 3 now, 5 asked"):
        registry.get("orders-db", profile="default")


def test_getitem_never_creates_and_suggests_a_close_name():
    """registry[name] of an unknown name raises KeyError with a "did you mean"."""
    registry = cbsync.Registry()
    registry.get("payments-api")
    with pytest.raises(
        KeyError,
        match="no circuit breaker 'payments-apl' in this registry; did you mean 'payments-api'",
    ):
        registry["payments-apl"]
    with pytest.raises(KeyError) as info:
        registry["zzz"]
    assert "did you mean" not in str(info.value)
    assert "zzz" not in registry
    assert len(registry) == 1


def test_get_by_name_creates_from_the_profiles_when_absent():
    """get(name) of a new name still creates it, from the profile named like it."""
    registry = cbsync.Registry({"billing": {"timeout": "5s"}})
    assert registry.get("billing").config.timeout == 5.0
    assert registry["billing"] is registry.get("billing")


def test_a_decorated_function_s_breaker_is_found_before_its_first_call(breaker_registry):
    """Right after @cbsync.circuit(name=...), registry[name] is its breaker, as declared."""

    @cbsync.circuit(name="flaky-declared", failure_threshold=2)
    def flaky():
        return "ok"

    breaker = cbsync.registry["flaky-declared"]  # created now, with the declared settings
    assert breaker.config.failure_threshold == 2
    assert flaky() == "ok"  # ... and the function uses that very breaker
    assert flaky.breaker is breaker
    assert breaker.snapshot().successes == 1


def test_get_by_name_makes_a_declared_breaker_as_its_code_asks(breaker_registry):
    """get(name) before the first call does not make a default-config breaker that would clash."""

    @cbsync.circuit(name="declared-get", failure_threshold=2, timeout="5s")
    def fetch():
        return "ok"

    assert cbsync.registry.get("declared-get").config.timeout == 5.0
    assert fetch() == "ok"


def test_declarations_follow_the_registry_they_were_made_for():
    """A declaration for an explicit registry is that registry's, not the default's."""
    mine = cbsync.Registry()

    @cbsync.circuit(name="only-mine", registry=mine, failure_threshold=4)
    def work():
        return "ok"

    assert mine["only-mine"].config.failure_threshold == 4
    fresh = cbsync.Registry()
    with pytest.raises(KeyError):
        fresh["only-mine"]
    previous = _registry.set_default_registry(fresh)
    try:
        with pytest.raises(KeyError):
            cbsync.registry["only-mine"]
    finally:
        _registry.set_default_registry(previous)


def test_a_patched_function_s_breaker_is_declared(breaker_registry):
    """patch() declares its breaker too: found by name before the first call."""
    handle = cbsync.patch("json:dumps", name="json.dumps-declared", failure_threshold=7)
    try:
        assert cbsync.registry["json.dumps-declared"].config.failure_threshold == 7
    finally:
        handle.undo()
