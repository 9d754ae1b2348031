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

Integrations live in ``cbsync.integrations``; the interface for shared
stores in :mod:`cbsync.stores`; building blocks for writing integrations,
stores and reporters in :mod:`cbsync.toolkit`.
"""

from ._breaker import CircuitBreaker, Listener
from ._config import CircuitBreakerConfig
from ._decorators import circuit, guard, patch
from ._errors import CircuitBreakerError, CircuitOpenError, ConfigError, HalfOpenLimitReached
from ._events import Outcome
from ._loader import load_config
from ._metrics import MetricsSnapshot
from ._permit import Permit
from ._registry import Registry, default_registry, registry
from ._state import OpenReason, State, StateTransition, TransitionReason

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
    "Outcome",
    "Permit",
    "Registry",
    "State",
    "StateTransition",
    "TransitionReason",
    "circuit",
    "default_registry",
    "guard",
    "load_config",
    "patch",
    "registry",
]
