"""CircuitBreaker's public members: call, decorator, guard, listeners, logging, snapshot."""

import inspect
import logging
import pickle
import traceback

import pytest
from _support import Recorder, fail, failures, ok

import cbsync
from cbsync import CircuitOpenError, State


def make(clock, **fields):
    return cbsync.CircuitBreaker("b", clock=clock, **fields)


def test_call_passes_arguments_and_returns_the_result(clock):
    """call() forwards positional and keyword arguments."""
    breaker = make(clock)
    assert breaker.call(lambda a, b=0: a + b, 2, b=3) == 5


def test_exception_is_the_same_object_with_its_traceback(clock):
    """The user's exception is re-raised unchanged, never wrapped."""
    breaker = make(clock)
    original = OSError("boom")

    def deep():
        raise original

    with pytest.raises(OSError) as info:
        breaker.call(deep)
    assert info.value is original
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "deep"
    assert info.value.__cause__ is None


def test_decorator_keeps_name_doc_and_signature(clock):
    """@breaker keeps __name__, __doc__ and inspect.signature, and exposes .breaker."""
    breaker = make(clock)

    def fetch(currency: str, *, timeout: float = 1.0) -> dict:
        """Fetch rates."""
        return {"currency": currency, "timeout": timeout}

    wrapped = breaker(fetch)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch rates."
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert wrapped.breaker is breaker
    assert wrapped("EUR", timeout=2.0) == {"currency": "EUR", "timeout": 2.0}
    assert breaker.snapshot().successes == 1


def test_decorator_on_methods_classmethods_and_staticmethods(clock):
    """@breaker binds like the function it decorates, in either decorator order."""
    breaker = make(clock, failure_threshold=100)

    class Client:
        def __init__(self):
            self.base = 10

        @breaker
        def method(self, x):
            """A method."""
            return self.base + x

        @breaker
        @classmethod
        def outer_classmethod(cls, x):
            return (cls.__name__, x)

        @classmethod
        @breaker
        def inner_classmethod(cls, x):
            return (cls.__name__, x)

        @breaker
        @staticmethod
        def outer_staticmethod(x):
            return x * 2

        @staticmethod
        @breaker
        def inner_staticmethod(x):
            return x * 3

    client = Client()
    assert client.method(1) == 11
    assert Client.method(client, 2) == 12
    assert Client.outer_classmethod(1) == ("Client", 1)
    assert client.inner_classmethod(2) == ("Client", 2)
    assert Client.outer_staticmethod(3) == 6
    assert client.inner_staticmethod(3) == 9
    assert client.method.breaker is breaker
    assert Client.method.__doc__ == "A method."
    assert list(inspect.signature(client.method).parameters) == ["x"]
    assert breaker.snapshot().successes == 6


def test_decorated_function_rejects_when_open(clock):
    """A decorated function raises CircuitOpenError without running when open."""
    breaker = make(clock, failure_threshold=1)
    calls = []

    @breaker
    def work():
        calls.append(1)
        raise OSError("down")

    with pytest.raises(OSError):
        work()
    with pytest.raises(CircuitOpenError):
        work()
    assert calls == [1]


def test_decorating_a_non_callable_is_a_config_error(clock):
    """@breaker on something that cannot be called names it."""
    with pytest.raises(cbsync.ConfigError, match="42"):
        make(clock)(42)


def test_guard_classifies_the_block(clock):
    """with breaker.guard(): success, failure and ignored blocks are recorded."""
    breaker = make(clock, ignore=KeyError, failure_threshold=2)
    with breaker.guard():
        pass
    with pytest.raises(KeyError), breaker.guard():
        raise KeyError("k")
    with pytest.raises(OSError), breaker.guard():
        raise OSError("down")
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.ignored, snapshot.failures) == (1, 1, 1)
    with pytest.raises(OSError), breaker.guard():
        raise OSError("down")
    with pytest.raises(CircuitOpenError), breaker.guard():
        pytest.fail("the block must not run when the circuit is open")


