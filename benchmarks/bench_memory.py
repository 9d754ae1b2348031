"""Memory of reporting at full scale: 1,000 breakers read for 10,000 intervals.

``python benchmarks/bench_memory.py [--breakers N] [--intervals N] [--exporter ...]``

The test suite checks that reporting keeps memory flat with tracemalloc, at a
scale it can afford (tracing makes every allocation slow).  This script runs
the issue's own scale -- 1,000 breakers, 10,000 intervals, a tenth of the
breakers called in each -- without tracing, and reports what grew after a
warm-up: the interpreter's allocated memory blocks
(``sys.getallocatedblocks()``, every live object counts) and the resident set
size.  Exporters: the core's delta ``Reader``, ``StatsdReporter.flush()``
(UDP to a port nobody reads) and the Prometheus collector's ``collect()``.
"""

import argparse
import gc
import os
import socket
import sys
import time
from typing import Callable, Dict, List

import cbsync


def ok() -> str:
    return "ok"


def rss_kib() -> int:
    """Resident set size, KiB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def exporters(registry: cbsync.Registry) -> Dict[str, Callable[[], object]]:
    from cbsync.reporting import Reader

    found: Dict[str, Callable[[], object]] = {"reader": Reader(registry).read}
    try:
        from cbsync.integrations.statsd import StatsdReporter
    except ImportError:
        pass
    else:
        # A bound port that nobody reads: the kernel drops what overflows.
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        reporter = StatsdReporter(
            registry, host="127.0.0.1", port=sink.getsockname()[1], interval=3600
        )
        found["statsd"] = reporter.flush
    try:
        import prometheus_client

        from cbsync.integrations.prometheus import register
    except ImportError:
        pass
    else:
        collector = register(prometheus_client.CollectorRegistry(), registry)
        found["prometheus"] = lambda: list(collector.collect())
    return found


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--breakers", type=int, default=1000)
    parser.add_argument("--intervals", type=int, default=10_000)
    parser.add_argument("--exporter", action="append", help="reader, statsd, prometheus")
    options = parser.parse_args(argv)
    print(
        "Python {}; {} breakers, {} intervals, a tenth of the breakers called in each\n".format(
            sys.version.split()[0], options.breakers, options.intervals
        )
    )
    print("| exporter | seconds | blocks grown | RSS grown KiB |")
    print("|---|---:|---:|---:|")
    for name in options.exporter or ["reader", "statsd", "prometheus"]:
        registry = cbsync.Registry()
        calls = [
            registry.get("b{}".format(i), failure_threshold=None).call
            for i in range(options.breakers)
        ]
        available = exporters(registry)
        if name not in available:
            print("| {} | not installed | | |".format(name))
            continue
        export = available[name]

        def interval(
            number: int,
            calls: List[Callable[..., object]] = calls,
            export: Callable[[], object] = export,
        ) -> None:
            for call in calls[number % 10 :: 10]:
                call(ok)
            export()

        for number in range(20):  # warm-up: every breaker read, every cache filled
            interval(number)
        gc.collect()
        blocks, rss = sys.getallocatedblocks(), rss_kib()
        start = time.perf_counter()
        for number in range(options.intervals):
            interval(number)
        elapsed = time.perf_counter() - start
        gc.collect()
        print(
            "| {} | {:.0f} | {} | {} |".format(
                name, elapsed, sys.getallocatedblocks() - blocks, rss_kib() - rss
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
