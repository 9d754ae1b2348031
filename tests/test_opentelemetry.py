"""OpenTelemetry: instruments collected by the SDK's InMemoryMetricReader."""

import doctest
import gc
import logging
import math
import tracemalloc

import pytest
from _optional import require
from _support import fail, ok
from _workload import NAMES, REJECTED, TRIPPED, fleet, hammer

import cbsync

require("opentelemetry.sdk.metrics", 'pip install "cbsync[opentelemetry]" opentelemetry-sdk')
from opentelemetry.sdk.metrics import (  # noqa: E402
    Histogram,
    MeterProvider,
    ObservableCounter,
)
from opentelemetry.sdk.metrics.export import (  # noqa: E402
    AggregationTemporality,
    InMemoryMetricReader,
)

from cbsync.integrations import opentelemetry as module  # noqa: E402
from cbsync.integrations.opentelemetry import SCOPE, instrument  # noqa: E402

BREAKER = "cbsync.breaker.name"


@pytest.fixture
def pipeline():
    """A reader on its own meter provider; yields (reader, provider); shut down after."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield reader, provider
    provider.shutdown()


def collect(reader):
    """{metric name: metric} of the cbsync scope in one collection."""
    data = reader.get_metrics_data()
    found = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name == SCOPE:
                found.update({metric.name: metric for metric in scope.metrics})
    return found


def points(metrics, name, **attributes):
    """The data points of ``name`` whose attributes include ``attributes``."""
    if name not in metrics:
        return []
    return [
        point
        for point in metrics[name].data.data_points
        if all(point.attributes.get(k) == v for k, v in attributes.items())
    ]


def one(metrics, name, **attributes):
    """The value of the one point of ``name`` with these attributes."""
    (point,) = points(metrics, name, **attributes)
    return point.value


def test_docstring_examples():
    """The module's docstring examples pass."""
    assert doctest.testmod(module).failed == 0


def test_instruments_have_units_descriptions_and_kinds(pipeline):
    """Seven metrics: monotonic sums, a non-monotonic sum (state), a gauge and the histogram."""
    reader, provider = pipeline
    breakers = cbsync.Registry()
    instrument(breakers, meter_provider=provider).bridge(reader)
    breakers.get("payments").call(ok)
    metrics = collect(reader)
    assert set(metrics) == {
        "cbsync.calls",
        "cbsync.slow_calls",
        "cbsync.rejections",
        "cbsync.state",
        "cbsync.window.failure_rate",
        "cbsync.call.duration",
    }  # no transition yet: that counter has no point, so no metric
    units = {name: metric.unit for name, metric in metrics.items()}
    assert units["cbsync.calls"] == "{call}"
    assert units["cbsync.call.duration"] == "s"
    assert units["cbsync.state"] == "1"
    assert metrics["cbsync.calls"].data.is_monotonic
    assert not metrics["cbsync.state"].data.is_monotonic
    assert all(metric.description for metric in metrics.values())


def test_counts_from_8_threads_equal_the_snapshots_while_collected(pipeline):
    """8 threads call 3 breakers while a reader collects; the last collection equals snapshots."""
    reader, provider = pipeline
    breakers, clock = fleet()
    metrics_of = instrument(breakers, meter_provider=provider)
    metrics_of.bridge(reader)
    assert hammer(breakers, clock, lambda: collect(reader)), "no collection ran during the calls"

    metrics = collect(reader)
    bounds = list(metrics_of.buckets.bounds)
    for name in [*NAMES, TRIPPED]:
        snap = breakers[name].snapshot()
        for outcome, expected in (
            ("success", snap.successes),
            ("failure", snap.failures),
            ("ignored", snap.ignored),
        ):
            assert one(metrics, "cbsync.calls", **{BREAKER: name, "cbsync.outcome": outcome}) == (
                expected
            )
        assert one(metrics, "cbsync.slow_calls", **{BREAKER: name}) == snap.slow_calls
        assert one(metrics, "cbsync.rejections", **{BREAKER: name}) == snap.calls_rejected
        (histogram,) = points(metrics, "cbsync.call.duration", **{BREAKER: name})
        assert histogram.count == snap.successes + snap.failures
        assert histogram.sum == snap.latency_sum
        assert list(histogram.explicit_bounds) == bounds
        edges = [0.0, *bounds, math.inf]
        assert list(histogram.bucket_counts) == [
            sum(c for b, c in snap.latency_histogram if lo < b <= hi)
            for lo, hi in zip(edges, edges[1:])
        ]
    for name in NAMES:
        assert one(metrics, "cbsync.calls", **{BREAKER: name, "cbsync.outcome": "ignored"}) > 0
        assert one(metrics, "cbsync.slow_calls", **{BREAKER: name}) > 0
    assert one(metrics, "cbsync.rejections", **{BREAKER: TRIPPED}) == REJECTED


