"""cbsync.compat.pybreaker against pybreaker itself, in one run.

Run ``python benchmarks/bench_compat.py [--quick]`` where cbsync and
pybreaker are installed (``tox -e bench`` runs it).  Printed, as Markdown:

* the wall time of 8 threads each making 20 calls of a function sleeping
  5 ms (I/O-bound), through ``call()`` and through the decorator, for no
  breaker, cbsync, the compat module and pybreaker -- the median of several
  interleaved rounds -- and how many times faster than pybreaker's each is
  (target for the compat module: at least 6x; pybreaker holds its lock
  across the call, so its threads take turns);
* the CLOSED cost of ``call()`` and of the decorator (ns/call, and the
  overhead over a bare function call) and of an OPEN rejection, single
  thread, for the same breakers.
"""

import argparse
import platform
import statistics
import sys
from importlib import metadata
from typing import Any, Callable, Dict, List, Tuple

import pybreaker
from run import io_wall_time, per_call_ns, per_rejection_ns, work  # benchmarks/run.py

import cbsync
import cbsync.compat.pybreaker as compat


def through_decorator(decorate: Callable[[Any], Any]) -> Callable[[Callable[[], Any]], Any]:
    """Call a function as decorated by ``decorate`` (decorated once, then reused)."""
    decorated: Dict[Any, Any] = {}

    def call(func: Callable[[], Any]) -> Any:
        wrapper = decorated.get(func)
        if wrapper is None:
            wrapper = decorated.setdefault(func, decorate(func))
        return wrapper()

    return call


def io_candidates() -> Dict[str, Callable[[Callable[[], Any]], Any]]:
    """How each breaker calls a function, by ``call()`` and by its decorator."""
    cb = cbsync.CircuitBreaker("io")
    shim = compat.CircuitBreaker(fail_max=5, reset_timeout=30)
    real = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    return {
        "no breaker": lambda func: func(),
        "cbsync call()": cb.call,
        "compat call()": shim.call,
        "compat @breaker": through_decorator(shim),
        "pybreaker call()": real.call,
        "pybreaker @breaker": through_decorator(real),
    }


def io_rounds(rounds: int) -> Dict[str, List[float]]:
    """Wall times of the 8-thread I/O run, the candidates interleaved in each round."""
    candidates = io_candidates()
    walls: Dict[str, List[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, call in candidates.items():
            walls[name].append(io_wall_time(call))
    return walls


def cpu_costs(loops: int, repeats: int) -> Tuple[float, Dict[str, Tuple[float, float, float]]]:
    """Bare call ns, and per breaker: call() ns, decorated ns, OPEN rejection ns."""
    cb = cbsync.CircuitBreaker("cpu")
    shim = compat.CircuitBreaker(fail_max=5, reset_timeout=30)
    real = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    cb_open = cbsync.CircuitBreaker("open", timeout=3600)
    cb_open.trip()
    shim_open = compat.CircuitBreaker(reset_timeout=3600)
    shim_open.open()
    real_open = pybreaker.CircuitBreaker(reset_timeout=3600)
    real_open.open()
    rows = {
        "cbsync": (cb, cb(work), cb_open),
        "compat": (shim, shim(work), shim_open),
        "pybreaker": (real, real(work), real_open),
    }
    bare = per_call_ns(work, loops, repeats)
    costs = {}
    for name, (breaker, decorated, opened) in rows.items():
        costs[name] = (
            per_call_ns(lambda call=breaker.call: call(work), loops, repeats),
            per_call_ns(decorated, loops, repeats),
            per_rejection_ns(lambda call=opened.call: call(work), loops, repeats),
        )
    return bare, costs


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and loops")
    options = parser.parse_args(argv)
    rounds = 3 if options.quick else 7
    loops, repeats = (20_000, 3) if options.quick else (100_000, 5)

    print(
        "cbsync {} / pybreaker {} on Python {} ({})\n".format(
            cbsync.__version__,
            metadata.version("pybreaker"),
            platform.python_version(),
            platform.machine(),
        )
    )
    walls = io_rounds(rounds)
    median = {name: statistics.median(times) for name, times in walls.items()}
    print(
        "8 threads x 20 calls of a 5 ms sleep (I/O-bound), median of {} rounds:\n".format(rounds)
    )
    print("| breaker | wall time ms | pybreaker call()'s time / this |")
    print("|---|---|---|")
    for name, wall in median.items():
        print(
            "| {} | {:.0f} | {:.1f} |".format(name, wall * 1000, median["pybreaker call()"] / wall)
        )

    bare, costs = cpu_costs(loops, repeats)
    print("\nOne thread, CPU-bound (bare function call: {:.0f} ns):\n".format(bare))
    print(
        "| breaker | call() ns | call() overhead ns | decorated ns | decorated overhead ns | "
        "OPEN rejection ns |"
    )
    print("|---|---|---|---|---|---|")
    for name, (via_call, decorated, rejection) in costs.items():
        print(
            "| {} | {:.0f} | {:.0f} | {:.0f} | {:.0f} | {:.0f} |".format(
                name, via_call, via_call - bare, decorated, decorated - bare, rejection
            )
        )

    speedup = min(
        median["pybreaker call()"] / median["compat call()"],
        median["pybreaker @breaker"] / median["compat @breaker"],
    )
    print("\nTargets:")
    print(
        "- 8-thread I/O through the compat breaker ≥ 6x faster than through pybreaker "
        "(call() and decorator, the lower): {:.1f}x, {}".format(
            speedup, "met" if speedup >= 6 else "NOT met"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
