"""``cbsync demo``: watch breakers protect a program from a failing dependency.

Everything the demo needs runs in this process and is stopped at the end:

* an HTTP service on a free loopback port (``http.server``) with two
  endpoints: ``/orders/<n>``, called through a ``requests.Session`` with
  cbsync's adapter installed, and ``/rates/<currency>``, called over
  ``urllib`` by a function decorated with ``@cbsync.circuit`` and a fallback;
* a SQLite database file in a temporary directory, behind a SQLAlchemy engine
  with a breaker attached;
* a StatsD receiver: a UDP socket on loopback counting the lines cbsync's
  ``StatsdReporter`` sends it;
* the dashboard (:mod:`cbsync.integrations.dashboard`, read-only) on a free
  loopback port, whose URL the header prints;
* if ``prometheus_client`` is installed, a Prometheus endpoint on a free
  loopback port serving the breakers' metrics (its URL is printed at the
  start: scrape it while the demo runs).

Worker threads call all three while a script plays three phases: *healthy*
(one order request in 25 fails, which the breakers tolerate), *outage* (the
order service answers 503, the rates service stalls past its client's
timeout, the database file disappears) and *recovery*.  Every breaker should
open during the outage, let a few trial calls through after each OPEN period,
and close once those succeed in the recovery.

On a terminal the table of breakers is redrawn in place (ANSI cursor
movement) below a log of state changes.  Otherwise the output is plain lines
that a program can check: one per phase and per state change, such as
``   5.3s  http://127.0.0.1:40817  closed -> open  (consecutive_failures=5)``,
and the table at the end of each phase.  A summary ends the run.

Exit status: 0 after the whole script; 130 (128 + SIGINT, the shell's
convention) after Ctrl-C, which stops the workers and the embedded services
and prints the summary so far.
"""

import argparse
import datetime
import itertools
import json
import logging
import os
import queue
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, TextIO, Tuple, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cbsync import (
    CircuitBreaker,
    ConfigError,
    Listener,
    Registry,
    State,
    TransitionReason,
    circuit,
)

from .dashboard import Dashboard, DashboardServer, start_server

if TYPE_CHECKING:
    import requests
    import sqlalchemy

    from .statsd import StatsdReporter

# The demo needs requests, SQLAlchemy and statsd.  The command line lists
# this module's subcommand without them installed, so they are imported
# where they are used, and check_extras() tells early whether they are there.


def check_extras() -> None:
    """Raise ImportError if the libraries the demo drives are not installed."""
    import requests  # noqa: F401
    import sqlalchemy  # noqa: F401
    import statsd  # noqa: F401


__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "add_demo", "run"]

#: Exit status of a demo that played its whole script.
EXIT_OK = 0
#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
#: Exit status when the extras the demo needs are missing.
EXIT_USAGE = 2
#: How long the scenario runs by default, and at least, in seconds.
DEMO_DURATION = 20.0
DEMO_MIN_DURATION = 4.0

SubParsers = Any  # argparse's _SubParsersAction is private


def add_demo(subparsers: SubParsers) -> None:
    """Add ``cbsync demo`` to the command line."""
    parser = subparsers.add_parser(
        "demo",
        help="watch breakers protect a program from a failing service (about 20s)",
        description=(
            "Start a flaky HTTP service, a SQLite database and a StatsD receiver in this "
            "process, call them from worker threads through the requests adapter, a "
            "SQLAlchemy engine and a function decorated with @cbsync.circuit, and play "
            "a script: healthy, outage, recovery.  Shows each breaker live, then a "
            'summary.  Needs the extras: pip install "cbsync[all]".  Exit status 0 '
            "when the script has run, 130 when stopped with Ctrl-C, 2 when the extras "
            "are missing."
        ),
    )
    parser.add_argument(
        "--duration",
        type=_demo_duration,
        default=DEMO_DURATION,
        metavar="SECONDS",
        help="how long the script runs (default {:g}, at least {:g}); the breakers' "
        "timings scale with it".format(DEMO_DURATION, DEMO_MIN_DURATION),
    )
    parser.set_defaults(run=run_demo)


def _demo_duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a number of seconds".format(text)) from None
    if not value >= DEMO_MIN_DURATION or value == float("inf"):
        raise argparse.ArgumentTypeError(
            "{!r}: give at least {:g} seconds, for the breakers to open and close again".format(
                text, DEMO_MIN_DURATION
            )
        )
    return value


def run_demo(args: argparse.Namespace) -> int:
    """``cbsync demo [--duration SECONDS]``."""
    try:
        check_extras()
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] == "cbsync":
            raise  # a bug in cbsync, not a missing extra
        sys.stderr.write(
            "cbsync demo: error: the demo needs requests, SQLAlchemy and statsd ({}); "
            'install them with: pip install "cbsync[all]"\n'.format(exc)
        )
        return EXIT_USAGE
    return run(args.duration)


