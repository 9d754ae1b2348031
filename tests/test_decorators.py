"""Tests for @cbsync.circuit: naming, binding, registry lookup and fallbacks."""

import inspect

import pytest

import cbsync


class DownError(Exception):
    """The dependency is down."""


class NotFoundError(Exception):
    """A caller mistake: ignored by the breakers below."""


def test_name_defaults_to_module_and_qualname(breaker_registry):
    """A decorated function's breaker is named module.qualname."""

    @cbsync.circuit()
    def fetch():
        return 1

    assert fetch() == 1
    assert (
        fetch.breaker.name
        == __name__ + ".test_name_defaults_to_module_and_qualname.<locals>.fetch"
    )
    assert fetch.breaker is breaker_registry.get(fetch.breaker.name)


def test_explicit_name_profile_and_overrides(breaker_registry):
    """name, profile and overrides go to registry.get()."""
    breaker_registry.configure({"database": {"failure_threshold": 3, "timeout": "10s"}})

    @cbsync.circuit(name="orders-db", profile="database", timeout="2s")
    def query():
        return "rows"

    assert query() == "rows"
    config = query.breaker.config
    assert query.breaker.name == "orders-db"
    assert (config.failure_threshold, config.timeout) == (3, 2.0)


def test_keeps_name_doc_and_signature():
    """The decorated function keeps __name__, __doc__ and its signature."""

    def original(currency: str, *, retries: int = 2) -> float:
        """Fetch a rate."""
        return 1.0

    decorated = cbsync.circuit(registry=cbsync.Registry())(original)
    assert decorated.__name__ == "original"
    assert decorated.__doc__ == "Fetch a rate."
    assert inspect.signature(decorated) == inspect.signature(original)
    assert decorated.__wrapped__ is original


def test_registry_is_looked_up_at_call_time(breaker_registry):
    """Swapping the default registry after decoration takes effect."""
    from cbsync import _registry

    @cbsync.circuit(name="late")
    def work():
        return "done"

    other = cbsync.Registry()
    previous = _registry.set_default_registry(other)
    try:
        work()
        assert "late" in other
        assert work.breaker is other.get("late")
    finally:
        _registry.set_default_registry(previous)
    work()
    assert work.breaker is breaker_registry.get("late")
    assert work.breaker is not other.get("late")


def test_explicit_registry_is_used(breaker_registry):
    """registry= wins over the default registry."""
    mine = cbsync.Registry()

    @cbsync.circuit(name="pinned", registry=mine)
    def work():
        return 1

    work()
    assert "pinned" in mine
    assert "pinned" not in breaker_registry


def test_failures_open_the_circuit_and_reraise_unchanged(breaker_registry, fake_clock):
    """Failures propagate as the same object and open the breaker."""
    error = DownError("down")

    @cbsync.circuit(failure_threshold=2, timeout=30)
    def work():
        raise error

    for _ in range(2):
        with pytest.raises(DownError) as info:
            work()
        assert info.value is error
    with pytest.raises(cbsync.CircuitOpenError) as info:
        work()
    assert info.value.retry_after == 30.0
    fake_clock.advance(30)
    with pytest.raises(DownError):
        work()
    assert work.breaker.state is cbsync.State.OPEN


class Service:
    """A class with every kind of method, each decorated in both orders."""

    def __init__(self, fail=False):
        self.fail = fail

    @cbsync.circuit(name="svc.method", failure_threshold=1)
    def method(self, x, y=0):
        """An instance method."""
        if self.fail:
            raise DownError(x)
        return ("method", self, x, y)

    @cbsync.circuit(name="svc.cm_outer", failure_threshold=1)
    @classmethod
    def cm_outer(cls, x):
        """circuit over classmethod."""
        return ("cm_outer", cls, x)

    @classmethod
    @cbsync.circuit(name="svc.cm_inner", failure_threshold=1)
    def cm_inner(cls, x):
        """classmethod over circuit."""
        return ("cm_inner", cls, x)

    @cbsync.circuit(name="svc.sm_outer", failure_threshold=1)
    @staticmethod
    def sm_outer(x):
        """circuit over staticmethod."""
        return ("sm_outer", x)

    @staticmethod
    @cbsync.circuit(name="svc.sm_inner", failure_threshold=1)
    def sm_inner(x):
        """staticmethod over circuit."""
        return ("sm_inner", x)


def test_instance_method_through_instance_and_class(breaker_registry):
    """A decorated method works bound and called through the class."""
    service = Service()
    assert service.method(1, y=2) == ("method", service, 1, 2)
    assert Service.method(service, 3) == ("method", service, 3, 0)
    breaker = breaker_registry.get("svc.method", failure_threshold=1)
    assert service.method.breaker is breaker
    assert Service.method.breaker is breaker
    assert breaker.snapshot().successes == 2


@pytest.mark.parametrize("name", ["cm_outer", "cm_inner"])
def test_classmethods_in_either_order(breaker_registry, name):
    """classmethods work with circuit applied before or after classmethod."""
    service = Service()
    assert getattr(Service, name)(1) == (name, Service, 1)
    assert getattr(service, name)(2) == (name, Service, 2)
    breaker = breaker_registry.get("svc." + name, failure_threshold=1)
    assert getattr(Service, name).breaker is breaker
    assert breaker.snapshot().successes == 2


