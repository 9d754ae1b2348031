"""Helpers for the tests that need Redis: the server, unique prefixes, cleanup, polling.

Tests read ``CBSYNC_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``).
Outside CI a missing server skips them; with ``CI`` set it fails them.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from typing import Callable, Iterator, List, Optional, Tuple

import pytest
import redis

from cbsync.integrations.redis import RedisStore

REDIS_URL = os.environ.get("CBSYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def require_redis(url: str = REDIS_URL) -> None:
    """Skip the test (outside CI) or fail it (in CI) when Redis does not answer."""
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        message = "Redis at {} does not answer: {}".format(url, exc)
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: the service is required)")
        pytest.skip(message)
    finally:
        client.close()


def unique_prefix() -> str:
    return "cbsync-test:{}:".format(uuid.uuid4().hex[:12])


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    except (redis.RedisError, OSError):
        pass  # a test that killed its own server has nothing left to clean
    finally:
        client.close()


class Stores:
    """Makes RedisStores on one unique prefix; closes them and deletes the keys afterwards."""

    def __init__(self, url: str = REDIS_URL) -> None:
        self.url = url
        self.prefix = unique_prefix()
        self._made: List[RedisStore] = []

    def __call__(self, sync_interval: float = 0.05, url: Optional[str] = None) -> RedisStore:
        store = RedisStore(url or self.url, prefix=self.prefix, sync_interval=sync_interval)
        self._made.append(store)
        return store

    def client(self) -> "redis.Redis":
        return redis.Redis.from_url(self.url, socket_timeout=2.0)

    def close(self) -> None:
        for store in self._made:
            store.close()
        delete_prefix(self.url, self.prefix)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, message: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out after {}s waiting for {}".format(timeout, message))
        time.sleep(0.01)  # real time: waiting for another thread or process to act


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on a free port, which a test may kill and restart."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not on PATH (CI is set: it is required)")
            pytest.skip("redis-server is not on PATH")
        self.port = free_port()
        self.url = "redis://127.0.0.1:{}/0".format(self.port)
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        assert self.binary is not None
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10.0
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.RedisError, OSError):
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                    time.sleep(0.02)  # real time: waiting for redis-server to listen
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def client(self) -> "redis.Redis":
        return redis.Redis.from_url(self.url, socket_timeout=2.0)


@contextlib.contextmanager
def private_fleet() -> Iterator[Tuple[RedisServer, RedisStore, RedisStore]]:
    """A private redis-server, an application's store on it (syncing every 50 ms)
    and an operator's store; all closed and the server killed afterwards."""
    server = RedisServer()
    server.start()
    worker = RedisStore(server.url, sync_interval=0.05)
    operator = RedisStore(server.url)
    try:
        yield server, worker, operator
    finally:
        worker.close()
        operator.close()
        server.kill()