def test_delta_readers_get_deltas_that_add_up_to_the_totals(pipeline):
    """A reader asking for delta temporality gets per-collection deltas, histogram included."""
    _, provider = pipeline
    reader = InMemoryMetricReader(
        preferred_temporality={
            Histogram: AggregationTemporality.DELTA,
            ObservableCounter: AggregationTemporality.DELTA,
        }
    )
    provider = MeterProvider(metric_readers=[reader])
    breakers = cbsync.Registry()
    instrument(breakers, meter_provider=provider).bridge(reader)
    breaker = breakers.get("delta", failure_threshold=None)
    seen_calls = seen_histogram = 0
    for batch in (3, 0, 5):
        for _ in range(batch):
            breaker.call(ok)
        metrics = collect(reader)
        assert metrics["cbsync.calls"].data.aggregation_temporality == (
            AggregationTemporality.DELTA
        )
        seen_calls += one(
            metrics, "cbsync.calls", **{BREAKER: "delta", "cbsync.outcome": "success"}
        )
        durations = points(metrics, "cbsync.call.duration", **{BREAKER: "delta"})
        if batch == 0:
            assert durations == []  # nothing new: no point, as the SDK does for its histograms
        else:
            (point,) = durations
            assert point.count == batch
            assert metrics["cbsync.call.duration"].data.aggregation_temporality == (
                AggregationTemporality.DELTA
            )
            seen_histogram += point.count
    assert seen_calls == seen_histogram == 8 == breaker.snapshot().successes
    provider.shutdown()


@pytest.mark.parametrize(
    "name", ["a.b:c|d@#\n", "zahlungsdienst-é-€-日本語", 'quote " \\'], ids=repr
)
def test_a_hostile_name_is_an_attribute_value_as_is(pipeline, name):
    """Any breaker name is the cbsync.breaker.name attribute, unchanged."""
    reader, provider = pipeline
    breakers = cbsync.Registry()
    instrument(breakers, meter_provider=provider).bridge(reader)
    breakers.get(name).call(ok)
    metrics = collect(reader)
    assert one(metrics, "cbsync.calls", **{BREAKER: name, "cbsync.outcome": "success"}) == 1
    assert points(metrics, "cbsync.call.duration", **{BREAKER: name})


def test_a_lone_surrogate_becomes_its_escape(pipeline):
    """A name that could not be encoded as UTF-8 (for OTLP) is exported backslash-escaped."""
    reader, provider = pipeline
    breakers = cbsync.Registry()
    instrument(breakers, meter_provider=provider)
    breakers.get("file-\udcff").call(ok)
    metrics = collect(reader)
    attributes = {BREAKER: "file-\\udcff", "cbsync.outcome": "success"}
    assert one(metrics, "cbsync.calls", **attributes) == 1


def test_state_is_one_hot_and_transitions_name_both_states(pipeline):
    """cbsync.state is 1 for the current state only; transitions carry from and to."""
    reader, provider = pipeline
    breakers = cbsync.Registry()
    instrument(breakers, meter_provider=provider)
    breaker = breakers.get("flaky", failure_threshold=1)
    with pytest.raises(OSError):
        breaker.call(fail())
    metrics = collect(reader)
    states = {
        p.attributes["cbsync.breaker.state"]: p.value
        for p in points(metrics, "cbsync.state", **{BREAKER: "flaky"})
    }
    assert states == {"closed": 0, "half_open": 0, "open": 1, "forced_open": 0, "disabled": 0}
    (move,) = points(metrics, "cbsync.transitions", **{BREAKER: "flaky"})
    assert (
        move.attributes["cbsync.transition.from"],
        move.attributes["cbsync.transition.to"],
    ) == (
        "closed",
        "open",
    )
    assert move.value == 1
    assert one(metrics, "cbsync.window.failure_rate", **{BREAKER: "flaky"}) == 1.0


def test_one_collection_reads_each_breaker_once(pipeline):
    """Six instruments and the histogram share one snapshot per breaker per collection."""
    reader, provider = pipeline
    read = []

    class Counted(cbsync.CircuitBreaker):
        def snapshot(self):
            read.append(self.name)
            return super().snapshot()

    breaker = Counted("counted")
    instrument(breaker, meter_provider=provider).bridge(reader)
    breaker.call(ok)
    for expected in (1, 2, 3):
        collect(reader)
        assert len(read) == expected


def test_two_readers_each_see_fresh_counts():
    """Two readers of one provider: each collection reads the breakers anew."""
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[first, second])
    breakers = cbsync.Registry()
    metrics = instrument(breakers, meter_provider=provider)
    metrics.bridge(first)
    metrics.bridge(second)
    breaker = breakers.get("shared")
    attributes = {BREAKER: "shared", "cbsync.outcome": "success"}
    for n in range(1, 4):
        breaker.call(ok)
        assert one(collect(first), "cbsync.calls", **attributes) == n
        assert points(collect(second), "cbsync.call.duration", **{BREAKER: "shared"})[0].count == n
    provider.shutdown()


