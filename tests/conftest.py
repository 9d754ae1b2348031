"""Fixtures shared by the tests."""

import pytest
from _support import Clock, Recorder


@pytest.fixture
def clock() -> Clock:
    """A hand-driven clock for breakers."""
    return Clock()


@pytest.fixture
def recorder() -> Recorder:
    """A listener that records events."""
    return Recorder()