@pytest.mark.parametrize("name", ["sm_outer", "sm_inner"])
def test_staticmethods_in_either_order(breaker_registry, name):
    """staticmethods work with circuit applied before or after staticmethod."""
    assert getattr(Service, name)(1) == (name, 1)
    assert getattr(Service(), name)(2) == (name, 2)
    breaker = breaker_registry.get("svc." + name, failure_threshold=1)
    assert getattr(Service, name).breaker is breaker
    assert breaker.snapshot().successes == 2


@pytest.mark.parametrize(
    ("name", "signature", "doc"),
    [
        ("method", "(x, y=0)", "An instance method."),
        ("cm_outer", "(x)", "circuit over classmethod."),
        ("cm_inner", "(x)", "classmethod over circuit."),
        ("sm_outer", "(x)", "circuit over staticmethod."),
        ("sm_inner", "(x)", "staticmethod over circuit."),
    ],
)
def test_method_signatures_and_docs_are_kept(name, signature, doc):
    """Methods keep the signature and docstring of the original."""
    attribute = getattr(Service(), name)
    assert str(inspect.signature(attribute)) == signature
    assert attribute.__name__ == name
    assert attribute.__doc__ == doc


def test_method_names_default_to_qualname(breaker_registry):
    """Method breakers default to module.Class.method, in both orders."""

    class Repo:
        @cbsync.circuit()
        def load(self):
            return 1

        @cbsync.circuit()
        @classmethod
        def build(cls):
            return 2

        @staticmethod
        @cbsync.circuit()
        def helper():
            return 3

    prefix = __name__ + ".test_method_names_default_to_qualname.<locals>.Repo."
    assert (Repo().load(), Repo.build(), Repo.helper()) == (1, 2, 3)
    assert sorted(breaker_registry) == [
        prefix + "build",
        prefix + "helper",
        prefix + "load",
    ]


def test_fallback_on_rejection_gets_the_same_arguments(breaker_registry):
    """When open, the fallback gets the call's arguments and its result is returned."""
    calls = []

    def fallback(*args, **kwargs):
        calls.append((args, kwargs))
        return "cached"

    @cbsync.circuit(name="rates", fallback=fallback)
    def fetch(currency, *, day=None):
        return "live"

    fetch.breaker.trip("maintenance")
    assert fetch("EUR", day=3) == "cached"
    assert calls == [(("EUR",), {"day": 3})]
    snapshot = fetch.breaker.snapshot()
    assert (snapshot.calls_rejected, snapshot.calls_allowed) == (1, 0)


def test_fallback_for_a_method_gets_self_first(breaker_registry):
    """A method's fallback receives self, then the arguments."""
    seen = []

    class Client:
        @cbsync.circuit(name="client", fallback=lambda *a: seen.append(a) or "fb")
        def charge(self, amount):
            return "charged"

    client = Client()
    breaker_registry.get("client").trip()
    assert client.charge(5) == "fb"
    assert Client.charge(client, 6) == "fb"
    assert seen == [(client, 5), (client, 6)]


@pytest.mark.parametrize("order", ["outer", "inner"])
def test_fallback_for_a_classmethod_gets_cls_first(breaker_registry, order):
    """A classmethod's fallback receives the class, then the arguments."""
    seen = []

    def fallback(*args):
        seen.append(args)
        return "fb"

    decorate = cbsync.circuit(name="cm", fallback=fallback)
    if order == "outer":

        class Factory:
            @decorate
            @classmethod
            def make(cls, n):
                return "made"

    else:

        class Factory:  # type: ignore[no-redef]
            @classmethod
            @decorate
            def make(cls, n):
                return "made"

    breaker_registry.get("cm").trip()
    assert Factory.make(1) == "fb"
    assert Factory().make(2) == "fb"
    assert seen == [(Factory, 1), (Factory, 2)]


def test_fallback_for_a_staticmethod_gets_only_the_arguments(breaker_registry):
    """A staticmethod's fallback receives the arguments alone."""
    seen = []

    class Tools:
        @cbsync.circuit(name="sm", fallback=lambda *a: seen.append(a) or "fb")
        @staticmethod
        def compute(n):
            return n

    breaker_registry.get("sm").trip()
    assert Tools.compute(1) == "fb"
    assert Tools().compute(2) == "fb"
    assert seen == [(1,), (2,)]


def test_failure_propagates_without_fallback_on_failure(breaker_registry):
    """By default the fallback is for rejections only; failures propagate."""

    @cbsync.circuit(name="f", fallback=lambda: "fb", failure_threshold=2)
    def work():
        raise DownError("x")

    with pytest.raises(DownError):
        work()
    assert work.breaker.snapshot().failures == 1


