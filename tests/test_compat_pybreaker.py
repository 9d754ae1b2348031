"""cbsync.compat.pybreaker: pybreaker 1.x's documented API and behaviour, on cbsync's engine.

The tests are written from pybreaker's README and docstrings.  Those taking
the ``pb`` fixture run twice: against ``cbsync.compat.pybreaker`` and
against pybreaker itself (when pybreaker >= 1.4 is installed), so each one
shows that the compat module does what pybreaker does.  The others cover
the intentional differences listed in docs/migrating.md (no lock across the
call, rejection instead of waiting in HALF_OPEN, BaseExceptions and
listener errors, validation...) and the Redis storage, against real Redis.
"""

import logging
import subprocess
import sys
import threading
import types
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from _redis_support import REDIS_URL, delete_prefix, require_redis
from freezegun import freeze_time

import cbsync
import cbsync.compat.pybreaker as compat

try:
    import pybreaker as real_pybreaker

    _REAL_VERSION = tuple(int(part) for part in metadata.version("pybreaker").split(".")[:2])
except (ImportError, ValueError):  # pybreaker 1.4 needs Python 3.9
    real_pybreaker = None
    _REAL_VERSION = (0, 0)

_REAL_OK = real_pybreaker is not None and _REAL_VERSION >= (1, 4)


@pytest.fixture(
    params=[
        "compat",
        pytest.param(
            "pybreaker",
            marks=pytest.mark.skipif(not _REAL_OK, reason="pybreaker >= 1.4 is not installed"),
        ),
    ]
)
def pb(request: Any) -> types.ModuleType:
    """The module under test: cbsync.compat.pybreaker, then pybreaker itself."""
    return compat if request.param == "compat" else real_pybreaker


@pytest.fixture
def frozen() -> Iterator[Any]:
    """Frozen time (wall clock and monotonic clock), moved by ``frozen.tick(seconds)``."""
    with freeze_time("2026-01-01 00:00:00") as frozen:
        yield frozen


class DBError(Exception):
    """A system error: the dependency failed."""


class CustomerValidationError(Exception):
    """A business error: the dependency answered."""


def fail(*args: Any, **kwargs: Any) -> None:
    raise DBError("database down")


def reject_customer() -> None:
    raise CustomerValidationError("bad customer")


def failures(breaker: Any, pb: types.ModuleType, n: int) -> None:
    """``n`` failing calls, each raising DBError or (the one that trips) CircuitBreakerError."""
    for _ in range(n):
        with pytest.raises((DBError, pb.CircuitBreakerError)):
            breaker.call(fail)


class Recorder:
    """A pybreaker listener recording every event (duck-typed, as pybreaker allows)."""

    def __init__(self) -> None:
        self.events: List[tuple] = []

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.events.append(("before_call", cb, func, args, kwargs))

    def success(self, cb: Any) -> None:
        self.events.append(("success", cb))

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.events.append(("failure", cb, exc))

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.events.append(("state_change", cb, old_state.name, new_state.name))

    def kinds(self) -> List[str]:
        return [event[0] for event in self.events]

    def changes(self) -> List[tuple]:
        return [event[2:] for event in self.events if event[0] == "state_change"]


# -- names -----------------------------------------------------------------------


def test_module_exports_every_name_pybreaker_does():
    """The module has pybreaker's public names, states and state classes."""
    for name in (
        "CircuitBreaker",
        "CircuitBreakerError",
        "CircuitBreakerListener",
        "CircuitBreakerState",
        "CircuitBreakerStorage",
        "CircuitClosedState",
        "CircuitHalfOpenState",
        "CircuitMemoryStorage",
        "CircuitOpenState",
        "CircuitRedisStorage",
        "STATE_CLOSED",
        "STATE_HALF_OPEN",
        "STATE_OPEN",
    ):
        assert name in compat.__all__
        assert hasattr(compat, name)
    if _REAL_OK:
        assert set(real_pybreaker.__all__) <= set(compat.__all__)


def test_state_names(pb):
    """The state constants are pybreaker's strings."""
    assert (pb.STATE_CLOSED, pb.STATE_OPEN, pb.STATE_HALF_OPEN) == ("closed", "open", "half-open")


def test_migration_guide_starts_with_changing_one_import():
    """docs/migrating.md opens with the one-import migration."""
    guide = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"
    lines = guide.read_text(encoding="utf-8").splitlines()
    assert lines[0].lower().startswith("# change one import")
    assert lines[5].startswith("import cbsync.compat.pybreaker as pybreaker")


def test_import_loads_no_optional_library():
    """Importing the module imports neither redis nor pybreaker."""
    code = (
        "import sys, cbsync.compat.pybreaker; "
        "print(sorted(m for m in ('redis', 'pybreaker', 'tornado', 'yaml') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert output.stdout.strip() == "[]"


# -- calls in CLOSED ---------------------------------------------------------------


def test_call_returns_the_result(pb):
    """call(func, *args, **kwargs) passes the arguments and returns the result."""
    breaker = pb.CircuitBreaker()
    assert breaker.call(lambda a, b=0: a + b, 2, b=3) == 5
    assert breaker.current_state == "closed"


def test_failure_is_reraised_and_counted(pb):
    """A failing call re-raises its own exception and counts one failure."""
    breaker = pb.CircuitBreaker(fail_max=3)
    error = DBError("x")

    def failing():
        raise error

    with pytest.raises(DBError) as caught:
        breaker.call(failing)
    assert caught.value is error
    assert breaker.fail_counter == 1
    assert breaker.current_state == "closed"


def test_success_resets_the_failure_count(pb):
    """The counter counts consecutive failures: a success resets it."""
    breaker = pb.CircuitBreaker(fail_max=3)
    failures(breaker, pb, 2)
    breaker.call(len, "x")
    assert breaker.fail_counter == 0
    failures(breaker, pb, 2)
    assert breaker.current_state == "closed"


def test_fail_max_consecutive_failures_open_the_circuit(pb):
    """The fail_max-th failure opens the circuit and raises CircuitBreakerError."""
    breaker = pb.CircuitBreaker(fail_max=3)
    failures(breaker, pb, 2)
    with pytest.raises(pb.CircuitBreakerError) as caught:
        breaker.call(fail)
    assert str(caught.value) == "Failures threshold reached, circuit breaker opened"
    assert isinstance(caught.value.__context__, DBError)
    assert breaker.current_state == "open"
    assert breaker.fail_counter == 3


def test_throw_new_error_on_trip_false_raises_the_original_error(pb):
    """With throw_new_error_on_trip=False the tripping call raises its own error."""
    breaker = pb.CircuitBreaker(fail_max=1, throw_new_error_on_trip=False)
    with pytest.raises(DBError):
        breaker.call(fail)
    assert breaker.current_state == "open"


def test_open_circuit_rejects_without_calling(pb, frozen):
    """An open circuit raises CircuitBreakerError at once; the function does not run."""
    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=60)
    failures(breaker, pb, 1)
    calls = []
    frozen.tick(59)
    with pytest.raises(pb.CircuitBreakerError) as caught:
        breaker.call(calls.append, 1)
    assert str(caught.value) == "Timeout not elapsed yet, circuit breaker still open"
    assert calls == []