#: The duration the breakers' timings are tuned for; they scale with --duration.
_REFERENCE_DURATION = 20.0
#: When the outage and the recovery start, as fractions of the duration.
_OUTAGE_AT = 0.25
_RECOVERY_AT = 0.6
_PHASES = ("healthy", "outage", "recovery")
_STORY = {
    "healthy": "every service answers; 1 order request in 25 gets a 500, which is tolerated",
    "outage": "orders answer 503, rates stall past the client timeout, the database file is gone",
    "recovery": "everything is back; after its OPEN period each breaker tries a few trial calls",
}

#: Worker threads per dependency.
_ORDER_THREADS = 3
_DB_THREADS = 2
_RATE_THREADS = 2
#: Seconds a worker waits between two calls (about 40 calls a second each).
_PACE = 0.025
#: In the healthy phase every _SPORADIC-th order request fails with a 500.
_SPORADIC = 25
#: The rates client's timeout, and how long the rates service stalls in the outage.
_RATE_TIMEOUT = 0.25
_STALL = 1.0
#: The orders client's (connect, read) timeouts.
_ORDER_TIMEOUT = (1.0, 2.0)
#: Seconds between two redraws of the live view.
_REFRESH = 0.1
#: Seconds between two samples of the dashboard's rates and sparklines.
_DASHBOARD_INTERVAL = 0.5
#: Seconds to wait for worker threads to end once told to stop.
_JOIN_TIMEOUT = 3.0
#: The rate the fallback returns when the rates service cannot give one.
_CACHED_RATE = 1.08
#: Transitions shown per breaker in the summary before eliding the middle.
_TIMELINE_MAX = 16

_DB_NAME = "sqlite:///orders.db"
_RATES_NAME = "rates.fetch_rate"
_STATSD_PREFIX = "cbsync.demo"
#: Seconds between two StatsD reports: often, so that the live view shows lines arriving.
_STATSD_INTERVAL = 1.0

_COLORS = {
    State.CLOSED: "\x1b[32m",
    State.HALF_OPEN: "\x1b[33m",
    State.OPEN: "\x1b[31m",
    State.FORCED_OPEN: "\x1b[31m",
}
_RESET = "\x1b[0m"


def profiles(duration: float) -> Dict[str, Dict[str, Any]]:
    """The demo registry's profiles: quick to open, short OPEN periods, scaled
    so that a breaker opens, retries and closes within ``duration`` seconds."""
    scale = duration / _REFERENCE_DURATION
    return {
        "default": {
            "failure_threshold": 5,
            "failure_rate_threshold": 0.5,
            "minimum_calls": 10,
            "failure_window": 10.0 * scale,
            "timeout": 1.0 * scale,
            "backoff_multiplier": 1.5,
            "max_timeout": 2.5 * scale,
            "success_threshold": 3,
            "half_open_max_calls": 2,
        },
        # The integration's default profile name: a database gets fewer chances.
        "database": {"failure_threshold": 3},
    }


# -- the script ----------------------------------------------------------------


class _Scenario:
    """Which phase the embedded dependencies are in; the main thread moves it on."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.starts = {
            "healthy": 0.0,
            "outage": duration * _OUTAGE_AT,
            "recovery": duration * _RECOVERY_AT,
        }
        #: Read by the HTTP service's threads for every request.
        self.phase = "healthy"
        self.order_requests = itertools.count(1)

    def span(self, phase: str) -> str:
        end = self.duration
        index = _PHASES.index(phase)
        if index + 1 < len(_PHASES):
            end = self.starts[_PHASES[index + 1]]
        return "{} {:g}-{:g}s".format(phase, round(self.starts[phase], 2), round(end, 2))


# -- the flaky HTTP service ----------------------------------------------------


class _Service(ThreadingHTTPServer):
    """The orders and rates service, failing as the scenario says."""

    daemon_threads = True

    def __init__(self, scenario: _Scenario, stop: threading.Event) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scenario = scenario
        self.stop = stop

    @property
    def base_url(self) -> str:
        return "http://127.0.0.1:{}".format(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The rates client gives up on a stalled request by design, so writing
        # the late answer meets a closed socket: that is not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service
    # Headers and body are two writes: without this, delayed ACKs would add
    # 40ms to every request.
    disable_nagle_algorithm = True
    # An idle keep-alive connection is dropped after this, so that closing the
    # server (which joins its handler threads) never waits long.
    timeout = 2.0

    def do_GET(self) -> None:
        service = cast(_Service, self.server)
        phase = service.scenario.phase
        if self.path.startswith("/orders/"):
            if phase == "outage":
                self._reply(503, {"error": "order service unavailable"})
            elif phase == "healthy" and next(service.scenario.order_requests) % _SPORADIC == 0:
                self._reply(500, {"error": "a stray error"})
            else:
                self._reply(200, {"order": self.path[len("/orders/") :], "status": "shipped"})
        elif self.path.startswith("/rates/"):
            if phase == "outage":
                # Stall past the client's timeout; the demo's end cuts it short.
                service.stop.wait(_STALL)
                self._reply(504, {"error": "rates backend timed out"})
            else:
                self._reply(200, {"currency": self.path[len("/rates/") :], "rate": 1.09})
        else:
            self._reply(404, {"error": "no such endpoint"})

    def _reply(self, status: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode("ascii")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo's output is the breakers' view."""


