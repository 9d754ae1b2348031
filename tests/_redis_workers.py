"""A worker process for tests/test_redis.py: one breaker on a RedisStore, driven by commands.

Started with the ``spawn`` method (a fresh interpreter: no thread is copied
by a fork), it reads ``(command, argument)`` pairs from its queue and puts
``(index, command, answer)`` on the shared results queue.
"""

import threading
from typing import Any, List, Tuple

import cbsync
from cbsync.integrations.redis import RedisStore

#: The shared breaker's settings: only the fleet reaches minimum_calls.
BREAKER = {
    "failure_threshold": None,
    "failure_rate_threshold": 0.5,
    "minimum_calls": 8,
    "timeout": 0.3,
    "half_open_max_calls": 2,
    "success_threshold": 2,
}


def _boom() -> None:
    raise OSError("dependency down")


def _state(breaker: cbsync.CircuitBreaker) -> Tuple[str, str, Any]:
    last = breaker.snapshot().transitions
    reason = last[-1].reason if last else cbsync.OpenReason("none")
    return breaker.state.value, reason.kind, reason.value


def run(url: str, prefix: str, index: int, commands: Any, results: Any) -> None:
    """The worker's main loop (the target of the spawned process)."""
    store = RedisStore(url, prefix=prefix, sync_interval=0.05)
    breaker = cbsync.CircuitBreaker("shared", store=store, **BREAKER)
    store.sync()
    results.put((index, "ready", store._origin))
    release = threading.Event()
    holders: List[threading.Thread] = []
    while True:
        command, argument = commands.get(timeout=60)
        if command == "stop":
            break
        if command == "fail":
            for _ in range(argument):
                try:
                    breaker.call(_boom)
                except (OSError, cbsync.CircuitOpenError):
                    pass
            results.put((index, command, _state(breaker)))
        elif command == "state":
            results.put((index, command, _state(breaker)))
        elif command == "call":
            try:
                breaker.call(lambda: None)
                results.put((index, command, ("admitted",)))
            except cbsync.CircuitOpenError as exc:
                results.put((index, command, ("rejected", exc.state.value, exc.reason.kind)))
        elif command == "trials":
            # ``argument`` threads ask for a trial at once; admitted ones hold
            # their permit until "release".  Answer how many were admitted.
            decided = threading.Semaphore(0)
            admitted: List[int] = []
            release.clear()

            def hold(admitted: List[int] = admitted, decided: Any = decided) -> None:
                admitted.append(1)
                decided.release()
                release.wait(30)

            def attempt(decided: Any = decided) -> None:
                try:
                    breaker.call(hold)
                except cbsync.CircuitOpenError:
                    decided.release()

            holders = [threading.Thread(target=attempt) for _ in range(argument)]
            for thread in holders:
                thread.start()
            for _ in holders:
                decided.acquire(timeout=30)
            results.put((index, command, len(admitted)))
        elif command == "release":
            release.set()
            for thread in holders:
                thread.join(30)
            results.put((index, command, _state(breaker)))
    store.close()