# -- after reset_timeout -------------------------------------------------------------


def test_after_reset_timeout_a_successful_trial_closes(pb, frozen):
    """After reset_timeout the next call runs; its success closes the circuit."""
    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=60)
    failures(breaker, pb, 1)
    frozen.tick(61)
    assert breaker.current_state == "open"  # moved on by the next call, not by time
    assert breaker.call(len, "abc") == 3
    assert breaker.current_state == "closed"
    assert breaker.fail_counter == 0


def test_a_failed_trial_opens_again_for_reset_timeout(pb, frozen):
    """A failing trial call reopens the circuit until another timeout elapses."""
    breaker = pb.CircuitBreaker(fail_max=2, reset_timeout=60)
    failures(breaker, pb, 2)
    frozen.tick(61)
    with pytest.raises(pb.CircuitBreakerError) as caught:
        breaker.call(fail)
    assert str(caught.value) == "Trial call failed, circuit breaker opened"
    assert breaker.current_state == "open"
    assert breaker.fail_counter == 3
    frozen.tick(59)
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(len, "x")
    frozen.tick(2)  # no backoff: the same reset_timeout again
    breaker.call(len, "x")
    assert breaker.current_state == "closed"


def test_success_threshold_trial_successes_close(pb, frozen):
    """success_threshold successful trial calls, one after another, close the circuit."""
    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=10, success_threshold=3)
    failures(breaker, pb, 1)
    frozen.tick(11)
    for expected in (1, 2):
        breaker.call(len, "x")
        assert breaker.current_state == "half-open"
        assert breaker.success_counter == expected
    breaker.call(len, "x")
    assert breaker.current_state == "closed"
    assert breaker.success_counter == 0


def test_reopening_resets_the_success_count(pb, frozen):
    """A failed trial call after some successes starts the count again."""
    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=10, success_threshold=2)
    failures(breaker, pb, 1)
    frozen.tick(11)
    breaker.call(len, "x")
    assert breaker.success_counter == 1
    failures(breaker, pb, 1)
    assert breaker.success_counter == 0
    frozen.tick(11)
    breaker.call(len, "x")
    assert breaker.current_state == "half-open"


def test_reset_timeout_zero_admits_a_trial_at_the_next_call(pb):
    """reset_timeout=0: the call after the trip is already a trial call."""
    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=0)
    failures(breaker, pb, 1)
    assert breaker.current_state == "open"
    breaker.call(len, "x")
    assert breaker.current_state == "closed"


# -- excluded exceptions ---------------------------------------------------------------


def test_excluded_exception_counts_as_a_success(pb):
    """An excluded exception propagates, does not count as a failure, and resets the count."""
    recorder = Recorder()
    breaker = pb.CircuitBreaker(
        fail_max=2, exclude=[CustomerValidationError], listeners=[recorder]
    )
    failures(breaker, pb, 1)
    with pytest.raises(CustomerValidationError):
        breaker.call(reject_customer)
    assert breaker.fail_counter == 0
    assert recorder.kinds() == ["before_call", "failure", "before_call", "success"]
    failures(breaker, pb, 1)
    assert breaker.current_state == "closed"


def test_excluded_exception_subclasses_are_excluded(pb):
    """Any exception derived from an excluded type is excluded."""

    class MissingField(CustomerValidationError):
        pass

    def missing():
        raise MissingField("email")

    breaker = pb.CircuitBreaker(fail_max=1, exclude=[CustomerValidationError])
    with pytest.raises(MissingField):
        breaker.call(missing)
    assert breaker.current_state == "closed"


def test_exclude_takes_predicates_mixed_with_types(pb):
    """A callable in exclude decides from the exception itself; types and callables mix."""

    class HTTPError(Exception):
        def __init__(self, status_code: int) -> None:
            super().__init__(status_code)
            self.status_code = status_code

    def http(status):
        def request():
            raise HTTPError(status)

        return request

    breaker = pb.CircuitBreaker(
        fail_max=1,
        exclude=[lambda e: type(e) is HTTPError and e.status_code < 500, KeyError],
    )
    with pytest.raises(HTTPError):
        breaker.call(http(404))
    with pytest.raises(KeyError):
        breaker.call({}.__getitem__, "k")
    assert breaker.current_state == "closed"
    with pytest.raises((HTTPError, pb.CircuitBreakerError)):
        breaker.call(http(503))
    assert breaker.current_state == "open"


def test_excluded_exceptions_can_change_at_run_time(pb):
    """add_excluded_exception(s) and remove_excluded_exception change what is excluded."""
    breaker = pb.CircuitBreaker(fail_max=1)
    assert breaker.excluded_exceptions == ()
    breaker.add_excluded_exception(CustomerValidationError)
    breaker.add_excluded_exceptions(KeyError, LookupError)
    assert breaker.excluded_exceptions == (CustomerValidationError, KeyError, LookupError)
    with pytest.raises(CustomerValidationError):
        breaker.call(reject_customer)
    assert breaker.current_state == "closed"
    breaker.remove_excluded_exception(CustomerValidationError)
    assert breaker.excluded_exceptions == (KeyError, LookupError)
    with pytest.raises(ValueError):
        breaker.remove_excluded_exception(CustomerValidationError)
    with pytest.raises((CustomerValidationError, pb.CircuitBreakerError)):
        breaker.call(reject_customer)
    assert breaker.current_state == "open"