def test_fallback_on_failure_returns_fallback_and_records_failure(breaker_registry):
    """With fallback_on_failure a failure returns the fallback and still counts."""

    @cbsync.circuit(
        name="f", fallback=lambda n: ("fb", n), fallback_on_failure=True, failure_threshold=2
    )
    def work(n):
        raise DownError(n)

    assert work(1) == ("fb", 1)
    assert work(2) == ("fb", 2)
    assert work.breaker.state is cbsync.State.OPEN
    assert work(3) == ("fb", 3)
    snapshot = work.breaker.snapshot()
    assert (snapshot.failures, snapshot.calls_rejected) == (2, 1)


@pytest.mark.parametrize(
    ("settings", "raised", "counted"),
    [
        ({"ignore": NotFoundError}, NotFoundError("no such row"), "ignored"),
        ({"failure_on": DownError}, KeyError("k"), "successes"),  # outside failure_on
    ],
    ids=["ignored", "not-a-failure"],
)
def test_an_exception_that_is_no_failure_does_not_fall_back(
    breaker_registry, settings, raised, counted
):
    """An ignored exception, or one outside failure_on, propagates: no fallback."""

    @cbsync.circuit(name="f", fallback=lambda: "fb", fallback_on_failure=True, **settings)
    def work():
        raise raised

    with pytest.raises(type(raised)):
        work()
    snapshot = work.breaker.snapshot()
    assert snapshot.failures == 0
    assert getattr(snapshot, counted) == 1


def test_failure_result_falls_back_when_asked(breaker_registry):
    """A failure_result value is a failure: fallback with fallback_on_failure."""

    def is_503(result):
        return result == 503

    @cbsync.circuit(
        name="a", fallback=lambda: 200, fallback_on_failure=True, failure_result=is_503
    )
    def with_fallback():
        return 503

    @cbsync.circuit(name="b", fallback=lambda: 200, failure_result=is_503)
    def without():
        return 503

    assert with_fallback() == 200
    assert without() == 503
    assert with_fallback.breaker.snapshot().failures == 1
    assert without.breaker.snapshot().failures == 1


@pytest.mark.parametrize("on_failure", [False, True])
def test_inner_breaker_rejection_is_not_the_outer_rejection(breaker_registry, on_failure):
    """A CircuitOpenError raised inside the function is a failure, not a rejection."""
    inner = cbsync.CircuitBreaker("inner")
    inner.trip()

    @cbsync.circuit(name="outer", fallback=lambda: "fb", fallback_on_failure=on_failure)
    def work():
        return inner.call(lambda: "x")

    if on_failure:
        assert work() == "fb"
    else:
        with pytest.raises(cbsync.CircuitOpenError) as info:
            work()
        assert info.value.breaker == "inner"
    snapshot = work.breaker.snapshot()
    assert (snapshot.failures, snapshot.calls_rejected) == (1, 0)


def test_base_exception_returns_the_half_open_permit(breaker_registry, fake_clock):
    """KeyboardInterrupt counts nothing and frees its trial permit."""
    behaviour = ["fail", "interrupt", "ok"]

    @cbsync.circuit(
        name="k", fallback=lambda: "fb", failure_threshold=1, half_open_max_calls=1, timeout=30
    )
    def work():
        step = behaviour.pop(0)
        if step == "fail":
            raise DownError(step)
        if step == "interrupt":
            raise KeyboardInterrupt
        return step

    with pytest.raises(DownError):
        work()
    assert work() == "fb"
    fake_clock.advance(30)
    with pytest.raises(KeyboardInterrupt):
        work()
    assert work.breaker.state is cbsync.State.HALF_OPEN
    assert work() == "ok"
    snapshot = work.breaker.snapshot()
    assert (snapshot.failures, snapshot.successes, snapshot.calls_rejected) == (1, 1, 1)


def test_same_name_with_different_settings_fails_at_call(breaker_registry):
    """Two decorations sharing a name with different settings raise ConfigError."""

    @cbsync.circuit(name="shared", failure_threshold=2)
    def one():
        return 1

    @cbsync.circuit(name="shared", failure_threshold=3)
    def two():
        return 2

    assert one() == 1
    with pytest.raises(cbsync.ConfigError, match="breaker 'shared' already exists"):
        two()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fallback": 3}, "circuit(name=None): fallback=3 must be callable"),
        ({"failure_treshold": 3}, "did you mean 'failure_threshold'?"),
        ({"name": ""}, "circuit(name=''): name must be a non-empty string"),
        ({"registry": {}}, "circuit(name=None): registry={} must be a cbsync.Registry"),
    ],
)
def test_bad_arguments_fail_at_decoration(kwargs, message):
    """Bad decorator arguments raise ConfigError before any call."""
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.circuit(**kwargs)
    assert message in str(info.value)


def test_decorating_a_non_callable_fails():
    """Decorating something not callable raises ConfigError."""
    with pytest.raises(cbsync.ConfigError, match="cannot decorate 42, not callable"):
        cbsync.circuit()(42)


def test_bare_decorator_use_is_explained():
    """@cbsync.circuit without parentheses raises a ConfigError saying so."""
    with pytest.raises(cbsync.ConfigError, match=r"write @cbsync\.circuit\(\) with parentheses"):

        @cbsync.circuit  # type: ignore[arg-type]
        def work():
            return 1
