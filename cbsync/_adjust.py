"""Moves other engines need of a breaker beyond its public API (``cbsync.compat``).

pybreaker lets code change ``fail_max``, ``reset_timeout`` and
``success_threshold`` of a live breaker, move it by hand to OPEN (for one
``reset_timeout``, after which it admits a trial call) or to HALF_OPEN, and
read its trial-success count.  cbsync's public API has none of these: a
breaker's configuration is a frozen value, ``trip()`` is FORCED_OPEN (which
never times out), and HALF_OPEN is reached only through the OPEN period or a
health check.  The functions here do those few things the way the core's own
methods do them -- under the breaker's lock, folding the lock-free successes
first, swapping state objects, delivering events after the lock is released
-- so that the breaker's invariants hold whatever thread calls them.

This module is part of the breaker (as ``_machine.py`` is), for the
emulation of other libraries' APIs: ``cbsync.compat.pybreaker`` stands on it,
and ``tests/test_compat_pybreaker.py`` covers every function.  A store
learns of a new configuration through ``StoreBinding.reconfigured``.

Changing the configuration keeps the breaker: the frozen
:class:`~CircuitBreakerConfig` is replaced by another frozen value
(``dataclasses.replace``), under the lock, so each decision is made wholly
under the old or wholly under the new one, and the breaker's state, window,
counts, listeners and store binding carry on unchanged.
"""

import dataclasses
from typing import Any, List, Optional

from ._breaker import CircuitBreaker
from ._config import CircuitBreakerConfig, open_period
from ._events import Event
from ._state import State, TransitionReason
from ._states import HalfOpen, Open

_OPEN = State.OPEN


def replace_config(breaker: CircuitBreaker, **changes: Any) -> CircuitBreakerConfig:
    """Give ``breaker`` the configuration ``dataclasses.replace(config, **changes)``.

    Raises :class:`cbsync.ConfigError` (and changes nothing) for a bad value.
    A changed ``timeout`` moves the end of a current OPEN period by the
    difference, as pybreaker measures its period with the ``reset_timeout``
    of the moment; with a shared store the new end is published, as any
    local OPEN period is, and the store is told of the new configuration
    (``StoreBinding.reconfigured``).
    """
    with breaker._lock:
        old = breaker._config
        new = dataclasses.replace(old, **changes)
        breaker._config = new
        breaker._link._config = new
        current = breaker._current
        if isinstance(current, Open) and new.timeout != old.timeout:
            current.until += new.timeout - old.timeout
            _publish_open(breaker, current.reason)
        binding = breaker._binding
        if binding is not None:
            binding.reconfigured(new)
        breaker._refresh_fast()
    return new


def open_for_period(breaker: CircuitBreaker, reason: TransitionReason) -> None:
    """Move ``breaker`` to OPEN for one OPEN period from now (pybreaker's ``open()``).

    An OPEN breaker starts its period again, without a state change; any
    other state (a trial call still running in HALF_OPEN included: its
    outcome will count in the totals only) changes to OPEN.
    """
    events: List[Event] = []
    with breaker._lock:
        breaker._fold_pending()
        until = breaker._now() + open_period(breaker._config, breaker._reopen_count)
        current = breaker._current
        if isinstance(current, Open):
            current.until = until
            current.reason = reason
            _publish_open(breaker, reason)
        else:
            breaker._transition(Open(until, reason), reason, events)
        breaker._refresh_fast()
    breaker._emit(events)


def half_open(breaker: CircuitBreaker, reason: TransitionReason) -> None:
    """Move ``breaker`` to HALF_OPEN with no trial call in flight (pybreaker's
    ``half_open()``); a breaker already HALF_OPEN stays as it is."""
    events: List[Event] = []
    with breaker._lock:
        current = breaker._current
        if not isinstance(current, HalfOpen):
            breaker._fold_pending()
            opened_for = current.reason if current.reason is not None else reason
            breaker._transition(HalfOpen(opened_for), reason, events)
            breaker._refresh_fast()
    breaker._emit(events)


def start_in(breaker: CircuitBreaker, state: State, reason: TransitionReason) -> None:
    """Put a breaker that was just built, and has no listener yet, in ``state``.

    The move is local: with a shared store it is not published as a
    transition.  A store that finds the fleet's breaker never moved gives it
    this state at the first sync; one that finds a fleet state adopts it
    instead -- the initial state of a pybreaker storage is only the state of
    a breaker nobody used yet.
    """
    with breaker._lock:
        now = breaker._now()
        if state is _OPEN:
            new: Any = Open(now + open_period(breaker._config, 0), reason)
        else:
            new = HalfOpen(reason)
        breaker._transition(new, reason, [], remote=True)
        breaker._refresh_fast()


def consecutive_failures(breaker: CircuitBreaker) -> int:
    """The breaker's current streak of failures (read without the lock)."""
    count: int = breaker._consecutive
    return count


def trial_successes(breaker: CircuitBreaker) -> int:
    """Successful trial calls of the current HALF_OPEN period; 0 in any other state."""
    current = breaker._current
    return current.successes if isinstance(current, HalfOpen) else 0


def _publish_open(breaker: CircuitBreaker, reason: Optional[TransitionReason]) -> None:
    """An OPEN period was moved without a transition: tell the store (lock held)."""
    binding = breaker._binding
    if binding is not None:
        binding.changed(breaker._describe(_OPEN, reason or TransitionReason("manual")))
