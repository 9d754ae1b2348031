"""How long the dashboard takes to render many breakers, on the server.

Run ``python benchmarks/bench_dashboard.py [--breakers 500] [--rounds 15]``
where cbsync is installed.  It builds a registry of N breakers (one in ten
open, one in twenty forced open, one in twenty half-open, the rest closed, all
with traffic, transitions and a full five-minute history of 150 samples),
then times, through the WSGI application itself (no socket, so only the
server's own work is measured):

* reading every breaker's snapshot (``registry.snapshot()``): the floor, the
  work any view of N breakers has to do;
* ``GET /api/breakers`` with and without the sparkline series;
* ``GET /`` -- the page, every tile rendered on the server.

The target is a page of 500 breakers in under 1 s of server time.  Printed
as Markdown: the best and median round, and the ratio to the floor.
"""

import argparse
import logging
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

from freezegun import freeze_time

import cbsync
from cbsync.integrations.dashboard import Dashboard

TARGET_SECONDS = 1.0


def _fail() -> None:
    raise OSError("down")


def build(count: int) -> Tuple[cbsync.Registry, Dashboard, List[Any]]:
    """A registry of ``count`` breakers in mixed states, with a full history."""
    registry = cbsync.Registry({"default": {"failure_threshold": 3, "timeout": 600}})
    dashboard = Dashboard(registry, interval=None)
    permits = []
    with freeze_time("2026-12-01 09:00:00") as frozen:
        breakers = [
            registry.get(
                "service-{:04d}.internal:443".format(index),
                **({"timeout": 1} if index % 20 == 3 else {}),
            )
            for index in range(count)
        ]
        dashboard.sample()
        for step in range(150):
            for index, breaker in enumerate(breakers):
                for _ in range(1 + (index + step) % 4):
                    breaker.call(frozen.tick, 0.001 * (1 + index % 50))
            frozen.tick(2.0)
            dashboard.sample()
        for index, breaker in enumerate(breakers):
            if index % 10 == 0 or index % 20 == 3:
                for _ in range(3):
                    try:
                        breaker.call(_fail)
                    except OSError:
                        pass
            elif index % 20 == 1:
                breaker.trip("maintenance")
        frozen.tick(2.0)  # the OPEN period of timeout=1 is over: their next call is a trial
        permits = [breaker.acquire() for i, breaker in enumerate(breakers) if i % 20 == 3]
    return registry, dashboard, permits


def request(app: Dashboard, path: str, query: str = "") -> bytes:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SCRIPT_NAME": "",
        "REMOTE_ADDR": "127.0.0.1",
    }
    statuses: List[str] = []
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"], statuses
    return body


def timed(work: Callable[[], Any], rounds: int) -> Tuple[float, float]:
    """(best, median) seconds of ``rounds`` runs of ``work``."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--breakers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    logging.getLogger("cbsync").setLevel(logging.ERROR)  # not a line per opened breaker
    registry, dashboard, permits = build(args.breakers)
    count = len(registry)
    page = request(dashboard, "/")
    document = request(dashboard, "/api/breakers")
    cases: Dict[str, Callable[[], Any]] = {
        "read every snapshot (the floor)": registry.snapshot,
        "GET /api/breakers?history=0": lambda: request(dashboard, "/api/breakers", "history=0"),
        "GET /api/breakers": lambda: request(dashboard, "/api/breakers"),
        "GET / (the page)": lambda: request(dashboard, "/"),
    }
    print(
        "Python {}, {} breakers, 150 samples of history each; page {:,} bytes, "
        "JSON {:,} bytes\n".format(platform.python_version(), count, len(page), len(document))
    )
    print("| {} breakers | best ms | median ms | x the floor |".format(count))
    print("| --- | ---: | ---: | ---: |")
    floor = None
    page_median = 0.0
    for label, work in cases.items():
        best, median = timed(work, args.rounds)
        floor = floor or median
        page_median = median
        print(
            "| {} | {:.1f} | {:.1f} | {:.1f} |".format(
                label, best * 1e3, median * 1e3, median / floor
            )
        )
    print(
        "\nTarget: the page of {} breakers in < {:g} s of server time -- {:.3f} s, {}.".format(
            count, TARGET_SECONDS, page_median, "met" if page_median < TARGET_SECONDS else "MISSED"
        )
    )
    for permit in permits:
        permit.release()


if __name__ == "__main__":
    main()
