"""Memory stays bounded whatever the call rate."""

import gc
import tracemalloc

from _support import Clock

import cbsync

CALLS = 1_000_000


def test_a_million_calls_through_a_time_window_stay_under_64_kib():
    """1,000,000 calls (injected clock advancing) grow traced memory by less than 64 KiB."""
    clock = Clock()
    breaker = cbsync.CircuitBreaker(
        "memory",
        clock=clock,
        window_type="time_based",
        failure_window="60s",
        failure_threshold=None,
        failure_rate_threshold=None,
        slow_call_duration="1s",
        failure_result=bool,  # a truthy result counts as a failure
    )
    outcomes = [False] * 9 + [True]

    def step(i):
        clock.now += 0.001  # 1,000 calls a second: the window rotates all along
        return outcomes[i % 10]

    for i in range(1000):  # warm up: caches, the histogram, interned floats
        breaker.call(step, i)
    breaker.snapshot()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(CALLS):
            breaker.call(step, i)
        snapshot = breaker.snapshot()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert snapshot.calls_allowed == CALLS + 1000
    assert snapshot.failures == (CALLS + 1000) // 10
    assert grown < 64 * 1024, grown
