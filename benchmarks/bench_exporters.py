"""What the Prometheus and OpenTelemetry exporters cost a call, and what a scrape costs.

Run ``python benchmarks/bench_exporters.py [--seconds S] [--repeats R]
[--breakers B] [--interval SECONDS]``.

Both exporters read breakers when they are scraped or collected; they add no
listener, so an attached exporter should cost a call nothing.  What a call
can feel is a scrape running at the same time in another thread of the
process (it competes for the GIL).  The first table times ``breaker.call(f)``
(``f`` returns at once: the worst case, pure CPU): the mean over S seconds
of calls, scrapes included, in R runs of all the cases one after the other;
the ratio to no exporter is taken within each run, and the median over the
runs is shown (with the median time), for:

* no exporter -- the baseline;
* each exporter attached to a registry of B breakers, never scraped during
  the round;
* each exporter scraped every ``--interval`` seconds during the run: a real
  HTTP GET of the ``prometheus_client`` endpoint (served by a thread of this
  process, as ``start_http_server`` does) from another process, as
  Prometheus scrapes; or ``InMemoryMetricReader.get_metrics_data()`` on a
  thread of this process, as a periodic exporting reader collects.  The
  default interval, 0.5 s, is 30 times as often as the usual 15 s: the
  ratio shown is an upper bound, about 30 times the cost at 15 s.

The second table gives the time one scrape or collection takes, by number
of breakers (the time the scraping thread holds the GIL, mostly).
"""

import argparse
import importlib.metadata
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from functools import partial
from typing import Any, Callable, List, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

import opentelemetry.sdk.version
import prometheus_client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from run import per_call_ns, work  # benchmarks/run.py, beside this script

import cbsync
from cbsync.integrations.opentelemetry import instrument
from cbsync.integrations.prometheus import register


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Prometheus:
    """A registry of breakers behind a loopback prometheus_client endpoint."""

    def __init__(self, breakers: cbsync.Registry) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        register(self.registry, breakers)
        app = prometheus_client.make_wsgi_app(self.registry)
        self.server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:{}/metrics".format(self.server.server_port)
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def scrape(self) -> None:
        with self.opener.open(self.url, timeout=30) as response:
            response.read()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OpenTelemetry:
    """cbsync's instruments, bridged, on a provider with an in-memory reader."""

    def __init__(self, breakers: cbsync.Registry) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        instrument(breakers, meter_provider=self.provider).bridge(self.reader)

    def scrape(self) -> None:
        self.reader.get_metrics_data()

    def close(self) -> None:
        self.provider.shutdown()


#: What the scraping process runs: GET the URL every interval until stdin closes.
_SCRAPER = """
import sys, threading, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
count = 0
while not stop.wait(interval):
    with opener.open(url, timeout=30) as response:
        response.read()
    count += 1
print(count)
"""


class ProcessScraper:
    """Scrapes ``url`` every ``interval`` seconds from another process."""

    def __init__(self, url: str, interval: float) -> None:
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SCRAPER, url, str(interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        out, _ = self.proc.communicate("", timeout=60)
        self.count = int(out.strip() or 0)


class Scraper:
    """Scrapes every ``interval`` seconds on a background thread while it is on."""

    def __init__(self, scrape: Callable[[], None], interval: float) -> None:
        self.scrape = scrape
        self.interval = interval
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(self.interval):  # real time: the scrape period
            self.scrape()
            self.count += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def fleet(size: int) -> Tuple[cbsync.Registry, cbsync.CircuitBreaker]:
    """A registry of ``size`` breakers that have each seen a call; the first is returned too."""
    breakers = cbsync.Registry()
    made = [breakers.get("service-{}".format(n)) for n in range(size)]
    for breaker in made:
        breaker.call(work)
    return breakers, made[0]


def mean_ns(call: Callable[[], Any], seconds: float) -> float:
    """Mean nanoseconds per call over about ``seconds`` of calls."""
    calls = 0
    start = time.perf_counter_ns()
    deadline = start + seconds * 1e9
    while True:
        for _ in range(10000):
            call()
        calls += 10000
        now = time.perf_counter_ns()
        if now >= deadline:
            return (now - start) / calls


def call_costs(args: argparse.Namespace) -> None:
    cases: List[Tuple[str, Optional[type], bool]] = [
        ("no exporter", None, False),
        ("Prometheus collector, not scraped", Prometheus, False),
        ("Prometheus, scraped over HTTP by a process", Prometheus, True),
        ("OpenTelemetry instruments, not collected", OpenTelemetry, False),
        ("OpenTelemetry, collected", OpenTelemetry, True),
    ]
    results: List[List[float]] = [[] for _ in cases]
    scrapes = [0] * len(cases)
    for _ in range(args.repeats):
        for index, (_, kind, scraped) in enumerate(cases):
            breakers, breaker = fleet(args.breakers)
            exporter = kind(breakers) if kind is not None else None
            scraper: Any = None
            if scraped and isinstance(exporter, Prometheus):
                scraper = ProcessScraper(exporter.url, args.interval)
            elif scraped and exporter is not None:
                scraper = Scraper(exporter.scrape, args.interval)
            try:
                results[index].append(mean_ns(partial(breaker.call, work), args.seconds))
            finally:
                if scraper is not None:
                    scraper.close()
                    scrapes[index] += scraper.count
                if exporter is not None:
                    exporter.close()
    print(
        "\ncall() with {} breakers in the registry: mean over {:g}s, median of {} runs; "
        "scrapes every {:g}s".format(args.breakers, args.seconds, args.repeats, args.interval)
    )
    print("{:<44} {:>10} {:>10} {:>9}".format("case", "ns/call", "vs none", "scrapes"))
    for (label, _, scraped), times, count in zip(cases, results, scrapes):
        # The ratio within each run of the cases (the machine's load drifts
        # between runs more than within one), then the median over runs.
        ratio = statistics.median(t / base for t, base in zip(times, results[0]))
        print(
            "{:<44} {:>10.0f} {:>9.2f}x {:>9}".format(
                label, statistics.median(times), ratio, count if scraped else "-"
            )
        )


def scrape_costs(sizes: List[int]) -> None:
    print("\none scrape / collection, ms (best of 5)")
    print("{:>9} {:>26} {:>26}".format("breakers", "Prometheus (HTTP GET)", "OpenTelemetry"))
    for size in sizes:
        row = []
        for kind in (Prometheus, OpenTelemetry):
            breakers, _ = fleet(size)
            exporter = kind(breakers)
            try:
                exporter.scrape()  # warm up
                row.append(per_call_ns(exporter.scrape, 1, 5) / 1e6)
            finally:
                exporter.close()
        print("{:>9} {:>26.1f} {:>26.1f}".format(size, *row))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of calls per case")
    parser.add_argument("--repeats", type=int, default=7, help="runs of all the cases")
    parser.add_argument("--breakers", type=int, default=100, help="breakers in the registry")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between scrapes")
    args = parser.parse_args(argv)
    print(
        "Python {} on {}; prometheus_client {}; opentelemetry-sdk {}".format(
            platform.python_version(),
            platform.machine(),
            importlib.metadata.version("prometheus_client"),
            opentelemetry.sdk.version.__version__,
        )
    )
    call_costs(args)
    scrape_costs([1, 100, 1000])
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    status = main()
    print("\n({:.0f}s)".format(time.monotonic() - started))
    sys.exit(status)
