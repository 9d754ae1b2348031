"""Helpers for testing code protected by cbsync.

``FakeClock`` drives breakers without waiting: give it to a
:class:`~cbsync.CircuitBreaker` or :class:`~cbsync.Registry` as ``clock=``
and move time with :meth:`FakeClock.advance`.

With pytest, the ``cbsync`` plugin (installed with the package) provides two
fixtures: ``fake_clock``, a ``FakeClock``, and ``breaker_registry``, a fresh
:class:`~cbsync.Registry` driven by ``fake_clock`` and installed as the
process default (``cbsync.registry``) for the duration of the test, so
``@cbsync.circuit``, ``cbsync.patch()`` and the integrations use it.
"""

import threading
from typing import Union

from ._errors import ConfigError

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that moves only when told to.

    >>> from cbsync.testing import FakeClock
    >>> clock = FakeClock(start=100.0)
    >>> clock()
    100.0
    >>> clock.advance(2.5)
    >>> clock()
    102.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = _seconds("start", start, allow_negative=True)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (zero or more)."""
        seconds = _seconds("seconds", seconds, allow_negative=False)
        with self._lock:
            self._now += seconds

    def __repr__(self) -> str:
        return "FakeClock({!r})".format(self._now)


def _seconds(name: str, value: Union[int, float], *, allow_negative: bool) -> float:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or value != value
        or value in (float("inf"), float("-inf"))
        or (value < 0 and not allow_negative)
    ):
        kind = "a finite number" if allow_negative else "a finite number of seconds >= 0"
        raise ConfigError("{}={!r} must be {}".format(name, value, kind))
    return float(value)
