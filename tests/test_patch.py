"""Tests for cbsync.patch: wrapping code by name, now or when it is imported."""

import importlib
import itertools
import logging
import sys
import textwrap

import pytest
import wrapt

import cbsync

SOURCE = '''
class DownError(Exception):
    pass


CONSTANT = 3
STATE = {"fail": False}


def charge(amount, *, currency="EUR"):
    """Charge a card."""
    if STATE["fail"]:
        raise DownError(amount)
    return ("charged", amount, currency)


class Client:
    def send(self, payload):
        """Send a payload."""
        if STATE["fail"]:
            raise DownError(payload)
        return ("sent", self, payload)

    @classmethod
    def build(cls, n):
        return ("built", cls, n)

    @staticmethod
    def check(n):
        return ("checked", n)


class SubClient(Client):
    pass
'''

_counter = itertools.count()


@pytest.fixture
def module_name(tmp_path, monkeypatch):
    """The name of a fresh, not yet imported module written in tmp_path."""
    name = "legacy_billing_{}".format(next(_counter))
    (tmp_path / (name + ".py")).write_text(textwrap.dedent(SOURCE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def module(module_name):
    """The fresh module, imported."""
    return importlib.import_module(module_name)


def test_patches_an_imported_function(breaker_registry, module, module_name):
    """A module function goes through a breaker named module.attribute."""
    original = module.charge
    handle = cbsync.patch(module_name + ":charge")
    assert handle.applied
    assert module.charge is not original
    assert module.charge(5, currency="USD") == ("charged", 5, "USD")
    breaker = breaker_registry.get(module_name + ".charge")
    assert handle.breaker is breaker
    assert breaker.snapshot().successes == 1
    assert module.charge.__name__ == "charge"
    assert module.charge.__doc__ == "Charge a card."
    handle.undo()
    assert module.charge is original
    assert not handle.applied


def test_failures_count_and_open_the_patched_breaker(breaker_registry, module, module_name):
    """Failures of patched code count, open the circuit and propagate unchanged."""
    handle = cbsync.patch(module_name + ":charge", failure_threshold=2)
    module.STATE["fail"] = True
    for _ in range(2):
        with pytest.raises(module.DownError):
            module.charge(1)
    with pytest.raises(cbsync.CircuitOpenError):
        module.charge(1)
    assert handle.breaker.state is cbsync.State.OPEN
    handle.undo()
    with pytest.raises(module.DownError):
        module.charge(1)


@pytest.mark.parametrize("attribute", ["send", "build", "check"])
def test_undo_restores_methods_exactly(breaker_registry, module, module_name, attribute):
    """Methods, classmethods and staticmethods are restored to the same object."""
    original = vars(module.Client)[attribute]
    handle = cbsync.patch("{}:Client.{}".format(module_name, attribute))
    assert vars(module.Client)[attribute] is not original
    handle.undo()
    assert vars(module.Client)[attribute] is original


def test_patched_methods_bind_correctly(breaker_registry, module, module_name):
    """Patched methods work through instances and the class."""
    handles = [
        cbsync.patch("{}:Client.{}".format(module_name, attribute))
        for attribute in ("send", "build", "check")
    ]
    client = module.Client()
    assert client.send("x") == ("sent", client, "x")
    assert module.Client.send(client, "y") == ("sent", client, "y")
    assert module.Client.build(1) == ("built", module.Client, 1)
    assert client.build(2) == ("built", module.Client, 2)
    assert module.Client.check(3) == ("checked", 3)
    assert client.check(4) == ("checked", 4)
    names = {name: s.successes for name, s in breaker_registry.snapshot().items()}
    assert names == {
        module_name + ".Client.send": 2,
        module_name + ".Client.build": 2,
        module_name + ".Client.check": 2,
    }
    for handle in handles:
        handle.undo()


def test_inherited_method_is_patched_on_the_subclass_only(breaker_registry, module, module_name):
    """Patching an inherited method shadows it on the subclass; undo removes the shadow."""
    handle = cbsync.patch(module_name + ":SubClient.send")
    assert "send" in vars(module.SubClient)
    sub, base = module.SubClient(), module.Client()
    assert sub.send(1) == ("sent", sub, 1)
    assert base.send(2) == ("sent", base, 2)
    assert breaker_registry.get(module_name + ".SubClient.send").snapshot().successes == 1
    handle.undo()
    assert "send" not in vars(module.SubClient)
    assert module.SubClient.send is module.Client.send


def test_patch_before_import_applies_on_import(breaker_registry, module_name):
    """A module not imported yet is patched when it is, and not imported by patch()."""
    handle = cbsync.patch(module_name + ":Client.send")
    assert module_name not in sys.modules
    assert not handle.applied
    module = importlib.import_module(module_name)
    assert handle.applied
    assert isinstance(vars(module.Client)["send"], wrapt.FunctionWrapper)
    client = module.Client()
    assert client.send("p") == ("sent", client, "p")
    assert breaker_registry.get(module_name + ".Client.send").snapshot().successes == 1
    handle.undo()
    assert not isinstance(vars(module.Client)["send"], wrapt.FunctionWrapper)


def test_undo_before_import_cancels(breaker_registry, module_name):
    """undo() before the import cancels the pending patch."""
    handle = cbsync.patch(module_name + ":charge")
    handle.undo()
    module = importlib.import_module(module_name)
    assert not handle.applied
    assert not isinstance(module.charge, wrapt.FunctionWrapper)
    assert module.charge(1) == ("charged", 1, "EUR")
    assert len(breaker_registry) == 0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("Client.sned", "'{m}.Client' has no attribute 'sned'; did you mean 'send'?"),
        ("charg", "module '{m}' has no attribute 'charg'; did you mean 'charge'?"),
        ("CONSTANT", "'{m}.CONSTANT' is 3, not a function"),
    ],
)
def test_bad_path_in_a_later_import_is_logged_and_the_import_works(
    breaker_registry, module_name, caplog, path, message
):
    """A bad path applied at import is logged at ERROR; the module imports unpatched."""
    target = "{}:{}".format(module_name, path)
    handle = cbsync.patch(target)
    with caplog.at_level(logging.DEBUG, logger="cbsync"):
        module = importlib.import_module(module_name)
    assert sys.modules[module_name] is module
    assert not handle.applied
    assert module.charge(1) == ("charged", 1, "EUR")
    assert not isinstance(vars(module.Client)["send"], wrapt.FunctionWrapper)
    records = [record for record in caplog.records if record.name == "cbsync"]
    assert [record.levelno for record in records] == [logging.ERROR]
    assert records[0].getMessage() == (
        "cbsync.patch({!r}): {} -- module {!r} was imported without this patch".format(
            target, message.format(m=module_name), module_name
        )
    )
    assert records[0].exc_info is None
    assert len(breaker_registry) == 0
    handle.undo()


