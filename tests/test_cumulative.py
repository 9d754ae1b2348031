"""What the pull exporters read: fixed buckets and totals that only go up."""

import logging
import math
import subprocess
import sys

import pytest
from _support import failures, ok

import cbsync
from cbsync.integrations._cumulative import (
    DEFAULT_BUCKETS,
    Buckets,
    CumulativeReader,
    label_value,
)
from cbsync.reporting import LATENCY_BOUNDS
from cbsync.testing import FakeClock


def timed(clock, seconds):
    """A function that takes ``seconds`` of ``clock`` time and succeeds."""

    def work():
        clock.advance(seconds)
        return "ok"

    return work


def test_default_buckets_are_core_bounds_at_or_just_above_the_nominal_latencies():
    """Each bound is one of the core's, the first at or above 0.1 ms, 0.25 ms ... 100 s."""
    bounds = Buckets().bounds
    assert len(bounds) == len(DEFAULT_BUCKETS) == 19
    for nominal, bound in zip(DEFAULT_BUCKETS, bounds):
        assert bound in LATENCY_BOUNDS
        index = LATENCY_BOUNDS.index(bound)
        assert LATENCY_BOUNDS[index - 1] < nominal <= bound
        assert bound < nominal * 1.05
    assert list(bounds) == sorted(bounds)


@pytest.mark.parametrize(
    ("buckets", "message"),
    [
        ([], "at least one"),
        ("soon", "sequence of latencies"),
        ([0.1, -1.0], "-1.0"),
        ([0.0], "0.0"),
        ([math.nan], "nan"),
        ([5000.0], "5000.0"),
        ([0.5, 0.1], "above the bound before it"),
        ([0.1, 0.1005], "5 % resolution"),
    ],
)
def test_bad_buckets_are_config_errors_naming_the_value(buckets, message):
    """Empty, unsorted, non-positive, too large or too close bounds raise ConfigError."""
    with pytest.raises(cbsync.ConfigError, match="buckets") as info:
        Buckets(buckets)
    assert message in str(info.value)


def test_fold_puts_every_core_bucket_into_the_first_bound_at_or_above_it():
    """Calls of 0.3 ms, 3 ms, 0.2 s, 7 s and 200 s land in their buckets; 200 s above the last."""
    clock = FakeClock()
    breaker = cbsync.CircuitBreaker("fold", clock=clock)
    latencies = [0.0003, 0.003, 0.003, 0.2, 7.0, 200.0]
    for seconds in latencies:
        breaker.call(timed(clock, seconds))
    buckets = Buckets([0.001, 0.01, 1.0, 10.0])
    counts = buckets.fold(breaker.snapshot().latency_histogram)
    assert counts == (1, 2, 1, 1, 1)
    # Exact: each count is the calls between the bound before and this one.
    edges = [0.0, *buckets.bounds, math.inf]
    expected = tuple(sum(lo < s <= hi for s in latencies) for lo, hi in zip(edges, edges[1:]))
    assert counts == expected


def test_totals_equal_the_snapshot_until_a_reset():
    """Without a reset, every exported total is the snapshot's own."""
    clock = FakeClock()
    breaker = cbsync.CircuitBreaker("plain", clock=clock, failure_threshold=None)
    reader = CumulativeReader(breaker)
    for _ in range(3):
        breaker.call(timed(clock, 0.002))
    failures(breaker, 2)
    (totals,) = reader.read()
    snapshot = breaker.snapshot()
    assert (totals.successes, totals.failures, totals.rejected) == (3, 2, 0)
    assert totals.calls == snapshot.successes + snapshot.failures == 5
    assert totals.latency_sum == snapshot.latency_sum
    assert totals.buckets == reader.buckets.fold(snapshot.latency_histogram)


