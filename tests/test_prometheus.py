"""Prometheus: scraped over real HTTP on loopback and parsed with prometheus_client's parser."""

import doctest
import gc
import re
import subprocess
import sys
import threading
import tracemalloc
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from _optional import require
from _support import fail, ok
from _workload import CALLS, NAMES, REJECTED, THREADS, TRIPPED, fleet, hammer

import cbsync
from cbsync.reporting import LATENCY_BOUNDS
from cbsync.testing import FakeClock

prometheus_client = require("prometheus_client", 'pip install "cbsync[prometheus]"')
from prometheus_client.openmetrics.exposition import (  # noqa: E402
    generate_latest as openmetrics_latest,
)
from prometheus_client.openmetrics.parser import (  # noqa: E402
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cbsync.integrations import prometheus as module  # noqa: E402
from cbsync.integrations.prometheus import BreakerCollector, register  # noqa: E402

HOSTILE_NAMES = [
    "a.b:c|d@#\n",
    'quote " and back\\slash',
    "zahlungsdienst-é-€-日本語",
    "tab\tand\rreturn",
    '{curly}="x",le="1"',
]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


class _ThreadedWSGIServer(WSGIServer):
    """wsgiref's server, one thread per request: scrapes may overlap."""

    daemon_threads = True

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        thread.start()

    def _handle(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


@pytest.fixture
def endpoint():
    """Serves a fresh CollectorRegistry at a loopback URL; yields (registry, scrape)."""
    registry = prometheus_client.CollectorRegistry()
    server = make_server(
        "127.0.0.1",
        0,
        prometheus_client.make_wsgi_app(registry),
        server_class=_ThreadedWSGIServer,
        handler_class=_Quiet,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    url = "http://127.0.0.1:{}/metrics".format(server.server_port)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def scrape():
        """GET the endpoint; the families parsed, by name."""
        with opener.open(url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode("utf-8")
        return {family.name: family for family in text_string_to_metric_families(text)}

    try:
        yield registry, scrape
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def samples(families, name, **labels):
    """{label values without ``breaker``...: value} of the samples named ``name``."""
    found = {}
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(families, name, **labels):
    """The one sample named ``name`` with exactly these labels."""
    matches = [
        sample.value
        for family in families.values()
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_docstring_examples():
    """The module's docstring examples pass."""
    assert doctest.testmod(module).failed == 0


def test_every_metric_family_is_exported_with_its_type(endpoint):
    """A scrape has the seven families, typed counter/gauge/histogram, with cbsync_ names."""
    registry, scrape = endpoint
    breakers = cbsync.Registry()
    register(registry, breakers)
    breakers.get("payments").call(ok)
    families = scrape()
    assert {name: f.type for name, f in families.items()} == {
        "cbsync_calls": "counter",
        "cbsync_slow_calls": "counter",
        "cbsync_rejected": "counter",
        "cbsync_transitions": "counter",
        "cbsync_state": "gauge",
        "cbsync_call_duration_seconds": "histogram",
        "cbsync_window_failure_rate": "gauge",
    }
    assert value(families, "cbsync_calls_total", breaker="payments", outcome="success") == 1
    assert value(families, "cbsync_window_failure_rate", breaker="payments") == 0.0


def test_counts_from_8_threads_equal_the_snapshots_while_scraped(endpoint):
    """8 threads call 3 breakers while a scraper runs; the final scrape equals every snapshot."""
    registry, scrape = endpoint
    breakers, clock = fleet()
    register(registry, breakers)
    assert hammer(breakers, clock, scrape), "no scrape ran during the calls"

    families = scrape()
    total_calls = 0
    for name in [*NAMES, TRIPPED]:
        snap = breakers[name].snapshot()
        exported = {
            outcome: value(families, "cbsync_calls_total", breaker=name, outcome=outcome)
            for outcome in ("success", "failure", "ignored")
        }
        assert exported == {
            "success": snap.successes,
            "failure": snap.failures,
            "ignored": snap.ignored,
        }
        assert value(families, "cbsync_slow_calls_total", breaker=name) == snap.slow_calls
        assert value(families, "cbsync_rejected_total", breaker=name) == snap.calls_rejected
        count = value(families, "cbsync_call_duration_seconds_count", breaker=name)
        assert count == snap.successes + snap.failures
        assert (
            value(families, "cbsync_call_duration_seconds_sum", breaker=name) == snap.latency_sum
        )
        buckets = samples(families, "cbsync_call_duration_seconds_bucket", breaker=name)
        by_le = {dict(labels)["le"]: n for labels, n in buckets.items()}
        assert by_le["+Inf"] == count
        for le, n in by_le.items():
            bound = float(le)
            assert n == sum(c for b, c in snap.latency_histogram if b <= bound), le
        total_calls += snap.successes + snap.failures + snap.ignored + snap.calls_rejected
    assert total_calls == THREADS * CALLS + REJECTED
    for name in NAMES:  # every kind of outcome happened, so every count above was checked
        assert value(families, "cbsync_calls_total", breaker=name, outcome="ignored") > 0
        assert value(families, "cbsync_slow_calls_total", breaker=name) > 0
    assert value(families, "cbsync_rejected_total", breaker=TRIPPED) == REJECTED


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_a_hostile_name_is_an_escaped_label_value(endpoint, name):
    """Any breaker name survives the text exposition and the parser unchanged."""
    registry, scrape = endpoint
    breakers = cbsync.Registry()
    register(registry, breakers)
    breakers.get(name).call(ok)
    breakers.get("neighbour").call(ok)
    families = scrape()
    assert value(families, "cbsync_calls_total", breaker=name, outcome="success") == 1
    assert value(families, "cbsync_calls_total", breaker="neighbour", outcome="success") == 1
    states = samples(families, "cbsync_state", breaker=name)
    assert len(states) == 5


def test_a_lone_surrogate_in_a_name_does_not_break_the_scrape(endpoint):
    """A name with an undecodable byte's surrogate is exported backslash-escaped; the rest too."""
    registry, scrape = endpoint
    breakers = cbsync.Registry()
    register(registry, breakers)
    breakers.get("file-\udcff").call(ok)
    breakers.get("other").call(ok)
    families = scrape()
    assert value(families, "cbsync_calls_total", breaker="file-\\udcff", outcome="success") == 1
    assert value(families, "cbsync_calls_total", breaker="other", outcome="success") == 1


def test_the_openmetrics_exposition_parses_too():
    """The OpenMetrics format (what Prometheus asks for first) is valid, hostile names included."""
    registry = prometheus_client.CollectorRegistry()
    breakers = cbsync.Registry()
    register(registry, breakers)
    for name in HOSTILE_NAMES:
        breakers.get(name).call(ok)
    text = openmetrics_latest(registry).decode("utf-8")
    families = {family.name: family for family in parse_openmetrics(text)}
    for name in HOSTILE_NAMES:
        assert value(families, "cbsync_calls_total", breaker=name, outcome="success") == 1
    assert families["cbsync_call_duration_seconds"].type == "histogram"


def test_state_is_one_hot_and_transitions_are_labelled_from_and_to(endpoint):
    """Exactly one of the five state samples is 1; each transition has from/to labels."""
    registry, scrape = endpoint
    clock = FakeClock()
    breakers = cbsync.Registry(clock=clock)
    register(registry, breakers)
    breaker = breakers.get("flaky", failure_threshold=1, timeout=10, success_threshold=1)
    with pytest.raises(OSError):
        breaker.call(fail())
    families = scrape()
    states = {
        dict(labels)["state"]: v
        for labels, v in samples(families, "cbsync_state", breaker="flaky").items()
    }
    assert states == {"closed": 0, "half_open": 0, "open": 1, "forced_open": 0, "disabled": 0}
    clock.advance(10)
    breaker.call(ok)  # the trial call closes it
    families = scrape()
    moves = {
        (dict(labels)["from"], dict(labels)["to"]): v
        for labels, v in samples(families, "cbsync_transitions_total", breaker="flaky").items()
    }
    assert moves == {("closed", "open"): 1, ("open", "half_open"): 1, ("half_open", "closed"): 1}
    assert value(families, "cbsync_state", breaker="flaky", state="closed") == 1


def test_the_failure_rate_is_absent_while_the_window_is_empty(endpoint):
    """No calls in the window: no failure-rate sample (not a misleading 0)."""
    registry, scrape = endpoint
    breakers = cbsync.Registry()
    register(registry, breakers)
    breakers.get("idle")
    busy = breakers.get("busy", failure_threshold=None)
    busy.call(ok)
    with pytest.raises(OSError):
        busy.call(fail())
    families = scrape()
    rates = samples(families, "cbsync_window_failure_rate")
    assert rates == {(("breaker", "busy"),): 0.5}


def test_buckets_are_the_same_on_every_scrape_and_exact(endpoint):
    """The le values never change, each is a core bound, and each count is exact."""
    registry, scrape = endpoint
    clock = FakeClock()
    breakers = cbsync.Registry(clock=clock)
    register(registry, breakers)
    breaker = breakers.get("timed")

    def takes(seconds):
        def work():
            clock.advance(seconds)
            return "ok"

        return work

    les = []
    latencies = []
    for seconds in (0.0003, 0.02, 0.02, 1.5, 300.0):
        breaker.call(takes(seconds))
        latencies.append(seconds)
        buckets = samples(scrape(), "cbsync_call_duration_seconds_bucket", breaker="timed")
        by_le = {dict(labels)["le"]: n for labels, n in buckets.items()}
        les.append(list(by_le))
        for le, n in by_le.items():
            assert n == sum(s <= float(le) for s in latencies), (le, latencies)
    assert all(each == les[0] for each in les)
    assert len(les[0]) == 20
    assert les[0][-1] == "+Inf"
    assert all(float(le) in LATENCY_BOUNDS for le in les[0][:-1])


def test_counters_survive_a_reset_without_going_down(endpoint):
    """breaker.reset() between scrapes: the counters continue from the last scrape."""
    registry, scrape = endpoint
    breakers = cbsync.Registry()
    register(registry, breakers)
    breaker = breakers.get("resettable")
    for _ in range(5):
        breaker.call(ok)
    assert value(scrape(), "cbsync_calls_total", breaker="resettable", outcome="success") == 5
    breaker.reset()
    breaker.call(ok)
    families = scrape()
    assert value(families, "cbsync_calls_total", breaker="resettable", outcome="success") == 6
    assert value(families, "cbsync_call_duration_seconds_count", breaker="resettable") == 6


def test_register_defaults_to_the_global_registry_and_refuses_a_second_collector():
    """register() uses prometheus_client.REGISTRY; a second cbsync collector there is refused."""
    collector = register(source=cbsync.Registry())
    try:
        assert isinstance(collector, BreakerCollector)
        with pytest.raises(ValueError, match="cbsync_"):
            register(source=cbsync.Registry())
    finally:
        prometheus_client.REGISTRY.unregister(collector)


def test_registering_reads_no_breaker():
    """describe() gives the families without samples: registering takes no snapshot."""
    read = []

    class Counted(cbsync.CircuitBreaker):
        def snapshot(self):
            read.append(self.name)
            return super().snapshot()

    registry = prometheus_client.CollectorRegistry()
    register(registry, Counted("counted"))
    assert read == []
    prometheus_client.generate_latest(registry)
    assert read == ["counted"]


def test_a_collector_adds_no_listener_to_the_breakers():
    """Collecting reads snapshots: a breaker's listeners, hence its call path, are untouched."""
    breakers = cbsync.Registry()
    breaker = breakers.get("untouched")
    register(prometheus_client.CollectorRegistry(), breakers)
    assert breaker.listeners == ()


# As for StatsD (see test_statsd.py): 1,000 breakers for 10,000 scrapes would
# take minutes traced, so many breakers for a few scrapes against the issue's
# 1 MiB, and a few breakers for many scrapes against a bound 32 times tighter.
@pytest.mark.parametrize(
    ("size", "scrapes", "bound"), [(1000, 10, 1024 * 1024), (10, 500, 32 * 1024)]
)
def test_scrapes_keep_memory_flat(size, scrapes, bound):
    """Breakers scraped again and again (calls between): traced memory stays under ``bound``."""
    registry = prometheus_client.CollectorRegistry()
    breakers = cbsync.Registry()
    collector = register(registry, breakers)
    fleet = [breakers.get("service-{}".format(n)) for n in range(size)]
    for breaker in fleet:
        breaker.call(ok)
    prometheus_client.generate_latest(registry)  # warm up: caches, interned strings
    tracemalloc.start()
    try:
        # Traced from here, so that what each scrape replaces was traced too.
        for _ in range(2):
            collector.collect()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for scrape in range(scrapes):
            for breaker in fleet[scrape % 10 :: 10]:
                breaker.call(ok)
            # What generate_latest() does, without formatting 2.5 MB of text
            # under tracemalloc (the text is not kept either).
            assert sum(len(family.samples) for family in collector.collect()) > 30 * size
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < bound, grown


def _demo(tmp_path, *prelude):
    """Start ``cbsync demo --duration 4`` in a subprocess, after running ``prelude``."""
    code = "; ".join(
        [
            "import sys",
            *prelude,
            "from cbsync._cli import main",
            "sys.exit(main(['demo', '--duration', '4']))",
        ]
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_demo_serves_its_breakers_at_a_prometheus_url(tmp_path):
    """The demo prints a loopback URL; a scrape of it while the demo runs has its breakers."""
    proc = _demo(tmp_path)
    try:
        head = []
        for line in proc.stdout:
            head.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", line)
            if match:
                break
        assert match, "".join(head)
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            match.group(1), timeout=10
        ) as response:
            families = {
                f.name: f for f in text_string_to_metric_families(response.read().decode())
            }
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, "".join(head) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    breakers = {s.labels["breaker"] for s in families["cbsync_state"].samples}
    assert {"sqlite:///orders.db", "rates.fetch_rate"} < breakers
    assert re.search(
        r"^Prometheus: http://127\.0\.0\.1:\d+/metrics scraped [1-9]\d* times while the demo "
        r"ran; a last scrape read:$",
        rest,
        re.M,
    )


def test_the_demo_runs_without_prometheus_client(tmp_path):
    """With prometheus_client unimportable, the demo runs as before and prints no endpoint."""
    proc = _demo(tmp_path, "sys.modules['prometheus_client'] = None")
    try:
        output = proc.communicate(timeout=40)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, output
    assert "Prometheus" not in output
    assert output.rstrip().endswith("Done.")
