"""The narrow view of a breaker given to its store and its health checks.

A store's binding (``stores.BreakerHandle``) and a health check
(``_health.Target``) need a few things of a breaker -- its counts, its
clock, a way to change its state under its lock -- and nothing else.  A
:class:`Link` gives exactly that, so neither reaches into the breaker.  It
holds the breaker weakly: a store keeps no breaker alive (a health check
keeps its own strong reference while it is registered).
"""

import weakref
from typing import TYPE_CHECKING, Callable, Optional

from ._config import CircuitBreakerConfig, open_period
from ._state import State, TransitionReason
from ._states import HalfOpen, Open
from .stores import LocalTransition, RemoteState, Totals

if TYPE_CHECKING:
    from ._events import StateObserver
    from ._machine import Machine


class Link:
    """A breaker as its store and health checks see it (see the module docstring)."""

    __slots__ = ("__weakref__", "_config", "_name", "_ref")

    def __init__(self, machine: "Machine") -> None:
        self._ref = weakref.ref(machine)
        self._name = machine._name
        self._config = machine._config

    def _machine(self) -> "Machine":
        machine = self._ref()
        if machine is None:
            raise ReferenceError("circuit breaker {!r} no longer exists".format(self._name))
        return machine

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> CircuitBreakerConfig:
        return self._config

    @property
    def alive(self) -> bool:
        return self._ref() is not None

    @property
    def state(self) -> State:
        return self._machine()._current.state

    @property
    def trial_calls(self) -> int:
        current = self._machine()._current
        return current.in_flight if isinstance(current, HalfOpen) else 0

    def now(self) -> float:
        return self._machine()._now()

    def totals(self) -> Totals:
        return self._machine()._totals()

    def totals_at_fork(self) -> Totals:
        return self._machine()._totals_at_fork()

    def reason(self) -> Optional[TransitionReason]:
        return self._machine()._current.reason

    def open_period(self) -> float:
        return open_period(self._config, self._machine()._reopen_count)

    def describe(self, old: State, cause: TransitionReason) -> LocalTransition:
        return self._machine()._describe(old, cause)

    def synchronise(self, update: Callable[[], Optional[RemoteState]]) -> bool:
        machine = self._ref()
        if machine is None:
            return False
        machine._synchronise(update)
        return True

    # -- for health checks (_health.Target) --------------------------------

    def open_token(self) -> Optional[object]:
        current = self._machine()._current
        return current if isinstance(current, Open) else None

    def recover(self, token: object, close: bool, active: Callable[[], bool]) -> bool:
        return self._machine()._recover(token, close, active)

    def watch(self, observer: "StateObserver") -> None:
        machine = self._machine()
        with machine._lock:
            machine._observers = (*machine._observers, observer)

    def unwatch(self, observer: "StateObserver") -> None:
        machine = self._ref()
        if machine is None:
            return
        with machine._lock:
            machine._observers = tuple(o for o in machine._observers if o is not observer)

    def __repr__(self) -> str:
        return "<cbsync link to {!r}{}>".format(self._name, "" if self.alive else " (gone)")