def test_is_system_error(pb):
    """is_system_error() tells failures from excluded exceptions."""
    breaker = pb.CircuitBreaker(exclude=[CustomerValidationError])
    assert breaker.is_system_error(DBError())
    assert not breaker.is_system_error(CustomerValidationError())


def test_excluded_exception_in_half_open_closes(pb, frozen):
    """In half-open an excluded exception is a successful trial call."""
    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=10, exclude=[CustomerValidationError])
    failures(breaker, pb, 1)
    frozen.tick(11)
    with pytest.raises(CustomerValidationError):
        breaker.call(reject_customer)
    assert breaker.current_state == "closed"


# -- listeners ------------------------------------------------------------------------


def test_listeners_get_pybreaker_arguments(pb):
    """before_call(cb, func, *args, **kwargs), failure(cb, exc), success(cb) and
    state_change(cb, old_state, new_state), in the order things happen."""
    recorder = Recorder()
    breaker = pb.CircuitBreaker(fail_max=2, listeners=[recorder])
    breaker.call(fail if False else len, "ab")
    with pytest.raises(DBError):
        breaker.call(fail, 1, key="v")
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(fail)
    assert recorder.kinds() == [
        "before_call",
        "success",
        "before_call",
        "failure",
        "before_call",
        "failure",
        "state_change",
    ]
    before = recorder.events[2]
    assert before[1] is breaker
    assert before[2:] == (fail, (1,), {"key": "v"})
    assert recorder.events[1] == ("success", breaker)
    assert recorder.events[3][1] is breaker
    assert isinstance(recorder.events[3][2], DBError)
    assert recorder.changes() == [("closed", "open")]


def test_state_change_passes_state_objects(pb, frozen):
    """state_change gets state objects of pybreaker's state classes."""
    seen = []

    class Listener(pb.CircuitBreakerListener):
        def state_change(self, cb, old_state, new_state):
            seen.append((type(old_state), type(new_state)))

    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=10, listeners=[Listener()])
    failures(breaker, pb, 1)
    frozen.tick(11)
    breaker.call(len, "x")
    assert seen == [
        (pb.CircuitClosedState, pb.CircuitOpenState),
        (pb.CircuitOpenState, pb.CircuitHalfOpenState),
        (pb.CircuitHalfOpenState, pb.CircuitClosedState),
    ]


def test_rejected_calls_tell_listeners_nothing(pb):
    """A rejected call never reaches before_call, success or failure."""
    recorder = Recorder()
    breaker = pb.CircuitBreaker(listeners=[recorder])
    breaker.open()
    recorder.events.clear()
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(len, "x")
    assert recorder.events == []


def test_add_and_remove_listeners(pb):
    """add_listener(s) and remove_listener change the listeners tuple."""
    first, second, third = Recorder(), Recorder(), Recorder()
    breaker = pb.CircuitBreaker(listeners=[first])
    breaker.add_listener(second)
    breaker.add_listeners(third)
    assert breaker.listeners == (first, second, third)
    breaker.remove_listener(second)
    assert breaker.listeners == (first, third)
    with pytest.raises(ValueError):
        breaker.remove_listener(second)
    breaker.call(len, "x")
    assert first.kinds() == third.kinds() == ["before_call", "success"]
    assert second.events == []


def test_a_listener_that_listens_to_successes_only_later(pb):
    """A success listener added to a breaker that had none is told of successes."""
    recorder = Recorder()
    breaker = pb.CircuitBreaker()
    breaker.call(len, "x")
    breaker.add_listener(recorder)
    breaker.call(len, "x")
    breaker.remove_listener(recorder)
    breaker.call(len, "x")
    assert recorder.kinds() == ["before_call", "success"]


def test_listener_subclass_overrides_only_what_it_needs(pb):
    """A CircuitBreakerListener subclass may override one method."""
    opened = []

    class LogListener(pb.CircuitBreakerListener):
        def state_change(self, cb, old_state, new_state):
            opened.append("State Change: CB: {}, New State: {}".format(cb.name, new_state.name))

    breaker = pb.CircuitBreaker(fail_max=1, name="db", listeners=[LogListener()])
    failures(breaker, pb, 1)
    assert opened == ["State Change: CB: db, New State: open"]


# -- monitoring and management ------------------------------------------------------------


def test_manual_moves_and_current_state(pb):
    """open(), half_open() and close() move the circuit; current_state names the state."""
    breaker = pb.CircuitBreaker()
    assert breaker.current_state == "closed"
    breaker.open()
    assert breaker.current_state == "open"
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(len, "x")
    breaker.half_open()
    assert breaker.current_state == "half-open"
    breaker.close()
    assert breaker.current_state == "closed"
    assert breaker.call(len, "x") == 1


def test_state_is_a_state_object(pb):
    """state is an object of the state's class, whose name is current_state."""
    breaker = pb.CircuitBreaker()
    assert isinstance(breaker.state, pb.CircuitClosedState)
    breaker.open()
    assert isinstance(breaker.state, pb.CircuitOpenState)
    assert breaker.state.name == "open"
    breaker.half_open()
    assert isinstance(breaker.state, pb.CircuitHalfOpenState)
    assert isinstance(breaker.state, pb.CircuitBreakerState)


def test_open_returns_throw_new_error_on_trip(pb):
    """open() returns the throw_new_error_on_trip setting."""
    assert pb.CircuitBreaker().open() is True
    assert pb.CircuitBreaker(throw_new_error_on_trip=False).open() is False


def test_manual_open_lasts_reset_timeout_from_the_last_open(pb, frozen):
    """open() opens for reset_timeout, counted again from a second open()."""
    breaker = pb.CircuitBreaker(reset_timeout=30)
    breaker.open()
    frozen.tick(20)
    breaker.open()
    frozen.tick(20)
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(len, "x")
    frozen.tick(11)
    breaker.call(len, "x")
    assert breaker.current_state == "closed"