# -- the StatsD receiver -------------------------------------------------------


class _StatsdReceiver:
    """A UDP socket on loopback that counts StatsD lines by metric type."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            pass  # a smaller buffer only risks dropping lines under load
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.lines = 0
        #: Lines by metric type (c, ms, g).
        self.kinds: Dict[str, int] = {}
        #: What the counter lines add up to (a client may sum counts into one line).
        self.counted = 0
        #: Transition counters by metric name, summed.
        self.transitions: Dict[str, int] = {}
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="cbsync-demo-statsd")
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self._sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self._last = time.monotonic()
            for line in data.decode("utf-8", "replace").splitlines():
                if not line:
                    continue
                self.lines += 1
                fields = line.split("|")  # name:value|type, maybe |@rate
                kind = fields[1] if len(fields) > 1 else "?"
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
                if kind != "c":
                    continue
                name, _, value = fields[0].partition(":")
                try:
                    count = int(float(value))
                except ValueError:
                    continue  # not StatsD: counted as a line, nothing more
                self.counted += count
                if ".transition." in name:
                    self.transitions[name] = self.transitions.get(name, 0) + count

    def drain(self, quiet: float = 0.2, limit: float = 1.0) -> None:
        """Wait until nothing has arrived for ``quiet`` seconds (at most ``limit``)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and time.monotonic() - self._last < quiet:
            time.sleep(0.05)  # real time: letting datagrams already sent arrive

    def close(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT)
        self._sock.close()


# -- the Prometheus endpoint ---------------------------------------------------


class _WSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a scrape is not news."""


class _Served:
    """What the demo's last scrape read of one breaker."""

    __slots__ = ("rejected", "state", "transitions")

    def __init__(self) -> None:
        self.state = "?"
        self.rejected = 0
        self.transitions = 0


class _PrometheusEndpoint:
    """The demo's breakers at ``url``, through cbsync's Prometheus collector."""

    def __init__(self, registry: Registry) -> None:
        import prometheus_client

        from .prometheus import register

        metrics = prometheus_client.CollectorRegistry()
        register(metrics, registry)
        app = prometheus_client.make_wsgi_app(metrics)
        self.scrapes = 0
        self.served: Dict[str, _Served] = {}
        self.error = ""

        def counted(environ: Any, start_response: Any) -> Any:
            self.scrapes += 1
            return app(environ, start_response)

        self._server = make_server(
            "127.0.0.1", 0, counted, server_class=_WSGIServer, handler_class=_QuietWSGIHandler
        )
        self.url = "http://127.0.0.1:{}/metrics".format(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self._thread.daemon = True
        self._thread.start()

    @classmethod
    def start(cls, registry: Registry) -> "Optional[_PrometheusEndpoint]":
        """An endpoint, or None when prometheus_client is not installed."""
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            return None
        return cls(registry)

    def read_back(self) -> None:
        """Scrape the endpoint once over HTTP, as Prometheus would; keep what it says.

        ``self.served``: per breaker, its state (the one-hot ``cbsync_state``
        series at 1), ``cbsync_rejected_total`` and the sum of its
        ``cbsync_transitions_total``.  The demo's own scrape is not counted in
        ``scrapes``.  A failed scrape leaves ``served`` empty and says why in
        ``error``.
        """
        from prometheus_client.parser import text_string_to_metric_families

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback
        try:
            with opener.open(self.url, timeout=_JOIN_TIMEOUT) as response:
                text = response.read().decode("utf-8")
        except OSError as exc:
            self.error = "{}: {}".format(type(exc).__name__, exc)
            return
        self.scrapes -= 1
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.labels.get("breaker")
                if name is None:
                    continue
                served = self.served.setdefault(name, _Served())
                if sample.name == "cbsync_state" and sample.value == 1:
                    served.state = sample.labels["state"]
                elif sample.name == "cbsync_rejected_total":
                    served.rejected = int(sample.value)
                elif sample.name == "cbsync_transitions_total":
                    served.transitions += int(sample.value)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_JOIN_TIMEOUT)


# -- events and output ---------------------------------------------------------


