"""Helpers shared by the tests: a hand-driven clock, a recording listener, call helpers."""

from typing import Optional

import pytest

import cbsync


class Clock:
    """A clock the test moves by hand: monotonic seconds from 0."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder(cbsync.Listener):
    """Records every event, in order, as tuples."""

    def __init__(self) -> None:
        self.events: list = []

    def on_success(self, breaker, elapsed):
        self.events.append(("success", breaker.name))

    def on_failure(self, breaker, elapsed, exc):
        self.events.append(("failure", breaker.name, exc))

    def on_ignored(self, breaker, elapsed, exc):
        self.events.append(("ignored", breaker.name, exc))

    def on_rejected(self, breaker, error):
        self.events.append(("rejected", breaker.name, error))

    def on_state_change(self, breaker, old, new, reason):
        self.events.append(("state", old, new, reason.kind))

    def kinds(self) -> list:
        return [event[0] for event in self.events]

    def states(self) -> list:
        return [(old, new) for kind, old, new, _ in (e for e in self.events if e[0] == "state")]


def fail(exc: Optional[BaseException] = None):
    """A function for breakers to call that raises ``exc`` (an OSError by default)."""

    def failing(*args, **kwargs):
        raise exc if exc is not None else OSError("dependency down")

    return failing


def ok(*args, **kwargs):
    """A function for breakers to call that succeeds."""
    return "ok"


def failures(breaker: cbsync.CircuitBreaker, n: int) -> None:
    """Make ``n`` failing calls through ``breaker``."""
    for _ in range(n):
        with pytest.raises(OSError):
            breaker.call(fail())


#: The seed document's configuration file, which must load as written.
SEED_YAML = """\
circuit_breaker:
  default:
    failure_threshold: 5
    failure_window: 60s
    success_threshold: 3
    timeout: 30s
    half_open_max_calls: 3
    failure_rate_threshold: 0.5
    minimum_calls: 10
  database:
    failure_threshold: 3
    timeout: 10s
    failure_rate_threshold: 0.3
  http_service:
    window_type: time_based
    window_duration: 30s
    failure_rate_threshold: 0.5
    minimum_calls: 20
"""