def test_half_open_admits_a_trial_call(pb):
    """After half_open() a failing call opens the circuit, a successful one closes it."""
    breaker = pb.CircuitBreaker()
    breaker.half_open()
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(fail)
    assert breaker.current_state == "open"
    breaker.half_open()
    breaker.call(len, "x")
    assert breaker.current_state == "closed"


def test_close_clears_the_failure_count(pb):
    """close() forgets the failures counted so far."""
    breaker = pb.CircuitBreaker(fail_max=3)
    failures(breaker, pb, 2)
    breaker.close()
    assert breaker.fail_counter == 0
    failures(breaker, pb, 2)
    assert breaker.current_state == "closed"


def test_fail_max_can_be_set_at_run_time(pb):
    """fail_max = n applies to the failures that follow."""
    breaker = pb.CircuitBreaker(fail_max=5)
    failures(breaker, pb, 2)
    breaker.fail_max = 3
    assert breaker.fail_max == 3
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(fail)
    assert breaker.current_state == "open"
    breaker.close()
    breaker.fail_max = 10
    failures(breaker, pb, 9)
    assert breaker.current_state == "closed"


def test_reset_timeout_can_be_set_at_run_time(pb, frozen):
    """reset_timeout = s applies at once, to an open period already running too."""
    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=60)
    failures(breaker, pb, 1)
    frozen.tick(10)
    breaker.reset_timeout = 5
    assert breaker.reset_timeout == 5
    breaker.call(len, "x")
    assert breaker.current_state == "closed"
    breaker.reset_timeout = 100
    failures(breaker, pb, 1)
    frozen.tick(99)
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(len, "x")
    frozen.tick(2)
    breaker.call(len, "x")
    assert breaker.current_state == "closed"


def test_success_threshold_can_be_set_at_run_time(pb, frozen):
    """success_threshold = n applies to the trial calls that follow."""
    breaker = pb.CircuitBreaker(fail_max=1, reset_timeout=10, success_threshold=1)
    breaker.success_threshold = 2
    assert breaker.success_threshold == 2
    failures(breaker, pb, 1)
    frozen.tick(11)
    breaker.call(len, "x")
    assert breaker.current_state == "half-open"
    breaker.success_threshold = 1
    breaker.call(len, "x")
    assert breaker.current_state == "closed"


def test_name(pb):
    """name is None unless given, and may be set."""
    assert pb.CircuitBreaker().name is None
    breaker = pb.CircuitBreaker(name="db")
    assert breaker.name == "db"
    breaker.name = "database"
    assert breaker.name == "database"


def test_memory_storage_may_start_half_open(pb):
    """CircuitMemoryStorage(STATE_HALF_OPEN): the first call is a trial call."""
    breaker = pb.CircuitBreaker(state_storage=pb.CircuitMemoryStorage(pb.STATE_HALF_OPEN))
    assert breaker.current_state == "half-open"
    with pytest.raises(pb.CircuitBreakerError):
        breaker.call(fail)
    assert breaker.current_state == "open"


def test_memory_storage_starting_closed_is_the_default(pb):
    """CircuitMemoryStorage(STATE_CLOSED) behaves as no storage at all."""
    breaker = pb.CircuitBreaker(fail_max=1, state_storage=pb.CircuitMemoryStorage(pb.STATE_CLOSED))
    assert breaker.current_state == "closed"
    failures(breaker, pb, 1)
    assert breaker.current_state == "open"


# -- decorator, generators, context manager ------------------------------------------------


def test_decorator_protects_a_function(pb):
    """@breaker protects every call and keeps the function's name and docstring."""
    breaker = pb.CircuitBreaker(fail_max=1)

    @breaker
    def update_customer(cust):
        """Update a row of the customer table."""
        if cust is None:
            raise DBError("down")
        return cust.upper()

    assert update_customer("alice") == "ALICE"
    assert update_customer.__name__ == "update_customer"
    assert update_customer.__doc__ == "Update a row of the customer table."
    with pytest.raises(pb.CircuitBreakerError):
        update_customer(None)
    with pytest.raises(pb.CircuitBreakerError):
        update_customer("bob")


def test_decorator_with_parentheses(pb):
    """@breaker() decorates as @breaker does."""
    breaker = pb.CircuitBreaker(fail_max=1)

    @breaker()
    def fetch():
        raise DBError("down")

    with pytest.raises(pb.CircuitBreakerError):
        fetch()
    assert breaker.current_state == "open"


def test_decorator_protects_methods(pb):
    """A decorated method gets its instance and goes through the breaker."""
    breaker = pb.CircuitBreaker(fail_max=2)

    class Repository:
        def __init__(self, rows):
            self.rows = rows

        @breaker
        def get(self, key):
            return self.rows[key]

    repo = Repository({"a": 1})
    assert repo.get("a") == 1
    with pytest.raises(KeyError):
        repo.get("b")
    assert breaker.fail_counter == 1


def test_generator_function_counts_when_exhausted(pb):
    """A decorated generator function's call succeeds when its generator is exhausted."""
    recorder = Recorder()
    breaker = pb.CircuitBreaker(listeners=[recorder])

    @breaker
    def rows(n):
        yield from range(n)

    generator = rows(3)
    assert recorder.kinds() == ["before_call"]
    assert next(generator) == 0
    assert list(generator) == [1, 2]
    assert recorder.kinds() == ["before_call", "success"]


def test_generator_that_raises_counts_a_failure(pb):
    """A generator raising while it is consumed is a failure; its error propagates."""
    breaker = pb.CircuitBreaker(fail_max=2)

    @breaker
    def rows():
        yield 1
        raise DBError("connection lost")

    generator = rows()
    assert next(generator) == 1
    with pytest.raises(DBError):
        next(generator)
    assert breaker.fail_counter == 1


def test_generator_send_reaches_the_generator(pb):
    """send() values reach the protected generator."""
    breaker = pb.CircuitBreaker()

    @breaker
    def echo():
        received = yield "ready"
        while True:
            received = yield received * 2

    generator = echo()
    assert next(generator) == "ready"
    assert generator.send(21) == 42


