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


@pytest.fixture
def stores():
    """RedisStores on the test server, one unique prefix; keys deleted afterwards."""
    from _redis_support import Stores, require_redis  # imports redis: only when used

    require_redis()
    made = Stores()
    try:
        yield made
    finally:
        made.close()