def test_listener_order_failure_before_state_change(clock, recorder):
    """For a call that opens the circuit, on_failure comes before on_state_change."""
    breaker = make(clock, failure_threshold=2, listeners=[recorder])
    breaker.call(ok)
    failures(breaker, 2)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    assert recorder.kinds() == ["success", "failure", "failure", "state", "rejected"]
    assert recorder.states() == [(State.CLOSED, State.OPEN)]
    rejected = recorder.events[-1][2]
    assert isinstance(rejected, CircuitOpenError)


def test_listener_sees_every_transition(clock, recorder):
    """Listeners are told of every state change with its reason."""
    breaker = make(clock, failure_threshold=1, success_threshold=1, listeners=[recorder])
    failures(breaker, 1)
    clock.advance(30)
    breaker.call(ok)
    breaker.trip()
    breaker.disable()
    breaker.reset()
    assert [e[1:] for e in recorder.events if e[0] == "state"] == [
        (State.CLOSED, State.OPEN, "consecutive_failures"),
        (State.OPEN, State.HALF_OPEN, "open_period_elapsed"),
        (State.HALF_OPEN, State.CLOSED, "trial_successes"),
        (State.CLOSED, State.FORCED_OPEN, "manual"),
        (State.FORCED_OPEN, State.DISABLED, "disabled"),
        (State.DISABLED, State.CLOSED, "reset"),
    ]


def test_raising_listener_is_logged_and_the_result_stands(clock, caplog):
    """A listener that raises is logged with its traceback; the caller gets its result."""

    class Broken(cbsync.Listener):
        def on_success(self, breaker, elapsed):
            raise RuntimeError("listener bug")

        def on_failure(self, breaker, elapsed, exc):
            raise RuntimeError("listener bug")

    after = Recorder()
    breaker = make(clock, listeners=[Broken(), after])
    assert breaker.call(ok) == "ok"
    original = OSError("down")
    with pytest.raises(OSError) as info:
        breaker.call(fail(original))
    assert info.value is original
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(r.name == "cbsync" and r.exc_info for r in errors)
    assert after.kinds() == ["success", "failure"]  # later listeners still run


def test_listener_may_call_the_breaker(clock):
    """A listener that reads state and snapshot() from inside an event does not deadlock."""
    seen = []

    class Reader(cbsync.Listener):
        def on_failure(self, breaker, elapsed, exc):
            seen.append(breaker.snapshot().failures)

        def on_state_change(self, breaker, old, new, reason):
            seen.append((breaker.state, breaker.snapshot().state))
            if new is State.OPEN:
                breaker.reset()

    breaker = make(clock, failure_threshold=1, listeners=[Reader()])
    failures(breaker, 1)
    assert seen[0] == 1
    assert seen[1] == (State.OPEN, State.OPEN)
    assert breaker.state is State.CLOSED


def test_add_and_remove_listeners(clock, recorder):
    """add_listener calls on_attach once; remove_listener stops events."""
    attached = []

    class Attach(Recorder):
        def on_attach(self, breaker):
            attached.append(breaker.name)

    listener = Attach()
    breaker = make(clock, listeners=[listener])
    breaker.add_listener(listener)
    breaker.add_listener(recorder)
    breaker.call(ok)
    breaker.remove_listener(recorder)
    breaker.call(ok)
    assert attached == ["b"]
    assert recorder.kinds() == ["success"]
    assert listener.kinds() == ["success", "success"]
    with pytest.raises(ValueError, match="not a listener"):
        breaker.remove_listener(recorder)
    with pytest.raises(cbsync.ConfigError, match=r"cbsync\.Listener"):
        breaker.add_listener(object())  # type: ignore[arg-type]