def test_calling_protects_a_block(pb):
    """with breaker.calling(): the block counts as one call."""
    recorder = Recorder()
    breaker = pb.CircuitBreaker(fail_max=2, listeners=[recorder])
    with breaker.calling():
        pass
    with pytest.raises(DBError), breaker.calling():
        raise DBError("down")
    assert breaker.fail_counter == 1
    assert recorder.kinds() == ["before_call", "success", "before_call", "failure"]
    with pytest.raises(pb.CircuitBreakerError), breaker.calling():
        raise DBError("down")
    with pytest.raises(pb.CircuitBreakerError), breaker.calling():
        raise AssertionError("the block must not run")


# -- the intentional differences -------------------------------------------------------------

THREADS = 8


def _run_together(target: Any) -> List[BaseException]:
    """Run ``target`` in THREADS threads; return what they raised."""
    errors: List[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=body) for _ in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not any(worker.is_alive() for worker in workers)
    return errors


@pytest.mark.parametrize("way", ["call", "decorator", "calling"])
def test_calls_are_not_serialised(way):
    """8 threads are inside the protected code at once (pybreaker runs them one at a time)."""
    breaker = compat.CircuitBreaker()
    # Each call waits for all 8 to be inside: a lock held across the call breaks it.
    barrier = threading.Barrier(THREADS, timeout=10)

    @breaker
    def decorated():
        barrier.wait()

    def through_calling():
        with breaker.calling():
            barrier.wait()

    target = {
        "call": lambda: breaker.call(barrier.wait),
        "decorator": decorated,
        "calling": through_calling,
    }[way]
    assert _run_together(target) == []
    assert breaker.engine.snapshot().successes == THREADS


def test_half_open_rejects_instead_of_waiting():
    """A call arriving while the trial call runs is rejected at once."""
    # No frozen time here: freezegun gives threads other than the test's the real clock.
    breaker = compat.CircuitBreaker(fail_max=1, reset_timeout=10)
    failures(breaker, compat, 1)
    breaker.half_open()
    started, release = threading.Event(), threading.Event()

    def trial():
        started.set()
        assert release.wait(10)
        return "trial"

    results: List[Any] = []
    worker = threading.Thread(target=lambda: results.append(breaker.call(trial)))
    worker.start()
    assert started.wait(10)
    with pytest.raises(compat.CircuitBreakerError) as caught:
        breaker.call(len, "x")
    assert str(caught.value) == "Trial call in progress, circuit breaker half-open"
    assert isinstance(caught.value.__cause__, cbsync.HalfOpenLimitReached)
    release.set()
    worker.join(10)
    assert results == ["trial"]
    assert breaker.current_state == "closed"


def test_rejection_chains_cbsync_error_with_retry_after(frozen):
    """A rejection's __cause__ is the cbsync CircuitOpenError, with retry_after."""
    breaker = compat.CircuitBreaker(fail_max=1, reset_timeout=60, name="db")
    failures(breaker, compat, 1)
    frozen.tick(15)
    with pytest.raises(compat.CircuitBreakerError) as caught:
        breaker.call(len, "x")
    cause = caught.value.__cause__
    assert isinstance(cause, cbsync.CircuitOpenError)
    assert cause.breaker == "db"
    assert cause.retry_after == pytest.approx(45)
    assert isinstance(caught.value, cbsync.CircuitBreakerError)


def test_keyboard_interrupt_counts_nothing():
    """A BaseException that is not an Exception propagates and counts nothing."""
    recorder = Recorder()
    breaker = compat.CircuitBreaker(fail_max=1, listeners=[recorder])

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert breaker.current_state == "closed"
    assert breaker.fail_counter == 0
    assert recorder.kinds() == ["before_call"]


def test_interrupted_trial_frees_the_trial_slot():
    """A trial call ended by KeyboardInterrupt leaves the circuit half-open for the next one."""
    breaker = compat.CircuitBreaker()
    breaker.half_open()

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert breaker.current_state == "half-open"
    breaker.call(len, "x")
    assert breaker.current_state == "closed"


def test_generator_closed_early_counts_nothing():
    """A protected generator closed before it is exhausted is neither success nor failure."""
    recorder = Recorder()
    breaker = compat.CircuitBreaker(listeners=[recorder])

    @breaker
    def rows():
        yield from range(10)

    for row in rows():
        if row == 2:
            break
    generator = rows()
    generator.close()
    assert recorder.kinds() == ["before_call", "before_call"]
    snapshot = breaker.engine.snapshot()
    assert (snapshot.successes, snapshot.failures, snapshot.dropped_permits) == (0, 0, 0)


def test_unstarted_generator_of_a_trial_frees_the_trial_slot():
    """A trial call's generator dropped before it starts gives the trial slot back."""
    breaker = compat.CircuitBreaker()
    breaker.half_open()

    @breaker
    def rows():
        yield 1

    generator = rows()
    del generator
    assert list(rows()) == [1]
    assert breaker.current_state == "closed"


def test_guarded_generator_is_a_generator():
    """The result of a protected generator function is a collections.abc.Generator."""
    import collections.abc

    breaker = compat.CircuitBreaker()

    @breaker
    def rows():
        yield 1

    generator = rows()
    assert isinstance(generator, collections.abc.Generator)
    assert iter(generator) is generator
    with pytest.raises(DBError):
        generator.throw(DBError("injected"))
    assert breaker.fail_counter == 1


def test_listener_errors_are_logged_not_raised(caplog):
    """A listener raising is logged on logger cbsync; the call and other listeners go on."""

    class Broken(compat.CircuitBreakerListener):
        def before_call(self, cb, func, *args, **kwargs):
            raise RuntimeError("broken before_call")

        def success(self, cb):
            raise RuntimeError("broken success")

    recorder = Recorder()
    breaker = compat.CircuitBreaker(listeners=[Broken(), recorder])
    with caplog.at_level(logging.ERROR, logger="cbsync"):
        assert breaker.call(len, "abc") == 3
    assert recorder.kinds() == ["before_call", "success"]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert all("the call is not affected" in message for message in messages)


def test_raising_exclusion_predicate_counts_a_failure(caplog):
    """An exclusion predicate that raises is logged, and the call counts as a failure."""

    def broken(exc):
        raise RuntimeError("broken predicate")

    breaker = compat.CircuitBreaker(fail_max=2, exclude=[broken])
    with caplog.at_level(logging.ERROR, logger="cbsync"), pytest.raises(DBError):
        breaker.call(fail)
    assert breaker.fail_counter == 1
    assert "broken" in caplog.text