def test_a_reset_keeps_the_totals_going_up():
    """After reset(), totals continue from what was read before it instead of dropping to 0."""
    clock = FakeClock()
    breaker = cbsync.CircuitBreaker("reset", clock=clock, failure_threshold=2)
    reader = CumulativeReader(breaker)
    for _ in range(5):
        breaker.call(timed(clock, 0.002))
    failures(breaker, 2)  # opens
    with pytest.raises(cbsync.CircuitOpenError):
        breaker.call(ok)
    before = reader.read()[0]
    assert (before.successes, before.failures, before.rejected) == (5, 2, 1)
    breaker.reset()
    for _ in range(3):
        breaker.call(timed(clock, 0.002))
    after = reader.read()[0]
    assert (after.successes, after.failures, after.rejected) == (8, 2, 1)
    assert after.calls == 10
    assert after.latency_sum >= before.latency_sum
    assert all(a >= b for a, b in zip(after.buckets, before.buckets))
    assert after.since_ns == before.since_ns
    # Transitions are never reset by the core: closed->open once, open->closed by the reset.
    assert after.transitions[(cbsync.State.CLOSED, cbsync.State.OPEN)] == 1
    assert after.transitions[(cbsync.State.OPEN, cbsync.State.CLOSED)] == 1


def test_what_a_breaker_counted_between_the_last_read_and_a_reset_is_kept():
    """Calls between the last read and reset() are in the lifetime totals, so exported."""
    breaker = cbsync.CircuitBreaker("kept")
    reader = CumulativeReader(breaker)
    for _ in range(4):
        breaker.call(ok)
    assert reader.read()[0].successes == 4
    for _ in range(6):
        breaker.call(ok)  # never read
    breaker.reset()
    breaker.call(ok)
    assert reader.read()[0].successes == 11


def test_a_new_breaker_under_a_known_name_continues_its_totals(breaker_registry):
    """The default registry swapped for one with the same name: totals go on from the old ones."""
    from cbsync import _registry

    reader = CumulativeReader()  # cbsync.registry: follows the swap
    old = breaker_registry.get("orders")
    for _ in range(7):
        old.call(ok)
    assert reader.read()[0].successes == 7
    replacement = cbsync.Registry()
    previous = _registry.set_default_registry(replacement)
    try:
        new = replacement.get("orders")
        for _ in range(10):
            new.call(ok)
        assert [t.successes for t in reader.read()] == [17]
    finally:
        _registry.set_default_registry(previous)


def test_breakers_gone_from_the_source_are_forgotten(breaker_registry):
    """A swapped-out registry's breakers are not read or remembered any more."""
    from cbsync import _registry

    reader = CumulativeReader()
    for index in range(5):
        breaker_registry.get("b{}".format(index)).call(ok)
    assert len(reader.read()) == 5
    previous = _registry.set_default_registry(cbsync.Registry())
    try:
        assert reader.read() == []
        assert reader._tracks == {}
    finally:
        _registry.set_default_registry(previous)


class _Broken(cbsync.CircuitBreaker):
    """A breaker whose snapshot fails: what a bug in a reader's path would look like."""

    def snapshot(self):
        raise RuntimeError("snapshot failed")


def test_a_breaker_that_cannot_be_read_is_left_out_and_logged(caplog):
    """A failing snapshot costs that breaker its place in the read, logged once; others stay."""
    good = cbsync.CircuitBreaker("good")
    good.call(ok)
    reader = CumulativeReader([_Broken("broken"), good])
    with caplog.at_level(logging.ERROR, logger="cbsync"):
        assert [t.name for t in reader.read()] == ["good"]
        assert [t.name for t in reader.read()] == ["good"]
    logged = [r for r in caplog.records if "broken" in r.getMessage()]
    assert len(logged) == 1  # at most once a minute
    assert good.call(ok) == "ok"


def test_the_same_name_twice_is_read_once():
    """Two breakers of one name in an explicit list: only the first is exported."""
    first, second = cbsync.CircuitBreaker("twin"), cbsync.CircuitBreaker("twin")
    first.call(ok)
    totals = CumulativeReader([first, second, first]).read()
    assert [(t.name, t.successes) for t in totals] == [("twin", 1)]


def test_label_value_keeps_text_and_escapes_lone_surrogates():
    """Valid text is kept as is; a lone surrogate becomes its backslash escape."""
    assert label_value("a.b:c|d@#\n€") == "a.b:c|d@#\n€"
    assert label_value("bad\udcffname") == "bad\\udcffname"
    label_value("bad\udcffname").encode("utf-8")


def test_import_cbsync_and_its_command_line_import_no_exporter_library():
    """``import cbsync`` and building the CLI parser import neither prometheus_client nor
    opentelemetry; the shared reading code imports neither either."""
    code = (
        "import sys, cbsync, cbsync.integrations._cumulative; "
        "from cbsync._cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('prometheus_client', 'opentelemetry') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
