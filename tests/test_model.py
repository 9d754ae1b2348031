"""Hypothesis: the breaker against a small reference model, under an injected clock."""

import collections

import pytest
from _support import Clock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import cbsync
from cbsync import State


class Model:
    """The rules of DESIGN.md "State machine", written as plainly as possible."""

    def __init__(self, config):
        self.c = config
        self.state = State.CLOSED
        self.window = collections.deque(maxlen=config.window_size)
        self.consecutive = self.reopen = self.half_successes = 0
        self.until = 0.0
        self.successes = self.failures = self.ignored = self.rejected = 0

    def call(self, now, outcome):
        """Return False when the call is rejected."""
        if self.state is State.FORCED_OPEN:
            self.rejected += 1
            return False
        if self.state is State.OPEN:
            if now < self.until:
                self.rejected += 1
                return False
            self.state, self.half_successes = State.HALF_OPEN, 0
        if outcome == "ignored":
            self.ignored += 1
            return True
        failed = outcome == "failure"
        self.window.append(failed)
        if failed:
            self.failures += 1
            self.consecutive += 1
        else:
            self.successes += 1
            self.consecutive = 0
        if self.state is State.CLOSED:
            calls, bad = len(self.window), sum(self.window)
            if (self.c.failure_threshold and self.consecutive >= self.c.failure_threshold) or (
                self.c.failure_rate_threshold
                and calls >= self.c.minimum_calls
                and bad / calls >= self.c.failure_rate_threshold
            ):
                self.open(now)
        elif self.state is State.HALF_OPEN:
            if failed:
                self.reopen += 1
                self.open(now)
            else:
                self.half_successes += 1
                if self.half_successes >= self.c.success_threshold:
                    self.state = State.CLOSED
                    self.window.clear()
                    self.consecutive = self.reopen = 0
        return True

    def open(self, now):
        period = min(self.c.timeout * self.c.backoff_multiplier**self.reopen, self.c.max_timeout)
        self.state, self.until = State.OPEN, now + period

    def reset(self):
        self.__init__(self.c)


class BreakerMachine(RuleBasedStateMachine):
    @initialize(
        failure_threshold=st.one_of(st.none(), st.integers(1, 5)),
        failure_rate_threshold=st.sampled_from([None, 0.3, 0.5, 1.0]),
        minimum_calls=st.integers(1, 5),
        extra_window=st.integers(0, 4),
        timeout=st.integers(1, 10),
        backoff_multiplier=st.sampled_from([1.0, 1.5, 2.0]),
        success_threshold=st.integers(1, 3),
    )
    def setup(self, extra_window, **fields):
        self.clock = Clock()
        self.breaker = cbsync.CircuitBreaker(
            "model",
            clock=self.clock,
            window_type="count_based",
            window_size=fields["minimum_calls"] + extra_window,
            max_timeout=25,
            ignore=KeyError,
            **fields,
        )
        self.model = Model(self.breaker.config)

    @rule(outcome=st.sampled_from(["success", "failure", "ignored"]))
    def call(self, outcome):
        def work():
            if outcome == "failure":
                raise OSError("down")
            if outcome == "ignored":
                raise KeyError("ignored")
            return "ok"

        admitted = self.model.call(self.clock.now, outcome)
        try:
            assert self.breaker.call(work) == "ok"
            assert admitted
            assert outcome == "success"
        except cbsync.CircuitOpenError:
            assert not admitted
        except (OSError, KeyError):
            assert admitted
            assert outcome != "success"

    @rule(seconds=st.sampled_from([0.5, 1, 3, 10, 30]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def trip(self):
        self.breaker.trip()
        self.model.state = State.FORCED_OPEN

    @rule()
    def reset(self):
        self.breaker.reset()
        self.model.reset()

    @rule()
    def disable(self):
        self.breaker.disable()
        self.model.state = State.DISABLED

    @invariant()
    def agrees_with_the_model(self):
        snapshot = self.breaker.snapshot()
        model = self.model
        assert snapshot.state is model.state
        assert (snapshot.successes, snapshot.failures, snapshot.ignored) == (
            model.successes,
            model.failures,
            model.ignored,
        )
        assert snapshot.calls_rejected == model.rejected
        assert snapshot.consecutive_failures == model.consecutive
        assert snapshot.window_calls == len(model.window)
        if model.state is State.OPEN:
            assert self.breaker.retry_after == pytest.approx(
                max(0.0, model.until - self.clock.now)
            )


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