def test_call_async_is_not_supported():
    """call_async() and the async decorator option raise NotImplementedError naming why."""
    breaker = compat.CircuitBreaker()
    with pytest.raises(NotImplementedError, match="Tornado"):
        breaker.call_async(len, "x")
    with pytest.raises(NotImplementedError, match="synchronous"):
        breaker(__pybreaker_call_async=True)


def test_decorator_rejects_unknown_options():
    """An option the decorator does not know is a TypeError."""
    breaker = compat.CircuitBreaker()
    with pytest.raises(TypeError, match="retries"):
        breaker(retries=3)
    with pytest.raises(TypeError):
        breaker(len, len)
    with pytest.raises(TypeError):
        breaker(42)


def test_decorator_protects_classmethods_and_staticmethods():
    """@breaker also binds classmethods and staticmethods correctly."""
    breaker = compat.CircuitBreaker(fail_max=5)

    class Client:
        prefix = "v1"

        @breaker
        @classmethod
        def path(cls, name):
            return cls.prefix + "/" + name

        @breaker
        @staticmethod
        def fail():
            raise DBError("down")

    assert Client.path("rates") == "v1/rates"
    with pytest.raises(DBError):
        Client().fail()
    assert breaker.fail_counter == 1
    assert Client.path.breaker is breaker


def test_manual_moves_tell_listeners_of_real_changes_only():
    """open() on an open breaker restarts its period but is no state change."""
    recorder = Recorder()
    breaker = compat.CircuitBreaker(listeners=[recorder])
    breaker.open()
    breaker.open()
    breaker.half_open()
    breaker.half_open()
    breaker.close()
    breaker.close()
    assert recorder.changes() == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


def test_state_can_be_assigned_a_state_name(frozen):
    """breaker.state = name moves the breaker as open(), half_open() and close() do."""
    breaker = compat.CircuitBreaker(reset_timeout=10)
    breaker.state = compat.STATE_OPEN
    assert breaker.current_state == "open"
    breaker.state = compat.STATE_HALF_OPEN
    assert breaker.current_state == "half-open"
    breaker.state = compat.STATE_CLOSED
    assert breaker.current_state == "closed"
    with pytest.raises(ValueError, match="'shut'"):
        breaker.state = "shut"


def test_memory_storage_starting_open_lasts_reset_timeout(frozen):
    """CircuitMemoryStorage(STATE_OPEN) starts open for one reset_timeout."""
    breaker = compat.CircuitBreaker(
        reset_timeout=30, state_storage=compat.CircuitMemoryStorage(compat.STATE_OPEN)
    )
    assert breaker.current_state == "open"
    frozen.tick(29)
    with pytest.raises(compat.CircuitBreakerError):
        breaker.call(len, "x")
    frozen.tick(2)
    breaker.call(len, "x")
    assert breaker.current_state == "closed"


def test_storage_reads_its_breaker(frozen):
    """A storage's state, counter, success_counter and opened_at are its breaker's."""
    storage = compat.CircuitMemoryStorage(compat.STATE_CLOSED)
    assert (storage.name, storage.state, storage.counter, storage.opened_at) == (
        "memory",
        "closed",
        0,
        None,
    )
    breaker = compat.CircuitBreaker(
        fail_max=2, reset_timeout=10, success_threshold=2, state_storage=storage
    )
    failures(breaker, compat, 1)
    assert storage.counter == 1
    failures(breaker, compat, 1)
    assert storage.state == "open"
    assert storage.opened_at is not None
    assert storage.opened_at.isoformat() == "2026-01-01T00:00:00+00:00"
    frozen.tick(11)
    breaker.call(len, "x")
    assert (storage.state, storage.success_counter) == ("half-open", 1)


def test_a_storage_belongs_to_one_breaker():
    """Giving one storage to a second breaker is a ConfigError."""
    storage = compat.CircuitMemoryStorage(compat.STATE_CLOSED)
    first = compat.CircuitBreaker(name="first", state_storage=storage)
    with pytest.raises(cbsync.ConfigError, match="already belongs"):
        compat.CircuitBreaker(name="second", state_storage=storage)
    del first  # storages hold their breaker weakly: a dropped breaker frees its storage
    assert compat.CircuitBreaker(name="third", state_storage=storage).name == "third"


def test_engine_is_a_cbsync_breaker():
    """breaker.engine is the cbsync breaker: snapshots, names and cbsync listeners work."""
    breaker = compat.CircuitBreaker(fail_max=3, reset_timeout=30, name="payments")
    engine = breaker.engine
    assert isinstance(engine, cbsync.CircuitBreaker)
    assert engine.name == "payments"
    config = engine.config
    assert (config.failure_threshold, config.timeout, config.half_open_max_calls) == (3, 30.0, 1)
    assert config.failure_rate_threshold is None
    assert config.backoff_multiplier == 1.0
    breaker.call(len, "x")
    failures(breaker, compat, 1)
    snapshot = engine.snapshot()
    assert (snapshot.successes, snapshot.failures) == (1, 1)
    breaker.fail_max = 4
    assert engine.config.failure_threshold == 4


def test_forced_open_engine_reads_as_open():
    """engine.trip() reads as open and rejects until close()."""
    breaker = compat.CircuitBreaker()
    breaker.engine.trip("maintenance")
    assert breaker.current_state == "open"
    with pytest.raises(compat.CircuitBreakerError, match="forced open"):
        breaker.call(len, "x")
    breaker.close()
    assert breaker.call(len, "x") == 1


def test_success_relay_only_while_a_listener_listens_to_successes():
    """Without a success listener the engine's lock-free success path calls no listener."""
    breaker = compat.CircuitBreaker()
    engine = breaker.engine
    assert [type(item).__name__ for item in engine.listeners] == ["_Relay"]

    class StateOnly(compat.CircuitBreakerListener):
        def state_change(self, cb, old_state, new_state):
            pass

    breaker.add_listener(StateOnly())
    assert len(engine.listeners) == 1
    recorder = Recorder()
    breaker.add_listener(recorder)
    assert [type(item).__name__ for item in engine.listeners] == ["_Relay", "_SuccessRelay"]
    breaker.remove_listener(recorder)
    assert len(engine.listeners) == 1