def test_transitions_are_logged(clock, caplog):
    """Opening logs at WARNING, other changes at INFO, naming breaker, states and reason."""
    caplog.set_level(logging.INFO, logger="cbsync")
    breaker = make(clock, failure_threshold=1, success_threshold=1)
    failures(breaker, 1)
    clock.advance(30)
    breaker.call(ok)
    breaker.trip("deploy")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "cbsync"]
    assert lines == [
        ("WARNING", "circuit breaker 'b': closed -> open (consecutive_failures=1)"),
        ("INFO", "circuit breaker 'b': open -> half_open (open_period_elapsed)"),
        ("INFO", "circuit breaker 'b': half_open -> closed (trial_successes=1)"),
        ("WARNING", "circuit breaker 'b': closed -> forced_open (manual=deploy)"),
    ]


def test_snapshot_counts_and_latencies(clock):
    """snapshot() reports totals, rates and latencies from the clock."""
    breaker = make(clock, failure_threshold=None, slow_call_duration=0.5)

    def takes(seconds, result=None, exc=None):
        def run():
            clock.advance(seconds)
            if exc is not None:
                raise exc
            return result

        return run

    for _ in range(98):
        breaker.call(takes(0.01))
    breaker.call(takes(1.0))
    with pytest.raises(OSError):
        breaker.call(takes(0.01, exc=OSError()))
    snapshot = breaker.snapshot()
    assert snapshot.name == "b"
    assert (snapshot.calls_allowed, snapshot.successes, snapshot.failures) == (100, 99, 1)
    assert (snapshot.slow_calls, snapshot.window_calls) == (1, 100)
    assert snapshot.success_rate == 0.99
    assert snapshot.window_failure_rate == 0.01
    assert snapshot.window_slow_call_rate == 0.01
    assert snapshot.average_latency == pytest.approx((99 * 0.01 + 1.0) / 100)
    assert snapshot.p99_latency == pytest.approx(0.01, rel=0.06)
    with pytest.raises(AttributeError):
        snapshot.failures = 0  # type: ignore[misc]


def test_empty_snapshot_has_no_rates(clock):
    """Before any call, rates and latencies are None."""
    snapshot = make(clock).snapshot()
    assert snapshot.success_rate is None
    assert snapshot.window_failure_rate is None
    assert snapshot.average_latency is None
    assert snapshot.p99_latency is None
    assert snapshot.transitions == ()


def test_rejections_are_counted(clock):
    """calls_rejected counts every rejection, OPEN and FORCED_OPEN alike."""
    breaker = make(clock, failure_threshold=1)
    failures(breaker, 1)
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
    breaker.trip()
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
    snapshot = breaker.snapshot()
    assert (snapshot.calls_rejected, snapshot.calls_allowed) == (8, 1)
    assert breaker.snapshot().calls_rejected == 8  # reading does not count


def test_transitions_keep_the_last_hundred(clock):
    """snapshot().transitions is bounded to the last 100 changes, with UTC times."""
    breaker = make(clock)
    for i in range(120):
        breaker.trip(str(i))
        breaker.reset()
    transitions = breaker.snapshot().transitions
    assert len(transitions) == 100
    assert transitions[-1].new is State.CLOSED
    assert transitions[-2].reason.value == "119"
    assert transitions[-1].at.utcoffset().total_seconds() == 0


def test_open_error_pickles():
    """CircuitOpenError survives pickling with its details."""
    error = CircuitOpenError("x", State.OPEN, cbsync.OpenReason("failure_rate", 0.7), 3.5)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.breaker, copy.state, copy.reason, copy.retry_after) == (
        "x",
        State.OPEN,
        cbsync.OpenReason("failure_rate", 0.7),
        3.5,
    )
    assert str(copy) == str(error)


def test_repr_names_the_breaker(clock):
    """repr() shows the name and state."""
    assert repr(make(clock)) == "<CircuitBreaker 'b' closed>"


def test_store_is_refused_until_supported():
    """An unknown store object is a ConfigError, not silently ignored."""
    with pytest.raises(cbsync.ConfigError, match="store="):
        cbsync.CircuitBreaker("s", store=object())
