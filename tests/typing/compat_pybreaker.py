"""Uses of cbsync.compat.pybreaker that mypy --strict must accept (checked by `tox -e type`)."""

import datetime
from typing import Any, Callable, Iterator, Optional, Tuple

import cbsync
import cbsync.compat.pybreaker as pybreaker


class Audit(pybreaker.CircuitBreakerListener):
    def before_call(
        self, cb: pybreaker.CircuitBreaker, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        pass

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: Optional[pybreaker.CircuitBreakerState],
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self.last: str = new_state.name


breaker = pybreaker.CircuitBreaker(
    fail_max=5,
    reset_timeout=60,
    success_threshold=2,
    exclude=[KeyError, lambda exc: isinstance(exc, ValueError)],
    listeners=[Audit()],
    state_storage=pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED),
    name="db",
    throw_new_error_on_trip=False,
)


@breaker
def fetch(key: str) -> int:
    return len(key)


@breaker()
def rows() -> Iterator[int]:
    yield 1


length: int = fetch("abc")
total: int = breaker.call(len, "abc")
state: str = breaker.current_state
state_object: pybreaker.CircuitBreakerState = breaker.state
counts: Tuple[int, int] = (breaker.fail_counter, breaker.success_counter)
breaker.fail_max = 10
breaker.reset_timeout = 30.0
breaker.success_threshold = 1
name: Optional[str] = breaker.name
opened: bool = breaker.open()
breaker.half_open()
breaker.close()
breaker.add_excluded_exceptions(LookupError)
breaker.remove_excluded_exception(LookupError)
listeners: Tuple[pybreaker.CircuitBreakerListener, ...] = breaker.listeners
engine: cbsync.CircuitBreaker = breaker.engine
opened_at: Optional[datetime.datetime] = pybreaker.CircuitMemoryStorage("open").opened_at
with breaker.calling():
    pass
try:
    fetch("x")
except pybreaker.CircuitBreakerError as error:
    cause: Optional[BaseException] = error.__cause__