@pytest.mark.skipif(real_pybreaker is None, reason="pybreaker is not installed")
def test_listeners_written_for_pybreaker_work():
    """A listener subclassing pybreaker's own CircuitBreakerListener works unchanged."""
    changes = []

    class Listener(real_pybreaker.CircuitBreakerListener):
        def state_change(self, cb, old_state, new_state):
            changes.append(new_state.name)

    breaker = compat.CircuitBreaker(fail_max=1, listeners=[Listener()])
    failures(breaker, compat, 1)
    assert changes == ["open"]
    # Its inherited no-op success() does not put a listener on the lock-free path.
    assert len(breaker.engine.listeners) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fail_max": 0}, "fail_max=0"),
        ({"fail_max": "5"}, "fail_max='5'"),
        ({"success_threshold": 0}, "success_threshold=0"),
        ({"reset_timeout": -1}, "reset_timeout=-1"),
        ({"reset_timeout": "soon"}, "reset_timeout='soon'"),
        ({"exclude": [42]}, "42"),
        ({"exclude": [int]}, "int"),
        ({"listeners": [Recorder]}, "is a class"),
        ({"listeners": [object()]}, "none of before_call"),
        ({"listeners": [cbsync.Listener()]}, "engine.add_listener"),
        ({"state_storage": object()}, "not supported"),
        ({"name": ""}, "name=''"),
    ],
)
def test_bad_settings_are_config_errors(options, message):
    """A bad setting raises ConfigError (a ValueError) naming it."""
    with pytest.raises(cbsync.ConfigError, match=message):
        compat.CircuitBreaker(**options)


def test_bad_run_time_settings_change_nothing():
    """Setting fail_max, reset_timeout or success_threshold to a bad value changes nothing."""
    breaker = compat.CircuitBreaker(fail_max=3, reset_timeout=30, success_threshold=2)
    for attribute, value in [("fail_max", 0), ("reset_timeout", -5), ("success_threshold", 1.5)]:
        with pytest.raises(cbsync.ConfigError, match=attribute):
            setattr(breaker, attribute, value)
    assert (breaker.fail_max, breaker.reset_timeout, breaker.success_threshold) == (3, 30, 2)
    config = breaker.engine.config
    assert (config.failure_threshold, config.timeout, config.success_threshold) == (3, 30.0, 2)
    with pytest.raises(cbsync.ConfigError):
        breaker.add_excluded_exception("ValueError")
    with pytest.raises(cbsync.ConfigError):
        breaker.name = 42


def test_custom_storage_is_not_supported():
    """A storage subclassing CircuitBreakerStorage is refused with a pointer to cbsync stores."""

    class DjangoCacheStorage(compat.CircuitBreakerStorage):
        pass

    with pytest.raises(cbsync.ConfigError, match=r"cbsync\.stores"):
        compat.CircuitBreaker(state_storage=DjangoCacheStorage("django"))


def test_memory_storage_rejects_an_unknown_state():
    """CircuitMemoryStorage needs one of the three state names."""
    with pytest.raises(cbsync.ConfigError, match="'shut'"):
        compat.CircuitMemoryStorage("shut")


# -- CircuitRedisStorage, against real Redis ------------------------------------------------------


@pytest.fixture
def redis_client() -> Iterator[Any]:
    """A redis.Redis client of the test Redis."""
    redis = pytest.importorskip("redis")
    require_redis()
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2.0, socket_connect_timeout=2.0)
    yield client
    disconnect(client)


def disconnect(client: Any) -> None:
    """Close every connection of ``client`` now (redis-py 4.0's close() leaves
    the pool's open, to be found unclosed by the garbage collector later)."""
    client.close()
    client.connection_pool.disconnect()


@pytest.fixture
def namespace(redis_client: Any) -> Iterator[str]:
    """A unique namespace; its keys are deleted afterwards."""
    name = "cbsync-test-compat-{}".format(uuid.uuid4().hex[:12])
    yield name
    delete_prefix(REDIS_URL, name + ":")


@pytest.fixture
def storages() -> Iterator[List[Any]]:
    """Closes the CircuitRedisStorages a test makes."""
    made: List[Any] = []
    yield made
    for storage in made:
        storage.close()


def redis_breaker(client: Any, namespace: str, storages: List[Any], **options: Any) -> Any:
    """A compat breaker on a CircuitRedisStorage of ``namespace`` (a "process" of a fleet)."""
    storage = compat.CircuitRedisStorage(
        options.pop("state", compat.STATE_CLOSED), client, namespace=namespace, sync_interval=60
    )
    storages.append(storage)
    return compat.CircuitBreaker(state_storage=storage, **options)


def sync(*breakers: Any) -> None:
    """Flush and read back every breaker's fleet state now."""
    for breaker in breakers:
        assert breaker._storage.store.sync()


@pytest.mark.redis
def test_redis_breakers_of_one_namespace_share_their_state(redis_client, namespace, storages):
    """A breaker opened in one process is open in every process of the namespace."""
    here = redis_breaker(redis_client, namespace, storages, fail_max=2, reset_timeout=60)
    there = redis_breaker(redis_client, namespace, storages, fail_max=2, reset_timeout=60)
    assert there.call(len, "x") == 1
    failures(here, compat, 2)
    assert here.current_state == "open"
    sync(here, there)
    assert there.current_state == "open"
    with pytest.raises(compat.CircuitBreakerError):
        there.call(len, "x")
    there.close()
    sync(there, here)
    assert here.current_state == "closed"


@pytest.mark.redis
def test_redis_failures_of_several_processes_add_up(redis_client, namespace, storages):
    """fail_max counts the fleet's consecutive failures, as pybreaker's shared counter does."""
    here = redis_breaker(redis_client, namespace, storages, fail_max=3)
    there = redis_breaker(redis_client, namespace, storages, fail_max=3)
    sync(here, there)
    failures(here, compat, 2)
    sync(here)
    failures(there, compat, 1)
    sync(there)
    sync(here)
    assert (here.current_state, there.current_state) == ("open", "open")


