"""What StatsD reporting costs a call: ``call()`` with a StatsdReporter attached vs not.

Run ``python benchmarks/bench_statsd.py [--calls N] [--rounds R] [--threads T] [--io]``.
A StatsdReporter never runs on a caller's thread: it reads the breakers'
totals every ``interval`` from its own thread.  A call pays only for the
listener that pushes the state gauge at once (it overrides only
``on_state_change``, which the lock-free CLOSED path never calls) and for the
reporter's thread taking the GIL, and each breaker's lock, while it reads.

Each case calls a CLOSED breaker N times (``f`` returns 1, or ``--io``: a
small system call), or, with T threads, for as long from all of them (wall
time per call, from their throughput); the rounds of all cases are interleaved and
each case's time is divided by the baseline's of the same round, so machine
noise hits both; the median ratio is printed, and the extra time as a share
of what ``call()`` itself adds to a bare function call.  Cases:

* no reporter -- the baseline;
* a StatsdReporter at the default interval (10 s), UDP to a closed port;
* the same reading 1,000 times more often (every 10 ms), the worst case a
  configuration could ask for;
* the same every 10 ms over 100 breakers, so the reader holds the GIL longer.

Then the cost of one interval: ``flush()`` of 1,000 breakers, and that cost as
a share of one core at the default interval.
"""

import argparse
import os
import platform
import socket
import statistics
import sys
import time
from typing import Callable, List, Optional, Tuple

import statsd
from run import per_call_ns, throughput, work  # benchmarks/run.py, beside this script

import cbsync
from cbsync.integrations.statsd import StatsdReporter


def small_io() -> int:
    return os.stat(".").st_mode


def closed_udp_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def round_ns(call: Callable[[], object], calls: int, threads: int) -> float:
    """Nanoseconds per call: of ``calls`` calls in one thread, or of ``threads``
    threads calling for ``calls`` microseconds."""
    if threads == 1:
        return per_call_ns(call, calls, 1)
    return 1e9 / throughput(call, threads, seconds=calls / 1e6)


#: (label, interval, breakers in the reporter's registry); None: no reporter.
CASES: List[Tuple[str, Optional[str], int]] = [
    ("no reporter", None, 1),
    ("StatsdReporter, every 10 s (default)", "10s", 1),
    ("StatsdReporter, every 10 ms", "10ms", 1),
    ("StatsdReporter, every 10 ms, 100 breakers", "10ms", 100),
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="threads sharing the calls")
    parser.add_argument("--io", action="store_true", help="protect a small system call")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.calls % args.threads:
        parser.error("--threads must be at least 1 and divide --calls")
    func = small_io if args.io else work
    client = statsd.StatsClient("127.0.0.1", closed_udp_port())
    cases: List[Tuple[Callable[[], object], Callable[[], Optional[StatsdReporter]]]] = []
    for _, interval, count in CASES:
        registry = cbsync.Registry()
        for index in range(1, count):
            registry.get("bench-{}".format(index))  # read too, never called
        breaker = registry.get("bench-0")

        def attach(registry: cbsync.Registry = registry, interval: Optional[str] = interval):
            # A reporter only for its own case's rounds: the thread of another
            # case's reporter would slow every case down alike.
            if interval is None:
                return None
            return StatsdReporter(registry, client=client, interval=interval)

        cases.append((lambda breaker=breaker: breaker.call(func), attach))
    bare = statistics.median(round_ns(func, args.calls, 1) for _ in range(5))
    ratios: List[List[float]] = [[] for _ in CASES]
    times: List[List[float]] = [[] for _ in CASES]
    for call, _ in cases:
        round_ns(call, args.calls // 10, args.threads)  # warm up
    for _ in range(args.rounds):
        measured = []
        for call, attach in cases:
            reporter = attach()
            measured.append(round_ns(call, args.calls, args.threads))
            if reporter is not None:
                reporter.close(flush=False)
        for index, ns in enumerate(measured):
            times[index].append(ns)
            ratios[index].append(ns / measured[0])

    print(
        "Python {} on {}; statsd {}; {} calls x {} interleaved rounds in {} thread(s); "
        "f = {}; bare f() {:.0f} ns".format(
            platform.python_version(),
            platform.machine(),
            statsd.__version__,
            args.calls,
            args.rounds,
            args.threads,
            "os.stat('.')" if args.io else "return 1",
            bare,
        )
    )
    print()
    print("| case | call() ns | x no reporter | extra / call() overhead |")
    print("|---|---:|---:|---:|")
    baseline = statistics.median(times[0])
    overhead = baseline - bare
    for (label, _, _), case_times, case_ratios in zip(CASES, times, ratios):
        ratio = statistics.median(case_ratios)
        extra = (ratio - 1) * baseline / overhead if overhead > 0 else float("nan")
        print(
            "| {} | {:.0f} | {:.3f} | {:+.1%} |".format(
                label, statistics.median(case_times), ratio, extra
            )
        )

    registry = cbsync.Registry()
    for index in range(1000):
        registry.get("b{}".format(index)).call(work)
    reporter = StatsdReporter(registry, client=client, interval="1h")
    reporter.flush()
    costs = []
    for _ in range(10):
        for name in registry:
            registry[name].call(work)
        start = time.perf_counter()
        reporter.flush()
        costs.append(time.perf_counter() - start)
    reporter.close(flush=False)
    cost = statistics.median(costs)
    print()
    print(
        "flush() of 1,000 breakers (1 call each since the last): {:.1f} ms, {:.0f} µs per "
        "breaker; every 10 s that is {:.2%} of one core".format(
            cost * 1e3, cost * 1e6 / 1000, cost / 10.0
        )
    )
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
