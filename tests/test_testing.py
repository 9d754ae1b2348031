"""Tests for cbsync.testing (FakeClock) and the pytest plugin's fixtures."""

import sys

import pytest

import cbsync
from cbsync.testing import FakeClock

if sys.version_info >= (3, 10):
    from importlib.metadata import entry_points
else:  # pragma: no cover - Python 3.8 and 3.9
    from importlib.metadata import entry_points as _entry_points

    def entry_points(group):
        return _entry_points().get(group, ())


def test_fake_clock_moves_only_when_advanced():
    """FakeClock returns its time until advance() moves it."""
    clock = FakeClock(start=10)
    assert clock() == 10.0
    assert clock() == 10.0
    clock.advance(2.5)
    clock.advance(0)
    assert clock() == 12.5
    assert FakeClock()() == 0.0


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1s", True])
def test_fake_clock_rejects_bad_advances(bad):
    """advance() takes a finite, non-negative number of seconds."""
    clock = FakeClock()
    with pytest.raises(cbsync.ConfigError, match="must be a finite number of seconds >= 0"):
        clock.advance(bad)
    assert clock() == 0.0


def test_fake_clock_drives_a_breaker():
    """A breaker on a FakeClock reopens for trial calls only when advanced."""
    clock = FakeClock()
    breaker = cbsync.CircuitBreaker("x", clock=clock, failure_threshold=1, timeout=30)
    breaker.trip()
    breaker.reset()
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    clock.advance(29.5)
    with pytest.raises(cbsync.CircuitOpenError):
        breaker.call(lambda: 1)
    clock.advance(0.5)
    assert breaker.call(lambda: 1) == 1
    assert breaker.state is cbsync.State.HALF_OPEN


def test_plugin_is_registered_as_a_pytest11_entry_point():
    """The installed distribution declares the plugin for pytest to find."""
    found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert found.get("cbsync") == "cbsync._pytest_plugin"


def test_fixtures_in_a_user_test_suite(pytester):
    """breaker_registry and fake_clock work for users' tests and are undone after."""
    pytester.makepyfile(
        test_user="""
        import pytest

        import cbsync
        from cbsync import registry as imported_early
        from cbsync.testing import FakeClock

        ORIGINAL = cbsync.default_registry()


        @cbsync.circuit(name="rates", failure_threshold=2, timeout=30,
                        fallback=lambda currency: "cached")
        def fetch_rate(currency):
            raise IOError("rates service down")


        def test_falls_back_when_open(breaker_registry, fake_clock):
            assert isinstance(fake_clock, FakeClock)
            assert cbsync.default_registry() is breaker_registry
            assert breaker_registry is not ORIGINAL
            # A reference taken at import time follows the swap.
            assert imported_early.get("early") is breaker_registry.get("early")
            for _ in range(2):
                with pytest.raises(IOError):
                    fetch_rate("EUR")
            assert fetch_rate("EUR") == "cached"
            breaker = breaker_registry.get("rates", failure_threshold=2, timeout=30)
            assert breaker.state is cbsync.State.OPEN
            assert breaker.retry_after == 30.0
            fake_clock.advance(30)
            assert breaker.retry_after == 0.0


        def test_each_test_gets_a_fresh_registry(breaker_registry):
            assert "rates" not in breaker_registry
            assert len(breaker_registry) == 0


        def test_failing_test_still_restores(breaker_registry):
            breaker_registry.get("leftover")
            assert False, "deliberate"


        def test_default_restored_afterwards():
            assert cbsync.default_registry() is ORIGINAL
            assert "leftover" not in cbsync.registry
            assert "leftover" not in imported_early
            assert "early" not in ORIGINAL
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*FAILED*test_failing_test_still_restores*AssertionError*"])


def test_fixtures_are_listed(pytester):
    """pytest --fixtures shows both fixtures with their docs."""
    pytester.makepyfile(test_empty="def test_nothing():\n    pass\n")
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(
        [
            "*fake_clock*",
            "*A clock that moves only by*",
            "*breaker_registry*",
            "*A fresh Registry on ``fake_clock``*",
        ]
    )