class _StateLog(Listener):
    """Queues each state change, stamped with seconds since the start."""

    def __init__(self, start: float, lines: "queue.Queue[Tuple[float, str]]") -> None:
        self._start = start
        self._lines = lines

    def on_state_change(
        self, breaker: CircuitBreaker, old: State, new: State, reason: TransitionReason
    ) -> None:
        self._lines.put(
            (
                time.monotonic() - self._start,
                "{}  {} -> {}  ({})".format(breaker.name, old.value, new.value, _reason(reason)),
            )
        )


def _reason(reason: TransitionReason) -> str:
    """``kind=value`` for people: a rate in percent, a trial call's time in ms."""
    value = reason.value
    if isinstance(value, float):
        if reason.kind.startswith("trial_"):
            return "{}={:.3g}ms".format(reason.kind, value * 1000.0)
        if reason.kind.endswith("_rate"):
            return "{}={:.0%}".format(reason.kind, value)
        return "{}={:.3g}".format(reason.kind, value)
    return str(reason)


class _LogLines(logging.Handler):
    """Shows what cbsync logs (a failing listener, StatsD trouble) as lines of the view.

    The state-change messages are left out: the view shows each one already.
    """

    def __init__(self, start: float, lines: "queue.Queue[Tuple[float, str]]") -> None:
        super().__init__(logging.WARNING)
        self._start = start
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        if record.funcName == "_emit":
            return
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += ": {!r}".format(record.exc_info[1])
        line = "log {}: {}".format(record.levelname, text)
        self._lines.put((time.monotonic() - self._start, line))


class _Row:
    """One breaker in the table and the summary."""

    def __init__(self, breaker: CircuitBreaker, role: str) -> None:
        self.breaker = breaker
        self.role = role


class _View:
    """The live view: a table redrawn in place on a terminal, plain lines elsewhere."""

    def __init__(
        self,
        out: TextIO,
        live: bool,
        color: bool,
        rows: List[_Row],
        scenario: _Scenario,
        receiver: _StatsdReceiver,
    ) -> None:
        self._out = out
        self._live = live
        self._color = color
        self._rows = rows
        self._scenario = scenario
        self._receiver = receiver
        self._pending: List[str] = []
        self._drawn = 0
        self._name_width = max(len("breaker"), *(len(row.breaker.name) for row in rows))

    def write(self, text: str) -> None:
        """Write lines above the live block (which the next draw puts back)."""
        if self._live:
            self._pending.append(text)
        else:
            self._out.write(text)
            self._out.flush()

    def event(self, elapsed: float, text: str) -> None:
        self.write("{:7.1f}s  {}\n".format(elapsed, text))

    def draw(self, elapsed: float, phase: str) -> None:
        """On a terminal, print the pending lines and redraw the block below them."""
        if not self._live:
            return
        width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
        block = [self._progress(elapsed, phase)]
        block.extend(self._table(width))
        block.append("  StatsD receiver: {} lines".format(self._receiver.lines))
        parts = []
        if self._drawn:
            parts.append("\r\x1b[{}A\x1b[J".format(self._drawn))
        parts.extend(self._pending)
        parts.extend(self._fit(line, width) + "\n" for line in block)
        self._pending = []
        self._drawn = len(block)
        self._out.write("".join(parts))
        self._out.flush()

    def table(self, elapsed: float, title: str) -> None:
        """Without a terminal, print the table once (at the end of a phase)."""
        if self._live:
            return
        self.write("{:7.1f}s  {}\n".format(elapsed, title))
        self.write("".join("         " + line + "\n" for line in self._table(10**6)))

    def finish(self) -> None:
        """Leave the last block on the screen; what follows is printed below it."""
        if self._pending:
            self._out.write("".join(self._pending))
            self._pending = []
        self._drawn = 0
        self._out.flush()

    def _progress(self, elapsed: float, phase: str) -> str:
        duration = self._scenario.duration
        cells = 40
        marks = {round(self._scenario.starts[p] / duration * cells) for p in _PHASES[1:]}
        bar = []
        for index in range(cells):
            if index in marks:
                bar.append("|")
            bar.append("#" if (index + 0.5) * duration / cells <= elapsed else ".")
        return "  [{}] {:5.1f}s / {:g}s  phase {}/{}: {}".format(
            "".join(bar), elapsed, duration, _PHASES.index(phase) + 1, len(_PHASES), phase
        )

    def _table(self, width: int) -> List[str]:
        name_width = self._name_width
        lines = [
            "  {:<{w}}  {:<9}  {:>6}  {:>8}  {:>8}  {:>9}  {:>8}".format(
                "breaker",
                "state",
                "calls",
                "failures",
                "rejected",
                "fail rate",
                "retry in",
                w=name_width,
            )
        ]
        for row in self._rows:
            snap = row.breaker.snapshot()
            retry_after = row.breaker.retry_after
            head = "  {:<{w}}  ".format(snap.name, w=name_width)
            state = "{:<9}".format(snap.state.value)
            tail = "  {:>6}  {:>8}  {:>8}  {:>9}  {:>8}".format(
                snap.calls_allowed,
                snap.failures,
                snap.calls_rejected,
                "-"
                if snap.window_failure_rate is None
                else "{:.0%}".format(snap.window_failure_rate),
                "-" if retry_after is None else "{:.1f}s".format(retry_after),
            )
            line = head + state + tail
            color = _COLORS.get(snap.state)
            if self._color and color and len(line) <= width:
                line = head + color + state + _RESET + tail
            lines.append(line)
        return lines

    @staticmethod
    def _fit(line: str, width: int) -> str:
        # A wrapped line would make the cursor movement miss the block's top.
        return line if "\x1b" in line or len(line) <= width else line[:width]


