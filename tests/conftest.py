"""Fixtures shared by the tests."""

import os

import pytest
from _support import Clock, Recorder

import cbsync

# Subprocesses the tests start import the cbsync this process imported: the
# source tree for a plain `pytest` in a checkout (an installed cbsync, as
# under tox, is found by any Python of the environment anyway).
_HOME = os.path.dirname(os.path.dirname(os.path.abspath(cbsync.__file__)))
if os.path.basename(_HOME) not in ("site-packages", "dist-packages"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [_HOME, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )


def pytest_configure(config: pytest.Config) -> None:
    # redis-py 4.0 (the oldest release cbsync supports, in `tox -e oldest`)
    # drops some connections' sockets without closing them; the garbage
    # collector then warns about them in whichever test it happens to run,
    # and warnings are errors here.  Later releases close them (redis-py
    # #950, #2859).  Only those unclosed-socket reports, only with redis-py 4.0.
    try:
        import redis
    except ImportError:
        return
    if tuple(int(part) for part in redis.__version__.split(".")[:2]) < (4, 1):
        unclosed = r"ignore:Exception ignored in. <socket\.socket"
        config.addinivalue_line(
            "filterwarnings", unclosed + ":pytest.PytestUnraisableExceptionWarning"
        )


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