def test_a_later_import_still_applies_other_patches_after_a_bad_one(breaker_registry, module_name):
    """A bad pending patch does not stop a good one on the same module."""
    bad = cbsync.patch(module_name + ":Client.sned")
    good = cbsync.patch(module_name + ":charge")
    module = importlib.import_module(module_name)
    assert (bad.applied, good.applied) == (False, True)
    assert module.charge(2) == ("charged", 2, "EUR")
    assert breaker_registry.get(module_name + ".charge").snapshot().successes == 1
    good.undo()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("charg", "module '{m}' has no attribute 'charg'; did you mean 'charge'?"),
        ("Clinet.send", "module '{m}' has no attribute 'Clinet'; did you mean 'Client'?"),
        ("Client.zzz", "'{m}.Client' has no attribute 'zzz'"),
        ("CONSTANT", "'{m}.CONSTANT' is 3, not a function"),
    ],
)
def test_bad_path_names_the_missing_part(module, module_name, path, message):
    """A path that does not resolve raises ConfigError naming what is missing."""
    target = "{}:{}".format(module_name, path)
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.patch(target)
    expected = "cbsync.patch({!r}): ".format(target) + message.format(m=module_name)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    "target", ["legacy.billing.charge", "a:b:c", ":charge", "legacy:", "legacy:Client..send"]
)
def test_malformed_target(target):
    """A target without exactly one colon and both parts is a ConfigError."""
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.patch(target)
    assert str(info.value) == (
        "cbsync.patch({!r}): the target must look like 'package.module:attribute.path'".format(
            target
        )
    )


