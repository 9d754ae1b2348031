"""The load both exporters' exactness tests run: 8 threads calling breakers while a reader reads.

The breakers never open (no threshold), so every kind of outcome keeps
happening: successes, failures, ignored exceptions, slow calls (2 s on the
injected clock); a tripped breaker adds rejections.
"""

import threading
from typing import Any, Callable, Tuple

from _support import fail, ok

import cbsync
from cbsync.testing import FakeClock

#: The breakers called, and the tripped one that rejects.
NAMES = ("api.example.com:443", "orders-db", "rates")
TRIPPED = "closed-off"
THREADS = 8
CALLS = 2000
#: Every 50th call of each thread also calls the tripped breaker.
REJECTED = THREADS * len(range(0, CALLS, 50))


def fleet() -> Tuple[cbsync.Registry, FakeClock]:
    """A registry with the breakers of NAMES and the tripped one, on a fake clock."""
    clock = FakeClock()
    breakers = cbsync.Registry(clock=clock)
    for name in NAMES:
        breakers.get(
            name,
            failure_threshold=None,
            failure_rate_threshold=None,
            slow_call_duration=1.0,
            ignore=(KeyError,),
        )
    breakers.get(TRIPPED).trip()
    return breakers, clock


def hammer(breakers: cbsync.Registry, clock: FakeClock, read: Callable[[], Any]) -> int:
    """THREADS threads make CALLS calls each while ``read()`` runs in a loop in
    another thread; all start together (a Barrier).  Returns how many reads ran."""

    def slow() -> str:
        clock.advance(2.0)
        return "slow"

    work = [ok, fail(), fail(KeyError("ignored")), slow]
    tripped = breakers[TRIPPED]
    barrier = threading.Barrier(THREADS + 1)
    done = threading.Event()
    reads = []

    def caller(seed: int) -> None:
        barrier.wait()
        for i in range(CALLS):
            try:
                breakers[NAMES[(i + seed) % 3]].call(work[(i // 3 + seed) % 4])
            except (OSError, KeyError):
                pass
            if i % 50 == 0:
                try:
                    tripped.call(ok)
                except cbsync.CircuitOpenError:
                    pass

    def reader() -> None:
        barrier.wait()
        while not done.is_set():
            reads.append(read())

    workers = [threading.Thread(target=caller, args=(seed,)) for seed in range(THREADS)]
    watcher = threading.Thread(target=reader)
    for thread in [*workers, watcher]:
        thread.start()
    for thread in workers:
        thread.join(60)
    done.set()
    watcher.join(60)
    return len(reads)
