"""Compare cbsync with pybreaker, circuitbreaker and a minimal lock+counter breaker.

Run with ``tox -e bench`` (or ``python benchmarks/run.py`` where cbsync,
pybreaker and circuitbreaker are installed).  Everything runs in one process,
so the ratios compare like with like on whatever machine runs it; absolute
nanoseconds vary from machine to machine and run to run.

Printed, as a Markdown table:

* closed-state cost of ``call()`` and of the decorator, as ns/call, as
  overhead over a bare function call, and that overhead as a ratio to
  pybreaker's;
* the cost of a rejection by an OPEN breaker, and its ratio to pybreaker's;
* the wall time of 8 threads each making 20 calls of a function sleeping 5 ms
  (I/O-bound), and how many times faster than pybreaker's that is;
* scaling: calls/s of 8 threads sharing one CLOSED breaker over 1 thread,
  divided by the same ratio for a plain function (1.0 = scales like no breaker
  at all), as the median of several interleaved pairs.
"""

import argparse
import platform
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import circuitbreaker
import pybreaker

import cbsync


def work() -> int:
    return 1


def fails() -> None:
    raise OSError("down")


class MinimalBreaker:
    """The floor: one lock, one state check, one counter — nothing else."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = False
        self.calls = 0

    def call(self, func: Callable[[], Any]) -> Any:
        if self.open:
            raise RuntimeError("open")
        result = func()
        with self.lock:
            self.calls += 1
        return result


def per_call_ns(call: Callable[[], Any], loops: int, repeats: int) -> float:
    """Best-of-``repeats`` nanoseconds per call over ``loops`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(loops):
            call()
        best = min(best, (time.perf_counter_ns() - start) / loops)
    return best


def per_rejection_ns(call: Callable[[], Any], loops: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(loops):
            try:
                call()
            except Exception:
                pass
        best = min(best, (time.perf_counter_ns() - start) / loops)
    return best


def closed_candidates() -> Dict[str, Tuple[Callable[[], Any], Callable[[], Any]]]:
    """name -> (call through call(), call through the decorator)."""
    cb = cbsync.CircuitBreaker("bench")
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    cc = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)
    minimal = MinimalBreaker()
    cb_decorated, pb_decorated, cc_decorated = cb(work), pb(work), cc(work)
    return {
        "cbsync": (lambda: cb.call(work), cb_decorated),
        "pybreaker": (lambda: pb.call(work), pb_decorated),
        "circuitbreaker": (lambda: cc.call(work), cc_decorated),
        "minimal lock+counter": (lambda: minimal.call(work), lambda: minimal.call(work)),
    }


def open_candidates() -> Dict[str, Callable[[], Any]]:
    cb = cbsync.CircuitBreaker("bench-open", failure_threshold=1, timeout="1h")
    try:
        cb.call(fails)
    except OSError:
        pass
    pb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    pb.open()
    cc = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    try:
        cc.call(fails)
    except OSError:
        pass
    minimal = MinimalBreaker()
    minimal.open = True
    assert cb.state is cbsync.State.OPEN
    assert cc.opened
    return {
        "cbsync": lambda: cb.call(work),
        "pybreaker": lambda: pb.call(work),
        "circuitbreaker": lambda: cc.call(work),
        "minimal lock+counter": lambda: minimal.call(work),
    }


def io_wall_time(call: Callable[[Callable[[], Any]], Any], threads: int = 8) -> float:
    """Seconds for ``threads`` threads each making 20 calls of a 5 ms sleep."""

    def io() -> None:
        time.sleep(0.005)  # real time: the I/O-bound work being protected

    barrier = threading.Barrier(threads + 1)

    def body() -> None:
        barrier.wait()
        for _ in range(20):
            call(io)

    workers = [threading.Thread(target=body) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def throughput(call: Callable[[], Any], threads: int, seconds: float) -> float:
    """Aggregate calls per second of ``threads`` threads calling for ``seconds``."""
    stop = threading.Event()
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)

    def body(index: int) -> None:
        barrier.wait()
        n = 0
        while not stop.is_set():
            for _ in range(200):
                call()
            n += 200
        counts[index] = n

    workers = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)  # real time: the measuring period
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


def scaling(pairs: int, seconds: float) -> Tuple[float, List[float]]:
    """Median over interleaved pairs of (breaker 8/1 ratio) / (plain 8/1 ratio)."""
    breaker = cbsync.CircuitBreaker("scaling")

    def through_breaker() -> int:
        return breaker.call(work)

    ratios = []
    for _ in range(pairs):
        plain1 = throughput(work, 1, seconds)
        cb1 = throughput(through_breaker, 1, seconds)
        plain8 = throughput(work, 8, seconds)
        cb8 = throughput(through_breaker, 8, seconds)
        ratios.append((cb8 / cb1) / (plain8 / plain1))
    return statistics.median(ratios), ratios


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer loops (a smoke run)")
    options = parser.parse_args(argv)
    loops, repeats = (20_000, 3) if options.quick else (200_000, 7)
    pairs, seconds = (3, 0.2) if options.quick else (7, 0.5)

    print(
        "cbsync {} / pybreaker {} / circuitbreaker {} on Python {} ({})\n".format(
            cbsync.__version__,
            getattr(pybreaker, "__version__", "?"),
            getattr(circuitbreaker, "__version__", "?"),
            platform.python_version(),
            platform.machine(),
        )
    )
    bare = per_call_ns(work, loops, repeats)
    closed = {
        name: (per_call_ns(via_call, loops, repeats), per_call_ns(decorated, loops, repeats))
        for name, (via_call, decorated) in closed_candidates().items()
    }
    rejection = {
        name: per_rejection_ns(call, loops, repeats) for name, call in open_candidates().items()
    }
    pb_call, pb_decorated = closed["pybreaker"][0] - bare, closed["pybreaker"][1] - bare
    print("bare function call: {:.0f} ns\n".format(bare))
    print(
        "| breaker | call() ns | call() overhead ns | x pybreaker's | "
        "decorated ns | decorated overhead ns | x pybreaker's | "
        "OPEN rejection ns | x pybreaker's |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (via_call, decorated) in closed.items():
        row = "| {} | {:.0f} | {:.0f} | {:.2f} | {:.0f} | {:.0f} | {:.2f} | {:.0f} | {:.2f} |"
        print(
            row.format(
                name,
                via_call,
                via_call - bare,
                (via_call - bare) / pb_call,
                decorated,
                decorated - bare,
                (decorated - bare) / pb_decorated,
                rejection[name],
                rejection[name] / rejection["pybreaker"],
            )
        )

    cb_io = cbsync.CircuitBreaker("io")
    pb_io = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    cc_io = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)
    minimal_io = MinimalBreaker()
    walls = {
        "no breaker": io_wall_time(lambda f: f()),
        "cbsync": io_wall_time(cb_io.call),
        "pybreaker": io_wall_time(pb_io.call),
        "circuitbreaker": io_wall_time(cc_io.call),
        "minimal lock+counter": io_wall_time(minimal_io.call),
    }
    print("\n8 threads x 20 calls of a 5 ms sleep (I/O-bound):\n")
    print("| breaker | wall time ms | pybreaker's time / this |")
    print("|---|---|---|")
    for name, wall in walls.items():
        print("| {} | {:.0f} | {:.1f} |".format(name, wall * 1000, walls["pybreaker"] / wall))

    median, ratios = scaling(pairs, seconds)
    print(
        "\n8 threads sharing one CLOSED cbsync breaker: (8-thread / 1-thread calls/s) / the "
        "same for a plain function = {:.2f} (median of {} interleaved pairs: {})".format(
            median, len(ratios), ", ".join("{:.2f}".format(r) for r in ratios)
        )
    )

    targets = [
        ("call() overhead ≤ 0.5x pybreaker's", (closed["cbsync"][0] - bare) / pb_call <= 0.5),
        ("OPEN rejection ≤ 0.5x pybreaker's", rejection["cbsync"] / rejection["pybreaker"] <= 0.5),
        ("8-thread I/O ≥ 6x faster than pybreaker", walls["pybreaker"] / walls["cbsync"] >= 6),
        ("8-thread scaling ≥ 0.85 of a plain function's", median >= 0.85),
    ]
    print("\nTargets:")
    for label, met in targets:
        print("- {}: {}".format(label, "met" if met else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