@pytest.mark.redis
def test_redis_fail_max_set_at_run_time_reaches_the_fleet_judgment(
    redis_client, namespace, storages
):
    """A fail_max raised at run time is the one Redis judges the fleet's failures by."""
    here = redis_breaker(redis_client, namespace, storages, fail_max=2)
    here.fail_max = 4
    sync(here)
    failures(here, compat, 3)
    sync(here)
    assert here.current_state == "closed"
    failures(here, compat, 1)
    assert here.current_state == "open"


@pytest.mark.redis
def test_redis_closed_calls_make_no_round_trips(redis_client, namespace, storages):
    """A CLOSED call sends nothing to Redis (pybreaker's storage makes two round trips)."""
    redis = pytest.importorskip("redis")

    class Counting(redis.Connection):
        sent = 0

        def send_packed_command(self, command, check_health=True):
            type(self).sent += 1
            super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=Counting)
    client = redis.Redis(connection_pool=pool)
    try:
        client.ping()  # connects (the handshake sends commands too)
        connected = Counting.sent
        client.ping()
        assert Counting.sent == connected + 1  # the counter sees each round trip
        breaker = redis_breaker(client, namespace, storages, fail_max=5)
        breaker.call(len, "x")
        sync(breaker)
        before = Counting.sent
        for _ in range(200):
            breaker.call(len, "x")
        assert Counting.sent == before
        sync(breaker)
        assert Counting.sent > before
        assert breaker.engine.snapshot().successes == 201
    finally:
        for storage in storages:
            storage.close()
        disconnect(client)


@pytest.mark.redis
def test_redis_namespaces_are_separate(redis_client, namespace, storages):
    """Breakers of different namespaces do not share state; keys live under the namespace."""
    here = redis_breaker(redis_client, namespace, storages, fail_max=1)
    other = redis_breaker(redis_client, namespace + "-other", storages, fail_max=1)
    try:
        sync(here, other)
        failures(here, compat, 1)
        sync(here, other)
        assert (here.current_state, other.current_state) == ("open", "closed")
        keys = [key.decode() for key in redis_client.scan_iter(match=namespace + ":*")]
        assert keys
        assert all(key.startswith(namespace + ":pybreaker:") for key in keys)
    finally:
        delete_prefix(REDIS_URL, namespace + "-other:")


@pytest.mark.redis
def test_redis_initial_state_applies_to_a_new_fleet_only(redis_client, namespace, storages):
    """The storage's state is the state of a breaker nobody moved yet (pybreaker's setnx)."""
    first = redis_breaker(redis_client, namespace, storages, state=compat.STATE_OPEN)
    assert first.current_state == "open"
    sync(first)
    first.close()
    sync(first)
    later = redis_breaker(redis_client, namespace, storages, state=compat.STATE_OPEN)
    sync(later)
    assert later.current_state == "closed"


@pytest.mark.redis
def test_redis_manual_moves_reach_the_fleet(redis_client, namespace, storages):
    """open(), half_open() and close() in one process reach the others."""
    here = redis_breaker(redis_client, namespace, storages, reset_timeout=60)
    there = redis_breaker(redis_client, namespace, storages, reset_timeout=60)
    sync(here, there)
    here.open()
    sync(here, there)
    assert there.current_state == "open"
    here.half_open()
    sync(here, there)
    assert there.current_state == "half-open"
    assert there.call(len, "x") == 1
    assert there.current_state == "closed"
    sync(there, here)
    assert here.current_state == "closed"


@pytest.mark.redis
def test_redis_open_period_changes_reach_the_fleet(redis_client, namespace, storages):
    """A restarted or shortened open period is the fleet's too."""
    here = redis_breaker(redis_client, namespace, storages, reset_timeout=600)
    there = redis_breaker(redis_client, namespace, storages, reset_timeout=600)
    sync(here, there)
    here.open()
    here.open()  # restarts the period: published again, still open everywhere
    sync(here, there)
    with pytest.raises(compat.CircuitBreakerError):
        there.call(len, "x")
    here.reset_timeout = 0  # the period ends now, here and in Redis
    sync(here, there)
    assert there.call(len, "x") == 1
    assert there.current_state == "closed"


@pytest.mark.redis
def test_redis_client_decoding_responses_works(namespace, storages):
    """A client built with decode_responses=True works too."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=2.0)
    try:
        here = redis_breaker(client, namespace, storages, fail_max=1)
        there = redis_breaker(client, namespace, storages, fail_max=1)
        failures(here, compat, 1)
        sync(here, there)
        assert there.current_state == "open"
    finally:
        for storage in storages:
            storage.close()
        disconnect(client)


@pytest.mark.redis
def test_redis_storage_names_the_fleet_breaker(redis_client, namespace, storages):
    """The cbsync breaker behind a Redis storage is named after the namespace."""
    breaker = redis_breaker(redis_client, namespace, storages, name="db")
    storage = breaker._storage
    assert (storage.name, storage.namespace) == ("redis", namespace)
    assert breaker.engine.name == namespace
    assert breaker.name == "db"
    assert storage.store.prefix == namespace + ":pybreaker:"


def test_redis_storage_refuses_what_it_cannot_do():
    """fallback_circuit_state other than closed, cluster_mode and non-clients are ConfigErrors."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with pytest.raises(cbsync.ConfigError, match="fallback_circuit_state='open'"):
            compat.CircuitRedisStorage(
                compat.STATE_CLOSED, client, fallback_circuit_state=compat.STATE_OPEN
            )
        with pytest.raises(cbsync.ConfigError, match="fallback_circuit_state='ajar'"):
            compat.CircuitRedisStorage(compat.STATE_CLOSED, client, fallback_circuit_state="ajar")
        with pytest.raises(cbsync.ConfigError, match="Redis Cluster"):
            compat.CircuitRedisStorage(compat.STATE_CLOSED, client, cluster_mode=True)
        with pytest.raises(cbsync.ConfigError, match="redis_object"):
            compat.CircuitRedisStorage(compat.STATE_CLOSED, object())
        with pytest.raises(cbsync.ConfigError, match="namespace"):
            compat.CircuitRedisStorage(compat.STATE_CLOSED, client, namespace="")
        with pytest.raises(cbsync.ConfigError, match="'shut'"):
            compat.CircuitRedisStorage("shut", client)
    finally:
        disconnect(client)
