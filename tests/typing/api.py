"""Uses of the public API that mypy --strict must accept (checked by `tox -e type`)."""

import datetime
from typing import List, Optional

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

# The admission API, lookup by name, reporting.
permit: cbsync.Permit = breaker.acquire()
outcome: Optional[cbsync.Outcome] = permit.outcome(None)
with breaker.acquire() as held:
    trial: bool = held.trial
refusal: Optional[cbsync.CircuitOpenError] = breaker.rejection()
counted: cbsync.Outcome = breaker.classify(OSError("down"))
registry: cbsync.Registry = cbsync.default_registry()
found: cbsync.CircuitBreaker = cbsync.registry.get("typed-lookup")
again: cbsync.CircuitBreaker = cbsync.registry["typed-lookup"]
reason: cbsync.TransitionReason = cbsync.TransitionReason("manual", "drill")

from cbsync.reporting import Delta, Reader  # noqa: E402

deltas: List[Delta] = Reader(cbsync.registry).read()
moves: int = sum(deltas[0].transitions.values()) if deltas else 0
