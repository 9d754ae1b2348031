"""The ``cbsync`` pytest plugin (entry point ``pytest11``): test helpers.

Fixtures:

* ``fake_clock`` -- a :class:`cbsync.testing.FakeClock` starting at 0.
* ``breaker_registry`` -- a fresh, empty :class:`cbsync.Registry` driven by
  ``fake_clock`` and installed as the process default (``cbsync.registry``)
  for the duration of the test, so that ``@cbsync.circuit``,
  ``cbsync.patch()`` and the integrations used without ``registry=`` take
  their breakers from it.  The previous default is restored afterwards.
"""

from typing import Iterator

import pytest

from ._registry import Registry, set_default_registry
from .testing import FakeClock


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock that moves only by ``fake_clock.advance(seconds)``."""
    return FakeClock()


@pytest.fixture
def breaker_registry(fake_clock: FakeClock) -> Iterator[Registry]:
    """A fresh Registry on ``fake_clock``, the process default during the test."""
    registry = Registry(clock=fake_clock)
    previous = set_default_registry(registry)
    try:
        yield registry
    finally:
        set_default_registry(previous)