def test_counters_survive_a_reset(pipeline):
    """breaker.reset() between collections: the counters go on from the last collection."""
    reader, provider = pipeline
    breakers = cbsync.Registry()
    instrument(breakers, meter_provider=provider).bridge(reader)
    breaker = breakers.get("resettable")
    for _ in range(4):
        breaker.call(ok)
    collect(reader)
    breaker.reset()
    breaker.call(ok)
    metrics = collect(reader)
    attributes = {BREAKER: "resettable", "cbsync.outcome": "success"}
    assert one(metrics, "cbsync.calls", **attributes) == 5
    (point,) = points(metrics, "cbsync.call.duration", **{BREAKER: "resettable"})
    assert point.count == 5


def test_bad_bridges_are_config_errors(pipeline):
    """Bridging a non-reader, the same reader twice or with a bad temporality is refused."""
    reader, provider = pipeline
    metrics = instrument(cbsync.Registry(), meter_provider=provider)
    with pytest.raises(cbsync.ConfigError, match="MetricReader"):
        metrics.bridge(object())
    with pytest.raises(cbsync.ConfigError, match="temporality"):
        metrics.bridge(reader, temporality="delta")
    metrics.bridge(reader)
    with pytest.raises(cbsync.ConfigError, match="bridged to cbsync already"):
        metrics.bridge(reader)


def test_a_reader_of_another_provider_gets_a_warning_not_an_error(caplog):
    """Bridging a reader whose provider has no cbsync instrument logs once; collections go on."""
    ours, theirs = InMemoryMetricReader(), InMemoryMetricReader()
    provider, other = MeterProvider(metric_readers=[ours]), MeterProvider(metric_readers=[theirs])
    breakers = cbsync.Registry()
    metrics = instrument(breakers, meter_provider=provider)
    metrics.bridge(theirs)
    other.get_meter("app").create_counter("app.requests").add(1)
    breakers.get("somewhere").call(ok)
    with caplog.at_level(logging.WARNING, logger="cbsync"):
        for _ in range(2):
            data = theirs.get_metrics_data()
            names = [
                m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
            ]
            assert "app.requests" in names  # (some SDKs add metrics of their own)
            assert not [name for name in names if name.startswith("cbsync.")]
    assert len([r for r in caplog.records if "no cbsync instrument" in r.getMessage()]) == 1
    provider.shutdown()
    other.shutdown()


class _Broken(cbsync.CircuitBreaker):
    def snapshot(self):
        raise RuntimeError("snapshot failed")


def test_a_failing_breaker_never_reaches_a_call_or_the_other_breakers(pipeline, caplog):
    """A breaker that cannot be read is left out (logged); the others are collected, calls work."""
    reader, provider = pipeline
    good = cbsync.CircuitBreaker("good")
    instrument([_Broken("broken"), good], meter_provider=provider).bridge(reader)
    assert good.call(ok) == "ok"
    with caplog.at_level(logging.ERROR, logger="cbsync"):
        metrics = collect(reader)
    assert one(metrics, "cbsync.calls", **{BREAKER: "good", "cbsync.outcome": "success"}) == 1
    assert [p.attributes[BREAKER] for p in points(metrics, "cbsync.call.duration")] == ["good"]
    assert any("broken" in r.getMessage() for r in caplog.records)


def test_close_stops_observing_and_unbridges(pipeline):
    """After close(), collections have no cbsync metric and the reader is as it was."""
    reader, provider = pipeline
    breakers = cbsync.Registry()
    metrics = instrument(breakers, meter_provider=provider)
    metrics.bridge(reader)
    breakers.get("closing").call(ok)
    assert "cbsync.call.duration" in collect(reader)
    metrics.close()
    assert "_receive_metrics" not in reader.__dict__
    after = collect(reader)
    assert "cbsync.call.duration" not in after
    assert all(not metric.data.data_points for metric in after.values())


def test_the_global_meter_provider_is_the_default():
    """Without meter_provider=, instruments go to the global provider (a no-op one here)."""
    metrics = instrument(cbsync.Registry())
    assert metrics.buckets.bounds
    metrics.close()


# As for StatsD (see test_statsd.py): many breakers for a few collections
# against the 1 MiB, a few breakers for many against 32 KiB.
@pytest.mark.parametrize(
    ("size", "collections", "bound"), [(1000, 10, 1024 * 1024), (10, 500, 32 * 1024)]
)
def test_collections_keep_memory_flat(size, collections, bound):
    """Breakers collected again and again (calls between): traced memory stays under ``bound``."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    breakers = cbsync.Registry()
    instrument(breakers, meter_provider=provider).bridge(reader)
    fleet = [breakers.get("service-{}".format(n)) for n in range(size)]
    for breaker in fleet:
        breaker.call(ok)
    reader.get_metrics_data()  # warm up: the SDK's storage for each series
    tracemalloc.start()
    try:
        for _ in range(2):
            reader.get_metrics_data()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for collection in range(collections):
            for breaker in fleet[collection % 10 :: 10]:
                breaker.call(ok)
            assert reader.get_metrics_data() is not None
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        provider.shutdown()
    assert grown < bound, grown
