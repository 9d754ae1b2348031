"""cbsync: a synchronous, thread-safe circuit breaker for legacy Python code.

>>> import cbsync
>>> breaker = cbsync.CircuitBreaker("rates", failure_threshold=3, timeout="30s")
>>> @breaker
... def fetch_rates():
...     return {"EUR": 1.0}
>>> fetch_rates()
{'EUR': 1.0}
>>> fetch_rates.breaker.state
<State.CLOSED: 'closed'>
"""

from ._breaker import CircuitBreaker
from ._config import CircuitBreakerConfig
from ._errors import CircuitBreakerError, CircuitOpenError, ConfigError, HalfOpenLimitReached
from ._events import Listener
from ._metrics import MetricsSnapshot
from ._state import OpenReason, State, StateTransition

__version__ = "0.1.0"

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerError",
    "CircuitOpenError",
    "ConfigError",
    "HalfOpenLimitReached",
    "Listener",
    "MetricsSnapshot",
    "OpenReason",
    "State",
    "StateTransition",
]