def test_explicit_breaker_and_name(breaker_registry, module, module_name):
    """breaker= is used as given; name= renames the registry breaker."""
    mine = cbsync.CircuitBreaker("mine")
    first = cbsync.patch(module_name + ":charge", mine)
    module.charge(1)
    assert mine.snapshot().successes == 1
    assert first.breaker is mine
    first.undo()
    second = cbsync.patch(module_name + ":charge", name="billing", profile="x", timeout=5)
    module.charge(1)
    assert breaker_registry.get("billing", profile="x", timeout=5).snapshot().successes == 1
    second.undo()
    with pytest.raises(cbsync.ConfigError, match=r"give either breaker= or name=, timeout="):
        cbsync.patch(module_name + ":charge", mine, name="x", timeout=5)


def test_fallback_gets_the_call_arguments(breaker_registry, module, module_name):
    """The fallback gets self first for a method, the plain arguments for a function."""
    seen = []

    def fallback(*args, **kwargs):
        seen.append((args, kwargs))
        return "fb"

    handles = [
        cbsync.patch(module_name + ":charge", fallback=fallback),
        cbsync.patch(module_name + ":Client.send", fallback=fallback),
    ]
    for handle in handles:
        handle.breaker.trip()
    client = module.Client()
    assert module.charge(3, currency="GBP") == "fb"
    assert client.send("p") == "fb"
    assert seen == [((3,), {"currency": "GBP"}), ((client, "p"), {})]
    for handle in handles:
        handle.undo()


def test_registry_is_looked_up_at_call_time(module, module_name):
    """A patch made before the default registry is swapped uses the new one."""
    from cbsync import _registry

    handle = cbsync.patch(module_name + ":charge")
    fresh = cbsync.Registry()
    previous = _registry.set_default_registry(fresh)
    try:
        module.charge(1)
        assert (module_name + ".charge") in fresh
    finally:
        _registry.set_default_registry(previous)
        handle.undo()


def test_undo_is_idempotent(breaker_registry, module, module_name):
    """A second undo() does nothing."""
    original = module.charge
    handle = cbsync.patch(module_name + ":charge")
    handle.undo()
    handle.undo()
    assert module.charge is original


def test_undo_under_another_wrapper_becomes_pass_through(
    breaker_registry, module, module_name, caplog
):
    """If something wrapped over the patch, undo() leaves it in place but inert."""
    handle = cbsync.patch(module_name + ":charge", failure_threshold=1)
    wrapt.wrap_function_wrapper(module, "charge", lambda wrapped, i, a, k: wrapped(*a, **k))
    outer = module.charge
    with caplog.at_level(logging.WARNING, logger="cbsync"):
        handle.undo()
    assert module.charge is outer
    assert "was wrapped again after this patch" in caplog.text
    handle.breaker.trip()
    assert module.charge(2) == ("charged", 2, "EUR")


def test_bad_arguments(module_name):
    """Bad breaker, fallback or registry arguments raise ConfigError."""
    target = module_name + ":charge"
    with pytest.raises(cbsync.ConfigError, match="breaker='x' must be a CircuitBreaker"):
        cbsync.patch(target, "x")  # type: ignore[arg-type]
    with pytest.raises(cbsync.ConfigError, match="fallback=1 must be callable"):
        cbsync.patch(target, fallback=1)  # type: ignore[arg-type]
    with pytest.raises(cbsync.ConfigError, match=r"registry=1 must be a cbsync\.Registry"):
        cbsync.patch(target, registry=1)  # type: ignore[arg-type]
    with pytest.raises(cbsync.ConfigError, match="did you mean 'timeout'"):
        cbsync.patch(target, timeuot=3)
    assert module_name not in sys.modules
