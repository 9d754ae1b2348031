"""Tests for cbsync.guard: an object proxy whose method calls go through a breaker."""

import inspect
import sqlite3

import pytest

import cbsync


class DownError(Exception):
    """The resource is down."""


class Resource:
    """A stand-in for a client object the user does not own."""

    kind = "resource"

    def __init__(self):
        self.calls = []
        self.fail = False
        self.factory = dict

    def fetch(self, key, default=None):
        """Fetch a key."""
        self.calls.append(("fetch", key))
        if self.fail:
            raise DownError(key)
        return key.upper()

    def store(self, key, value):
        self.calls.append(("store", key))
        return True

    def _internal(self):
        self.calls.append(("_internal",))
        return "internal"

    @property
    def size(self):
        return len(self.calls)


def test_public_methods_go_through_the_breaker():
    """Every public method call is counted by the breaker."""
    breaker = cbsync.CircuitBreaker("res")
    resource = Resource()
    proxy = cbsync.guard(resource, breaker)
    assert proxy.fetch("a") == "A"
    assert proxy.store("k", 1) is True
    assert breaker.snapshot().successes == 2
    assert resource.calls == [("fetch", "a"), ("store", "k")]


def test_private_methods_and_attributes_pass_through():
    """Private methods, plain attributes and properties are not counted."""
    breaker = cbsync.CircuitBreaker("res")
    resource = Resource()
    proxy = cbsync.guard(resource, breaker)
    assert proxy._internal() == "internal"
    assert proxy.kind == "resource"
    assert proxy.size == 1
    assert proxy.factory is dict
    assert proxy.calls is resource.calls
    assert breaker.snapshot().calls_allowed == 0


def test_writes_and_isinstance_pass_through():
    """Setting an attribute sets it on the object; the proxy looks like it."""
    resource = Resource()
    proxy = cbsync.guard(resource, cbsync.CircuitBreaker("res"))
    proxy.fail = True
    assert resource.fail is True
    assert isinstance(proxy, Resource)
    assert proxy.__wrapped__ is resource


def test_open_breaker_rejects_without_calling():
    """Once open, calls are rejected and the object is not touched."""
    breaker = cbsync.CircuitBreaker("res", failure_threshold=2)
    resource = Resource()
    resource.fail = True
    proxy = cbsync.guard(resource, breaker)
    for key in ("a", "b"):
        with pytest.raises(DownError):
            proxy.fetch(key)
    with pytest.raises(cbsync.CircuitOpenError):
        proxy.fetch("c")
    assert resource.calls == [("fetch", "a"), ("fetch", "b")]
    assert proxy.kind == "resource"


def test_only_listed_methods_are_protected():
    """With methods=, only those names go through the breaker (private ones too)."""
    breaker = cbsync.CircuitBreaker("res")
    proxy = cbsync.guard(Resource(), breaker, methods=["fetch", "_internal"])
    proxy.store("k", 1)
    assert breaker.snapshot().calls_allowed == 0
    proxy.fetch("a")
    proxy._internal()
    assert breaker.snapshot().successes == 2


def test_methods_keep_name_doc_and_signature():
    """A proxied method looks like the original."""
    proxy = cbsync.guard(Resource(), cbsync.CircuitBreaker("res"))
    assert proxy.fetch.__name__ == "fetch"
    assert proxy.fetch.__doc__ == "Fetch a key."
    assert inspect.signature(proxy.fetch) == inspect.signature(Resource().fetch)


def test_guards_a_c_extension_object():
    """Builtin methods of a C object (sqlite3) are protected too."""
    breaker = cbsync.CircuitBreaker("sqlite")
    connection = sqlite3.connect(":memory:")
    try:
        db = cbsync.guard(connection, breaker)
        db.execute("create table t (x)")
        db.execute("insert into t values (1)")
        assert db.execute("select x from t").fetchall() == [(1,)]
        with pytest.raises(sqlite3.OperationalError):
            db.execute("select * from missing")
        snapshot = breaker.snapshot()
        assert (snapshot.successes, snapshot.failures) == (3, 1)
        assert db.in_transaction is True
    finally:
        connection.close()


def test_unknown_method_name_is_a_config_error():
    """methods= naming something the object lacks raises ConfigError."""
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.guard(Resource(), cbsync.CircuitBreaker("res"), methods=["fecth"])
    assert "has no method 'fecth'; did you mean 'fetch'?" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"breaker": "res"}, "guard(): breaker='res' must be a CircuitBreaker"),
        ({"methods": "fetch"}, "guard(): methods='fetch' must be a collection of method names"),
        ({"health_check": 5}, "guard(): health_check=5 must be a callable"),
    ],
)
def test_bad_arguments(kwargs, message):
    """Bad arguments raise ConfigError naming them."""
    arguments = {"breaker": cbsync.CircuitBreaker("res"), **kwargs}
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.guard(Resource(), **arguments)
    assert str(info.value) == message


def test_health_check_handle_is_exposed_and_stops():
    """__cbsync_health_check__ holds the health check's handle; stop() unregisters it."""
    breaker = cbsync.CircuitBreaker("res")
    resource = Resource()
    resource.health_check = "the resource's own attribute"
    resource.stop = lambda: "the resource's own stop"

    def ping():
        return True

    proxy = cbsync.guard(resource, breaker, health_check=ping)
    handle = proxy.__cbsync_health_check__
    try:
        assert handle.check is ping
        assert handle.breaker is breaker
        assert handle.active
        assert breaker._observers == (handle,)
        assert proxy.health_check == "the resource's own attribute"
        assert proxy.stop() == "the resource's own stop"
        assert not hasattr(resource, "__cbsync_health_check__")
    finally:
        handle.stop()
    assert not handle.active
    assert breaker._observers == ()
    assert cbsync.guard(Resource(), breaker).__cbsync_health_check__ is None
