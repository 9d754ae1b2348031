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

from . import _registry
from ._breaker import CircuitBreaker
from ._config import CircuitBreakerConfig
from ._decorators import circuit, guard, patch
from ._errors import CircuitBreakerError, CircuitOpenError, ConfigError, HalfOpenLimitReached
from ._events import Listener
from ._loader import load_config
from ._metrics import MetricsSnapshot
from ._registry import Registry
from ._state import OpenReason, State, StateTransition

#: The process-wide default :class:`Registry` (swapped by the pytest fixture).
registry = _registry.default_registry()

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
    "Registry",
    "State",
    "StateTransition",
    "circuit",
    "guard",
    "load_config",
    "patch",
    "registry",
]
