"""Uses of the public API that mypy --strict must accept (checked by `tox -e type`)."""

import datetime
from typing import Optional

import cbsync

breaker = cbsync.CircuitBreaker(
    "typed", failure_threshold=3, timeout=datetime.timedelta(seconds=30), window_type="count_based"
)
config: cbsync.CircuitBreakerConfig = breaker.config
timeout: float = config.timeout


@breaker
def fetch(currency: str) -> float:
    return 1.0


rate: float = fetch("EUR")
result: int = breaker.call(len, "abc")
state: cbsync.State = breaker.state
retry: Optional[float] = breaker.retry_after
snapshot: cbsync.MetricsSnapshot = breaker.snapshot()
failure_rate: Optional[float] = snapshot.window_failure_rate
with breaker.guard():
    pass


class Printer(cbsync.Listener):
    def on_state_change(
        self,
        breaker: cbsync.CircuitBreaker,
        old: cbsync.State,
        new: cbsync.State,
        reason: cbsync.OpenReason,
    ) -> None:
        print(breaker.name, old, new, reason.kind, reason.value)


breaker.add_listener(Printer())
try:
    fetch("USD")
except cbsync.CircuitOpenError as error:
    seconds: Optional[float] = error.retry_after
    kind: str = error.reason.kind