# -- the workload --------------------------------------------------------------


class _Workers:
    """Threads that each call one dependency in a loop until stopped."""

    def __init__(self, stop: threading.Event, report: Callable[[str], None]) -> None:
        self._stop = stop
        self._report = report
        self._threads: List[threading.Thread] = []

    def start(self, name: str, count: int, call: Callable[[], None]) -> None:
        for index in range(count):
            thread = threading.Thread(
                target=self._loop, args=(name, call), name="cbsync-demo-{}-{}".format(name, index)
            )
            thread.daemon = True  # never keeps the process alive
            thread.start()
            self._threads.append(thread)

    def _loop(self, name: str, call: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                call()
            except Exception as exc:  # a bug in the demo: show it, keep going
                self._report("worker error ({}): {!r}".format(name, exc))
            self._stop.wait(_PACE)

    def join(self) -> None:
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Counter:
    """A count shared by threads."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def increment(self) -> None:
        with self._lock:
            self.value += 1


def _orders_call(session: "requests.Session", base_url: str) -> Callable[[], None]:
    import requests

    from .requests import HTTPCircuitOpenError

    numbers = itertools.count(1)

    def call() -> None:
        try:
            response = session.get(
                "{}/orders/{}".format(base_url, next(numbers)), timeout=_ORDER_TIMEOUT
            )
        except HTTPCircuitOpenError:
            return  # rejected at once: the request never left the process
        except requests.RequestException:
            return  # counted as a failure by the breaker
        response.close()

    return call


def _database_call(engine: "sqlalchemy.engine.Engine") -> Callable[[], None]:
    import sqlalchemy.exc

    numbers = itertools.count(1)
    query = sqlalchemy.text("SELECT id, total FROM orders WHERE id = :id")

    def call() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(query, {"id": next(numbers) % 100 + 1}).fetchone()
        except sqlalchemy.exc.OperationalError:
            # The file is gone (a failure) or the circuit is open
            # (DatabaseCircuitOpenError, also an OperationalError).
            return

    return call


def _rates_call(
    registry: Registry, base_url: str, fallbacks: _Counter
) -> Tuple[Callable[[], None], CircuitBreaker]:
    # Legacy code calling a service with urllib; no proxy even if the
    # environment names one, as the service is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def cached_rate(currency: str) -> float:
        fallbacks.increment()
        return _CACHED_RATE

    @circuit(name=_RATES_NAME, registry=registry, fallback=cached_rate, fallback_on_failure=True)
    def fetch_rate(currency: str) -> float:
        with opener.open("{}/rates/{}".format(base_url, currency), timeout=_RATE_TIMEOUT) as resp:
            return float(json.loads(resp.read().decode("utf-8"))["rate"])

    currencies = itertools.cycle(("EUR", "GBP", "JPY", "CHF"))

    def call() -> None:
        fetch_rate(next(currencies))  # a rate or, failing that, the fallback's

    return call, cast(Any, fetch_rate).breaker


def _create_database(path: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL NOT NULL)")
        db.executemany(
            "INSERT INTO orders (id, total) VALUES (?, ?)",
            [(n, round(n * 9.95, 2)) for n in range(1, 101)],
        )
    db.close()


# -- the run -------------------------------------------------------------------


class _Demo:
    """Everything one run starts, so that it can all be stopped in any state."""

    def __init__(self, duration: float, out: TextIO, live: bool, color: bool) -> None:
        self.duration = duration
        self.out = out
        self.live = live
        self.color = color
        self.scenario = _Scenario(duration)
        self.stop = threading.Event()
        self.lines: queue.Queue[Tuple[float, str]] = queue.Queue()
        self.start = time.monotonic()
        self.start_wall = datetime.datetime.now(datetime.timezone.utc)
        self.fallbacks = _Counter()
        self.rows: List[_Row] = []
        self.tmpdir: Optional[str] = None
        self.db_path = ""
        self.service: Optional[_Service] = None
        self.service_thread: Optional[threading.Thread] = None
        self.receiver: Optional[_StatsdReceiver] = None
        self.statsd: Optional[StatsdReporter] = None
        self.prometheus: Optional[_PrometheusEndpoint] = None
        self.profiles = profiles(duration)
        self.registry = Registry(self.profiles)
        self.session: Optional[requests.Session] = None
        self.engine: Optional[sqlalchemy.engine.Engine] = None
        self.attachment: Any = None
        self.workers = _Workers(self.stop, self.report)
        self.view: Optional[_View] = None
        self.dashboard: Optional[Dashboard] = None
        self.dashboard_server: Optional[DashboardServer] = None
        self.log_handler = _LogLines(self.start, self.lines)
        self.logger = logging.getLogger("cbsync")
        self.logger_propagate = self.logger.propagate

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def report(self, text: str) -> None:
        self.lines.put((self.elapsed(), text))

    # -- starting ----------------------------------------------------------

    def set_up(self) -> None:
        import requests
        import sqlalchemy
        from sqlalchemy.engine import URL
        from sqlalchemy.pool import NullPool

        from .requests import install
        from .sqlalchemy import attach
        from .statsd import StatsdReporter

        # cbsync logs every state change; the view shows them already, and a
        # log line on stderr would tear the table apart.
        self.logger.addHandler(self.log_handler)
        self.logger.propagate = False

        self.receiver = _StatsdReceiver()
        self.receiver.start()
        self.statsd = StatsdReporter(
            self.registry,
            host="127.0.0.1",
            port=self.receiver.port,
            prefix=_STATSD_PREFIX,
            interval=_STATSD_INTERVAL,
        )
        self.registry.add_listener(_StateLog(self.start, self.lines))
        self.prometheus = _PrometheusEndpoint.start(self.registry)

        # The same breakers in the browser, read-only, while the demo runs.
        self.dashboard = Dashboard(
            self.registry, title="cbsync demo", interval=_DASHBOARD_INTERVAL, history=120
        )
        self.dashboard_server = start_server(self.dashboard, port=0)

        self.service = _Service(self.scenario, self.stop)
        self.service_thread = threading.Thread(
            target=self.service.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.service_thread.daemon = True
        self.service_thread.start()
        base_url = self.service.base_url

        # requests: one breaker per origin, from the demo's registry.
        self.session = requests.Session()
        self.session.trust_env = False  # the service is on loopback: no proxy
        adapter = install(self.session, registry=self.registry)
        orders = adapter.breaker_for(requests.Request("GET", base_url + "/").prepare())

        # SQLAlchemy: a breaker attached to the engine.  The URL opens the file
        # in mode=rw, so SQLite refuses to open it once it is gone instead of
        # creating an empty one, and NullPool opens a connection for every
        # unit of work (as many legacy apps do): the outage below is then met
        # by real connection attempts.  With a pool, connections opened before
        # the outage would keep reading the file through their open handles.
        self.tmpdir = tempfile.mkdtemp(prefix="cbsync-demo-")
        self.db_path = os.path.join(self.tmpdir, "orders.db")
        _create_database(self.db_path)
        url = URL.create(
            "sqlite", database="file:" + self.db_path, query={"mode": "rw", "uri": "true"}
        )
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        # A short name for the table; by default it would be the whole URL.
        self.attachment = attach(self.engine, name=_DB_NAME, registry=self.registry)

        rates_call, rates = _rates_call(self.registry, base_url, self.fallbacks)

        self.rows = [
            _Row(orders, "requests adapter, {} threads GET /orders/<n>".format(_ORDER_THREADS)),
            _Row(
                self.attachment.breaker,
                "SQLAlchemy attach(), {} threads SELECT from {}".format(_DB_THREADS, self.db_path),
            ),
            _Row(
                rates,
                "@cbsync.circuit with a fallback, {} threads GET /rates/<currency> "
                "over urllib".format(_RATE_THREADS),
            ),
        ]
        self.view = _View(self.out, self.live, self.color, self.rows, self.scenario, self.receiver)
        self.header()

        self.workers.start("orders", _ORDER_THREADS, _orders_call(self.session, base_url))
        self.workers.start("database", _DB_THREADS, _database_call(self.engine))
        self.workers.start("rates", _RATE_THREADS, rates_call)

    def header(self) -> None:
        assert self.view is not None
        assert self.receiver is not None
        settings = self.profiles["default"]
        width = max(len(row.breaker.name) for row in self.rows)
        lines = ["cbsync demo: three dependencies fail together; watch their breakers"]
        lines.extend("  {:<{w}}  {}".format(r.breaker.name, r.role, w=width) for r in self.rows)
        lines.append(
            "  {:<{w}}  StatsdReporter every {:g}s -> UDP receiver on 127.0.0.1:{}".format(
                "StatsD", _STATSD_INTERVAL, self.receiver.port, w=width
            )
        )
        if self.dashboard_server is not None:
            lines.append(
                "  {:<{w}}  {} (read-only, while the demo runs)".format(
                    "Dashboard", self.dashboard_server.url, w=width
                )
            )
        if self.prometheus is not None:
            lines.append(
                "  {:<{w}}  {} (scrape it while the demo runs)".format(
                    "Prometheus", self.prometheus.url, w=width
                )
            )
        lines.append(
            "Breakers open after {} consecutive failures ({} for the database) or {:.0%} "
            "of at least {} calls failing within {:g}s, stay open {:g}s (x{:g} after each "
            "failed trial, up to {:g}s), close after {} successful trial calls.".format(
                settings["failure_threshold"],
                self.profiles["database"]["failure_threshold"],
                settings["failure_rate_threshold"],
                settings["minimum_calls"],
                round(settings["failure_window"], 2),
                round(settings["timeout"], 2),
                settings["backoff_multiplier"],
                round(settings["max_timeout"], 2),
                settings["success_threshold"],
            )
        )
        lines.append(
            "Script: {}.  Ctrl-C stops it.".format(
                ", ".join(self.scenario.span(phase) for phase in _PHASES)
            )
        )
        self.view.write("".join(line + "\n" for line in lines) + "\n")

    # -- playing -------------------------------------------------------------

    def play(self) -> None:
        assert self.view is not None
        view = self.view
        self.phase_started("healthy", 0.0)
        pending = list(_PHASES[1:])
        while True:
            elapsed = self.elapsed()
            if pending and elapsed >= self.scenario.starts[pending[0]]:
                phase = pending.pop(0)
                self.pump()
                view.table(elapsed, "end of the {} phase:".format(self.scenario.phase))
                self.switch(phase)
                continue
            if elapsed >= self.duration:
                break
            self.pump()
            view.draw(elapsed, self.scenario.phase)
            upcoming = [self.scenario.starts[p] for p in pending] + [self.duration]
            time.sleep(max(0.0, min(_REFRESH, upcoming[0] - elapsed)))  # the pace of the view

    def switch(self, phase: str) -> None:
        """Move the dependencies into ``phase``."""
        moved_away = self.db_path + ".unmounted"
        if phase == "outage":
            elapsed = self.elapsed()
            self.scenario.phase = phase
            # The database's disk goes away.  A connection already open keeps
            # its file handle (that is why the engine uses NullPool).
            os.replace(self.db_path, moved_away)
        else:
            # Back first, so that no call after the recovery's start fails.
            os.replace(moved_away, self.db_path)
            elapsed = self.elapsed()
            self.scenario.phase = phase
        self.phase_started(phase, elapsed)

    def phase_started(self, phase: str, elapsed: float) -> None:
        assert self.view is not None
        self.view.event(elapsed, "phase {}: {}".format(phase, _STORY[phase]))
        self.view.draw(elapsed, phase)

    def pump(self) -> None:
        """Move queued lines to the view."""
        assert self.view is not None
        while True:
            try:
                elapsed, text = self.lines.get_nowait()
            except queue.Empty:
                return
            self.view.event(elapsed, text)

    # -- stopping ----------------------------------------------------------

    def tear_down(self) -> None:
        """Stop everything started so far, in an order that never waits long."""
        self.stop.set()  # also releases the rates service's stalled requests
        self.workers.join()
        if self.session is not None:
            self.session.close()  # idle keep-alive connections: their handlers end
        if self.attachment is not None:
            self.attachment.detach()
        if self.engine is not None:
            self.engine.dispose()
        if self.service is not None:
            if self.service_thread is not None and self.service_thread.is_alive():
                self.service.shutdown()
            self.service.server_close()
        if self.dashboard_server is not None:
            self.dashboard_server.close()
        if self.dashboard is not None:
            self.dashboard.close()
        if self.statsd is not None:
            self.statsd.close()  # a last report, then its thread stops
        if self.receiver is not None:
            self.receiver.drain()
            self.receiver.close()
        if self.prometheus is not None:
            self.prometheus.read_back()
            self.prometheus.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.logger.removeHandler(self.log_handler)
        self.logger.propagate = self.logger_propagate

    # -- the summary -------------------------------------------------------

    def summary(self, elapsed: float, interrupted: bool) -> None:
        out = self.out
        if self.view is not None:
            self.pump()
            self.view.draw(elapsed, self.scenario.phase)
            self.view.table(elapsed, "at the end:")
            self.view.finish()
        if not self.rows:
            return
        out.write(
            "\nSummary after {:.1f}s ({}{})\n".format(
                elapsed,
                ", ".join(self.scenario.span(phase) for phase in _PHASES),
                "; interrupted" if interrupted else "",
            )
        )
        for row in self.rows:
            snap = row.breaker.snapshot()
            out.write("\n{}  ({}; now {})\n".format(snap.name, row.role, snap.state.value))
            transitions = [
                (
                    (t.at - self.start_wall).total_seconds(),
                    "{} -> {}".format(t.old.value, t.new.value),
                    _reason(t.reason),
                )
                for t in snap.transitions
            ]
            if not transitions:
                out.write("    no state change\n")
            if len(transitions) > _TIMELINE_MAX:
                half = _TIMELINE_MAX // 2
                skipped = len(transitions) - 2 * half
                transitions[half:-half] = [(-1.0, "... {} more ...".format(skipped), "")]
            for at, move, reason in transitions:
                if at < 0:
                    out.write("           {}\n".format(move))
                else:
                    out.write("  {:7.1f}s  {:<20}  {}\n".format(at, move, reason))
            saved = "calls saved from hitting the failing service"
            if row.breaker.name == _RATES_NAME:
                saved = "calls that did not wait up to {:g}s for a stalled service".format(
                    _RATE_TIMEOUT
                )
            out.write(
                "  {} calls let through ({} succeeded, {} failed); "
                "{} rejected at once: {}\n".format(
                    snap.calls_allowed, snap.successes, snap.failures, snap.calls_rejected, saved
                )
            )
            if row.breaker.name == _RATES_NAME:
                out.write(
                    "  the fallback answered {} calls with the cached rate\n".format(
                        self.fallbacks.value
                    )
                )
        receiver = self.receiver
        if receiver is not None:
            kinds = receiver.kinds
            names = {"c": "counter", "ms": "timer", "g": "gauge"}
            detail = ", ".join(
                "{} {} lines".format(kinds[kind], names.get(kind, repr(kind)))
                for kind in sorted(kinds)
            )
            out.write(
                "\nStatsD: {} lines received on udp://127.0.0.1:{}{}\n".format(
                    receiver.lines, receiver.port, ": {}".format(detail) if detail else ""
                )
            )
            if receiver.counted:
                out.write(
                    "  the counter lines add up to {} events (calls, rejections, "
                    "transitions)\n".format(receiver.counted)
                )
            grouped: Dict[str, List[str]] = {}
            for name, count in receiver.transitions.items():
                base, _, move = name.partition(".transition.")
                grouped.setdefault(base, []).append("{} {}".format(move, count))
            for base in sorted(grouped):
                out.write("  {}.transition: {}\n".format(base, ", ".join(grouped[base])))
        prometheus = self.prometheus
        if prometheus is not None:
            out.write(
                "\nPrometheus: {} scraped {} times while the demo ran; a last scrape "
                "read{}\n".format(
                    prometheus.url,
                    prometheus.scrapes,
                    " nothing ({})".format(prometheus.error) if prometheus.error else ":",
                )
            )
            for name in sorted(prometheus.served):
                served = prometheus.served[name]
                out.write(
                    '  {{breaker="{}"}}  state {}, rejected_total {}, transitions_total '
                    "{}\n".format(name, served.state, served.rejected, served.transitions)
                )
        out.flush()


def run(duration: float, out: Optional[TextIO] = None, live: Optional[bool] = None) -> int:
    """Play the demo for ``duration`` seconds; return the exit status.

    ``out`` defaults to ``sys.stdout``; ``live`` (redraw the table in place)
    defaults to whether ``out`` is a terminal that understands ANSI codes.
    """
    if not DEMO_MIN_DURATION <= duration < float("inf"):
        raise ConfigError(
            "duration={!r}: give at least {:g} seconds, for the breakers to open and "
            "close again".format(duration, DEMO_MIN_DURATION)
        )
    if out is None:
        out = sys.stdout
    if live is None:
        live = out.isatty() and os.environ.get("TERM") != "dumb"
    color = live and "NO_COLOR" not in os.environ
    demo = _Demo(duration, out, live, color)
    interrupted = False
    try:
        demo.set_up()
        demo.play()
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        demo.tear_down()  # a bug or a broken stdout: stop everything, then report it
        raise
    elapsed = demo.elapsed()
    in_main_thread = threading.current_thread() is threading.main_thread()
    # A second Ctrl-C must not cut the clean-up short.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        demo.tear_down()
        demo.summary(elapsed, interrupted)
        if interrupted:
            out.write(
                "\nInterrupted at {:.1f}s in the {} phase: workers stopped, embedded "
                "services closed.\n".format(elapsed, demo.scenario.phase)
            )
        else:
            out.write("\nDone.\n")
        out.flush()
    finally:
        if in_main_thread:
            # None: the previous handler was not set from Python; the default is.
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK
