"""StatsD reporting, checked against real UDP, TCP and Unix sockets on this host."""

import collections
import doctest
import gc
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest
import statsd
from _support import ok
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

import cbsync
from cbsync.integrations import statsd as module
from cbsync.integrations.statsd import (
    StatsdReporter,
    sanitize_prefix,
    sanitize_segment,
    timer_values,
)
from cbsync.reporting import LATENCY_BOUNDS

#: ``name:value|type[|@rate]`` -- the StatsD line protocol, as far as cbsync uses it.
LINE = re.compile(
    r"^(?P<name>[^:|@\n]+):(?P<value>-?[0-9]+(?:\.[0-9]+)?)\|(?P<type>c|ms|g)"
    r"(?:\|@(?P<rate>[0-9.]+))?$"
)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SENTINEL = "zz-test-sentinel"
WAIT = 5.0  # seconds a read may wait for a datagram already sent
#: An interval the tests never reach: only flush() (or close()) sends.
NEVER = "1h"

Metric = collections.namedtuple("Metric", "name value type rate")


def parse(line):
    """One received line as a Metric; fails the test if it breaks the protocol."""
    match = LINE.match(line)
    assert match is not None, "not a StatsD line: {!r}".format(line)
    assert SAFE_NAME.match(match["name"]), "unsafe metric name: {!r}".format(line)
    rate = float(match["rate"]) if match["rate"] else None
    return Metric(match["name"], float(match["value"]), match["type"], rate)


def parse_packet(data):
    """Every metric of one datagram."""
    return [parse(line) for line in data.split("\n")]


def parse_stream(data):
    """Every metric a stream client wrote: lines, each ended by a newline."""
    assert data.endswith(b"\n"), data[-80:]
    return parse_packet(data[:-1].decode("ascii"))


@pytest.fixture
def server():
    """A StatsD server: a UDP socket bound to a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    yield sock
    sock.close()


@pytest.fixture
def udp():
    """Makes statsd UDP clients to loopback ports; closes them after the test's reporters."""
    made = []

    def make(port, **kwargs):
        client = statsd.StatsClient("127.0.0.1", port, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        close_udp(client)


@pytest.fixture
def client(server, udp):
    """A real statsd UDP client sending to ``server``."""
    return udp(server.getsockname()[1])


@pytest.fixture
def reporters(udp):
    """Makes reporters (sending only on flush() unless told otherwise); closes them after."""
    made = []

    def make(source, client=None, **kwargs):
        kwargs.setdefault("interval", NEVER)
        reporter = StatsdReporter(source, client=client, **kwargs)
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close()


def close_udp(udp):
    """Close a statsd UDP client (statsd 3.3 has no ``close()``)."""
    if hasattr(udp, "close"):
        udp.close()
    else:
        udp._sock.close()


def received(server, client):
    """Every metric the server got until now, in order.

    A sentinel sent last through the same client marks the end (loopback UDP
    from one socket arrives in order), so nothing waits for silence.
    """
    client.incr(SENTINEL)
    metrics = []
    while True:
        data = server.recv(65536).decode("ascii")
        if data.startswith(SENTINEL + ":"):
            return metrics
        metrics.extend(parse_packet(data))


def drain(server):
    """The metrics already waiting on ``server`` (never waits)."""
    metrics = []
    server.setblocking(False)
    try:
        while True:
            metrics.extend(parse_packet(server.recv(65536).decode("ascii")))
    except BlockingIOError:
        return metrics
    finally:
        server.settimeout(WAIT)


def receive_until(server, done):
    """Metrics as they arrive until ``done(metrics)``; fails after WAIT seconds."""
    metrics = []
    deadline = time.monotonic() + WAIT
    while not done(metrics):
        # real time: a reporter's thread sends when its interval comes (bounded by WAIT)
        server.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            metrics += parse_packet(server.recv(65536).decode("ascii"))
        except socket.timeout:
            raise AssertionError("not received in {}s: {}".format(WAIT, metrics)) from None
    server.settimeout(WAIT)
    return metrics


def total(metrics, name):
    """What the counter lines called ``name`` add up to."""
    return sum(m.value for m in metrics if m.name == name)


def timer_count(metrics, name):
    """The timer's count as a StatsD server computes it: 1 / rate per line."""
    return sum(1 / (m.rate or 1.0) for m in metrics if m.name == name)


def closed_port(kind):
    """A loopback port nothing listens on (bound, then released)."""
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def slow(clock, seconds, exc=None):
    """A function that takes ``seconds`` on ``clock`` and then returns or raises."""

    def run():
        clock.advance(seconds)
        if exc is not None:
            raise exc
        return "ok"

    return run


def _raise_oserror():
    raise OSError("down")


def test_lifecycle_sends_exactly_the_documented_lines(server, client, clock, reporters):
    """CLOSED -> OPEN -> HALF_OPEN -> CLOSED: each interval sends exactly the documented lines."""
    breaker = cbsync.CircuitBreaker(
        "payments",
        clock=clock,
        failure_threshold=2,
        success_threshold=1,
        timeout=10,
        slow_call_duration=0.5,
        ignore=(KeyError,),
    )
    reporter = reporters(breaker, client)
    p = "cbsync.payments."

    def step(action, *expected):
        action()
        reporter.flush()
        assert collections.Counter(received(server, client)) == collections.Counter(expected)

    def call(func, exc=None):
        def run():
            if exc is None:
                breaker.call(func)
            else:
                with pytest.raises(exc):
                    breaker.call(func)

        return run

    step(lambda: None, Metric(p + "state", 0, "g", None))
    step(
        call(ok),
        Metric(p + "success", 1, "c", None),
        Metric(p + "latency", 0, "ms", None),
        Metric(p + "state", 0, "g", None),
    )
    step(
        call(slow(clock, 0.75)),
        Metric(p + "success", 1, "c", None),
        Metric(p + "latency", 750, "ms", None),
        Metric(p + "slow", 1, "c", None),
        Metric(p + "state", 0, "g", None),
    )
    step(
        call(slow(clock, 0.5, OSError("down")), OSError),  # exactly at the limit: slow
        Metric(p + "failure", 1, "c", None),
        Metric(p + "latency", 500, "ms", None),
        Metric(p + "slow", 1, "c", None),
        Metric(p + "state", 0, "g", None),
    )
    step(
        call(slow(clock, 0.25, OSError("down")), OSError),
        Metric(p + "state", 2, "g", None),  # pushed at once, by the call that opened it
        Metric(p + "failure", 1, "c", None),
        Metric(p + "latency", 250, "ms", None),
        Metric(p + "transition.closed.open", 1, "c", None),
        Metric(p + "state", 2, "g", None),
    )
    step(
        call(ok, cbsync.CircuitOpenError),
        Metric(p + "rejected", 1, "c", None),
        Metric(p + "state", 2, "g", None),
    )
    clock.advance(10)
    step(
        call(slow(clock, 0.125)),
        Metric(p + "state", 1, "g", None),  # pushed: half_open, then closed
        Metric(p + "state", 0, "g", None),
        Metric(p + "transition.open.half_open", 1, "c", None),
        Metric(p + "success", 1, "c", None),
        Metric(p + "latency", 125, "ms", None),
        Metric(p + "transition.half_open.closed", 1, "c", None),
        Metric(p + "state", 0, "g", None),
    )
    step(
        call(slow(clock, 2, KeyError("not a failure")), KeyError),
        Metric(p + "ignored", 1, "c", None),
        Metric(p + "state", 0, "g", None),
    )
    assert breaker.state is cbsync.State.CLOSED


def test_counters_are_exact_after_calls_from_8_threads(server, client, reporters):
    """8 threads calling while the reporter reads: the counters received add up to every call."""
    threads, calls = 8, 2000
    breaker = cbsync.CircuitBreaker("busy")
    reporter = reporters(breaker, client)
    barrier = threading.Barrier(threads)

    def work():
        barrier.wait(timeout=WAIT)
        call = breaker.call
        for _ in range(calls):
            call(ok)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    metrics = []
    while any(worker.is_alive() for worker in workers):
        reporter.flush()  # reads in the middle of the calls
        metrics += drain(server)
    for worker in workers:
        worker.join(timeout=60)
        assert not worker.is_alive()
    reporter.flush()
    metrics += received(server, client)
    assert total(metrics, "cbsync.busy.success") == threads * calls
    assert breaker.snapshot().successes == threads * calls
    assert timer_count(metrics, "cbsync.busy.latency") == pytest.approx(threads * calls)
    assert {m.name for m in metrics} == {
        "cbsync.busy.success",
        "cbsync.busy.latency",
        "cbsync.busy.state",
    }


def test_each_call_has_its_own_line_up_to_the_bound(server, client, clock, reporters):
    """Fewer calls than ``timer_lines``: one line each, no rate, within 5 %, their sum exact."""
    breaker = cbsync.CircuitBreaker("each", clock=clock)
    reporter = reporters(breaker, client)
    latencies = [(index + 1) / 1000 for index in range(50)]  # 1 ms to 50 ms
    for seconds in latencies:
        breaker.call(slow(clock, seconds))
    reporter.flush()
    lines = [m for m in received(server, client) if m.name == "cbsync.each.latency"]
    assert [m.rate for m in lines] == [None] * 50
    for value, seconds in zip(sorted(m.value for m in lines), latencies):
        assert seconds * 1000 / 1.05 <= value <= seconds * 1000 * 1.05
    assert math.fsum(m.value for m in lines) == pytest.approx(1275.0)  # the exact total


def test_timer_lines_are_bounded_and_the_servers_count_stays_right(
    server, client, clock, reporters
):
    """1,000 calls: 100 lines at rate 0.1; count, max, p50, p90, p99 and mean as a server sees."""
    breaker = cbsync.CircuitBreaker("many", clock=clock)
    reporter = reporters(breaker, client)
    for index in range(1000):
        breaker.call(slow(clock, (index + 1) / 1000))  # 1 ms to 1 s
    reporter.flush()
    metrics = received(server, client)
    lines = [m for m in metrics if m.name == "cbsync.many.latency"]
    assert len(lines) == 100
    assert {m.rate for m in lines} == {0.1}
    assert timer_count(metrics, "cbsync.many.latency") == pytest.approx(1000)
    values = sorted(m.value for m in lines)

    def upper(percent):  # how etsy/statsd computes upper_<percent>
        return values[round(percent / 100 * len(values)) - 1]

    for percent, expected in [(50, 500), (90, 900), (99, 990), (100, 1000)]:
        assert expected / 1.05 <= upper(percent) <= expected * 1.05, percent
    assert sum(values) / len(values) == pytest.approx(500.5, rel=0.05)
    assert total(metrics, "cbsync.many.success") == 1000


def test_sample_rate_is_the_share_of_calls_with_a_line(server, client, clock, reporters):
    """``sample_rate=0.1``: 50 calls make 5 lines at ``|@0.1``; counters stay exact."""
    breaker = cbsync.CircuitBreaker("sampled", clock=clock, failure_threshold=None)
    reporter = reporters(breaker, client, sample_rate=0.1)
    for index in range(40):
        breaker.call(slow(clock, index / 1000))
    for _ in range(10):
        with pytest.raises(OSError):
            breaker.call(_raise_oserror)
    reporter.flush()
    metrics = received(server, client)
    lines = [m for m in metrics if m.name == "cbsync.sampled.latency"]
    assert [m.rate for m in lines] == [0.1] * 5
    assert timer_count(metrics, "cbsync.sampled.latency") == pytest.approx(50)
    assert total(metrics, "cbsync.sampled.success") == 40
    assert total(metrics, "cbsync.sampled.failure") == 10
    assert {m.rate for m in metrics if m.type != "ms"} == {None}  # never sampled


def test_a_rate_that_floats_round_up_still_gives_its_share(server, client, reporters):
    """100 calls at ``sample_rate=0.07`` make 7 lines (100 * 0.07 is 7.000000000000001)."""
    breaker = cbsync.CircuitBreaker("share")
    reporter = reporters(breaker, client, sample_rate=0.07)
    for _ in range(100):
        breaker.call(ok)
    reporter.flush()
    lines = [m for m in received(server, client) if m.type == "ms"]
    assert [m.rate for m in lines] == [0.07] * 7


def test_a_tiny_rate_is_written_in_plain_digits(server, client, reporters):
    """200,000 calls on one line: the rate is ``0.000005``, never ``5e-06``."""
    breaker = cbsync.CircuitBreaker("tiny")
    reporter = reporters(breaker, client, timer_lines=1)
    call = breaker.call
    for _ in range(200_000):
        call(ok)
    reporter.flush()
    [line] = [m for m in received(server, client) if m.type == "ms"]
    assert line.rate == 0.000005
    assert 1 / line.rate == pytest.approx(200_000)


@given(
    st.dictionaries(
        st.integers(0, len(LATENCY_BOUNDS) - 1), st.integers(1, 10_000), min_size=1, max_size=20
    ),
    st.floats(0, 1),
    st.integers(1, 200),
)
def test_timer_values_stay_in_their_buckets(counts, where, lines):
    """Any histogram: ``lines`` sorted values, each in a bucket with calls, the top one last."""
    buckets = sorted((LATENCY_BOUNDS[index], count) for index, count in counts.items())
    calls = sum(count for _, count in buckets)
    lines = min(lines, calls)
    top = [min(bound, LATENCY_BOUNDS[-2] * 1.05) for bound, _ in buckets]
    lows = [0.0 if bound == LATENCY_BOUNDS[0] else bound / 1.05 for bound in top]
    low_sum = math.fsum(low * count for low, (_, count) in zip(lows, buckets))
    high_sum = math.fsum(high * count for high, (_, count) in zip(top, buckets))
    values = timer_values(buckets, low_sum + where * (high_sum - low_sum), lines)
    assert len(values) == lines
    assert values == sorted(values)
    for value in values:
        assert any(low * (1 - 1e-9) <= value <= high * (1 + 1e-9) for low, high in zip(lows, top))
    assert lows[-1] * (1 - 1e-9) <= values[-1] <= top[-1] * (1 + 1e-9)


def test_lines_are_packed_into_as_few_datagrams_as_fit(server, client, clock, reporters):
    """Lines go out packed greedily by the client's pipeline, each datagram under maxudpsize."""
    breakers = [cbsync.CircuitBreaker("packed-{}".format(i), clock=clock) for i in range(3)]
    reporter = reporters(breakers, client)
    for breaker in breakers:
        for index in range(100):
            breaker.call(slow(clock, index / 1000))
    reporter.flush()
    client.incr(SENTINEL)
    packets = []
    while True:
        data = server.recv(65536).decode("ascii")
        if data.startswith(SENTINEL + ":"):
            break
        packets.append(data)
    limit = 512  # statsd.StatsClient's default maxudpsize
    for packet, following in zip(packets, packets[1:]):
        assert len(packet) < limit
        # The next datagram's first line would not have fitted.
        assert len(packet) + 1 + len(following.split("\n")[0]) >= limit
    lines = [line for packet in packets for line in packet.split("\n")]
    assert len(lines) == 3 * 102  # per breaker: success, 100 latencies, state
    assert all(parse(line) for line in lines)


def test_no_slow_counter_without_slow_call_duration(server, client, clock, reporters):
    """Without ``slow_call_duration`` no call is counted as slow, however long."""
    breaker = cbsync.CircuitBreaker("db", clock=clock)
    reporter = reporters(breaker, client)
    breaker.call(slow(clock, 3600))
    reporter.flush()
    names = [metric.name for metric in received(server, client)]
    assert sorted(names) == ["cbsync.db.latency", "cbsync.db.state", "cbsync.db.success"]


def test_state_gauge_value_of_every_state(server, client, clock, reporters):
    """The state gauge is 0 closed, 1 half_open, 2 open, 3 forced_open, 4 disabled."""
    breaker = cbsync.CircuitBreaker(
        "gauge", clock=clock, failure_threshold=1, success_threshold=2, timeout=10
    )
    reporter = reporters(breaker, client)
    gauges = []

    def gauge_after(action):
        action()
        reporter.flush()
        gauges.append([m.value for m in received(server, client) if m.type == "g"][-1])

    def fail():
        with pytest.raises(OSError):
            breaker.call(_raise_oserror)

    gauge_after(lambda: None)
    gauge_after(fail)
    clock.advance(10)
    gauge_after(lambda: breaker.call(ok))
    gauge_after(lambda: breaker.call(ok))
    gauge_after(breaker.trip)
    gauge_after(breaker.disable)
    assert gauges == [0, 2, 1, 0, 3, 4]


def test_a_state_change_is_pushed_at_once_over_udp(server, client, reporters):
    """Over UDP a state change sends the gauge at once, from the thread that made it."""
    breaker = cbsync.CircuitBreaker("pushed")
    reporters(breaker, client)
    breaker.trip()
    assert received(server, client) == [Metric("cbsync.pushed.state", 3, "g", None)]
    breaker.reset()
    assert received(server, client) == [Metric("cbsync.pushed.state", 0, "g", None)]


HOSTILE_NAMES = [
    ("a.b:c|d@#\n", "a_b_c_d___"),
    ("api.example.com:443", "api_example_com_443"),
    ("https://api.example.com:443", "https___api_example_com_443"),
    ("héllo wörld", "h_llo_w_rld"),
    ("\u2603 snow", "__snow"),
    ("emoji \U0001f4a5", "emoji__"),
    ("lone \udcff surrogate", "lone___surrogate"),
    ("a b\tc", "a_b_c"),
    ("pipe|c", "pipe_c"),
    ("at@0.5", "at_0_5"),
    ("line\nbreak:1|c", "line_break_1_c"),
    ("crlf\r\n", "crlf__"),
    ("nul\x00byte", "nul_byte"),
    ("%s%d%%", "_s_d__"),
    ("...", "___"),
    ("ok-name_1", "ok-name_1"),
]


@pytest.mark.parametrize(("name", "segment"), HOSTILE_NAMES)
def test_hostile_breaker_names_give_only_valid_lines(
    server, client, clock, reporters, name, segment
):
    """A hostile breaker name becomes one safe segment in every valid line."""
    breaker = cbsync.CircuitBreaker(
        name, clock=clock, failure_threshold=1, ignore=(KeyError,), slow_call_duration=0.1
    )
    reporter = reporters(breaker, client)
    breaker.call(slow(clock, 0.2))
    with pytest.raises(KeyError):
        breaker.call(slow(clock, 0, KeyError("ignored")))
    with pytest.raises(OSError):
        breaker.call(_raise_oserror)
    with pytest.raises(cbsync.CircuitOpenError):
        breaker.call(ok)
    reporter.flush()
    rests = []
    for metric in received(server, client):  # parse() checks every line
        prefix, breaker_segment, rest = metric.name.split(".", 2)
        assert (prefix, breaker_segment) == ("cbsync", segment)
        rests.append(rest)
    assert collections.Counter(rests) == collections.Counter(
        ["success", "failure", "ignored", "rejected", "slow", "transition.closed.open"]
        + ["latency"] * 2
        + ["state"] * 2  # pushed, and sent with the interval
    )


def test_empty_name_becomes_underscore(reporters):
    """An empty breaker name maps to ``_`` (a breaker refuses one, the mapping does not)."""
    assert sanitize_segment("") == "_"
    reporter = reporters([], host="127.0.0.1")
    assert reporter.metric_base("") == "cbsync._"


@pytest.mark.parametrize(
    ("prefix", "clean"),
    [
        ("cbsync", "cbsync"),
        ("app.cb", "app.cb"),
        (".my app..cb.", "my_app.cb"),
        ("x:y|z@1#2", "x_y_z_1_2"),
        ("\u00fc.\u00df\n", "_.__"),
        ("", ""),
        ("...", ""),
    ],
)
def test_prefix_keeps_dots_and_loses_everything_unsafe(server, client, reporters, prefix, clean):
    """The prefix keeps its dots but no empty segment and nothing unsafe."""
    reporter = reporters(cbsync.CircuitBreaker("svc"), client, prefix=prefix)
    assert sanitize_prefix(prefix) == clean
    assert reporter.prefix == clean
    reporter.flush()
    [metric] = received(server, client)
    assert metric.name == (clean + ".svc.state" if clean else "svc.state")


def test_prefix_of_the_statsd_client_goes_in_front(server, reporters):
    """A prefix set on the statsd client itself comes first, unchanged."""
    prefixed = statsd.StatsClient("127.0.0.1", server.getsockname()[1], prefix="host-1.web")
    breaker = cbsync.CircuitBreaker("svc")
    reporter = reporters(breaker, prefixed)
    breaker.call(ok)
    reporter.flush()
    plain = statsd.StatsClient("127.0.0.1", server.getsockname()[1])
    names = sorted(metric.name for metric in received(server, plain))
    close_udp(plain)
    close_udp(prefixed)
    assert names == [
        "host-1.web.cbsync.svc.latency",
        "host-1.web.cbsync.svc.state",
        "host-1.web.cbsync.svc.success",
    ]


def reporter_threads():
    """The reporter threads alive now."""
    return {t for t in threading.enumerate() if t.name == "cbsync-reporter" and t.is_alive()}


def test_default_client_from_host_and_port_and_close_sends_and_stops(server):
    """Without a client one is made for ``host`` and ``port``; close() sends, stops, detaches."""
    port = server.getsockname()[1]
    before = reporter_threads()
    breaker = cbsync.CircuitBreaker("svc")
    reporter = StatsdReporter(breaker, host="127.0.0.1", port=port, prefix="app", interval=NEVER)
    [thread] = reporter_threads() - before
    assert thread.daemon
    breaker.call(ok)
    reporter.close()  # sends, stops the thread, closes its socket
    assert not thread.is_alive()
    breaker.trip()  # no listener left: nothing pushed
    reporter.close()  # twice: nothing happens
    reporter.flush()  # after close: reads and sends nothing, raises nothing
    sentinel = statsd.StatsClient("127.0.0.1", port)
    names = sorted(metric.name for metric in received(server, sentinel))
    close_udp(sentinel)
    assert names == ["app.svc.latency", "app.svc.state", "app.svc.success"]


def test_registry_reports_present_and_future_breakers(server, client, reporters):
    """A registry's breakers are read at each interval: those made before and after."""
    registry = cbsync.Registry()
    before = registry.get("before")
    reporter = reporters(registry, client)
    after = registry.get("after", failure_threshold=1)
    before.call(ok)
    with pytest.raises(OSError):
        after.call(_raise_oserror)
    pushed = received(server, client)
    assert pushed == [Metric("cbsync.after.state", 2, "g", None)]  # future breakers too
    reporter.flush()
    names = collections.Counter(metric.name for metric in received(server, client))
    assert names == collections.Counter(
        [
            "cbsync.before.success",
            "cbsync.before.latency",
            "cbsync.before.state",
            "cbsync.after.failure",
            "cbsync.after.latency",
            "cbsync.after.transition.closed.open",
            "cbsync.after.state",
        ]
    )


def test_default_source_is_the_current_default_registry(server, client, breaker_registry):
    """Without a source the reporter reads ``cbsync.registry``: here the fixture's registry."""
    reporter = StatsdReporter(client=client, interval=NEVER)
    try:
        cbsync.registry.get("fixture").call(ok)
        reporter.flush()
        names = sorted(metric.name for metric in received(server, client))
    finally:
        reporter.close()
    assert names == ["cbsync.fixture.latency", "cbsync.fixture.state", "cbsync.fixture.success"]
    assert breaker_registry["fixture"].listeners == ()  # close() removed the state push


def test_background_thread_sends_by_itself(server, client, reporters):
    """The thread reads and sends every interval without being asked."""
    breaker = cbsync.CircuitBreaker("background")
    reporters(breaker, client, interval="50ms")
    breaker.call(ok)
    metrics = receive_until(server, lambda got: total(got, "cbsync.background.success"))
    assert {m.name for m in metrics} <= {
        "cbsync.background.state",
        "cbsync.background.success",
        "cbsync.background.latency",
    }


def test_udp_to_a_server_that_is_down_never_reaches_a_call(udp, reporters, caplog):
    """StatsD down (nothing on the port): calls and flushes go on, nothing raised or logged."""
    caplog.set_level(logging.DEBUG, logger="cbsync")
    breaker = cbsync.CircuitBreaker("down", failure_threshold=1)
    reporter = reporters(breaker, udp(closed_port(socket.SOCK_DGRAM)))
    for _ in range(20):
        assert breaker.call(ok) == "ok"
        reporter.flush()  # the kernel answers "port unreachable" each time
    with pytest.raises(OSError, match="down"):
        breaker.call(_raise_oserror)  # opens: the pushed gauge goes nowhere either
    reporter.flush()
    assert [r for r in caplog.records if "report" in r.getMessage()] == []


def test_a_full_socket_buffer_drops_whole_datagrams_only(server, udp, reporters, caplog):
    """A server that stops reading: calls go on, flushes never raise, what arrives is intact."""
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # a few datagrams
    client = udp(server.getsockname()[1])
    breakers = [cbsync.CircuitBreaker("full-{}".format(i)) for i in range(50)]
    reporter = reporters(breakers, client)
    for _ in range(20):
        for breaker in breakers:
            for _ in range(10):
                assert breaker.call(ok) == "ok"
        reporter.flush()  # far more than the buffer holds
    queued = drain(server)  # parse() fails on any cut line
    assert 0 < len(queued) < 20 * 50 * 12
    for breaker in breakers:
        breaker.call(ok)
    reporter.flush()  # room again: this interval arrives whole
    metrics = received(server, client)
    assert caplog.records == []
    assert total(metrics, "cbsync.full-0.success") == 1
    assert len([m for m in metrics if m.type == "g"]) == 50


def test_a_send_that_raises_never_reaches_a_call_and_is_logged_once_a_minute(
    server, udp, reporters, caplog
):
    """A client that raises (a non-ASCII client prefix): calls go on; one log line a minute."""
    caplog.set_level(logging.DEBUG, logger="cbsync")
    # The statsd client encodes every line as ASCII: this prefix makes each send raise.
    client = udp(server.getsockname()[1], prefix="h\u00e9")
    with freeze_time("2024-01-01 00:00:00") as frozen:
        breaker = cbsync.CircuitBreaker("raising", failure_threshold=1)
        reporter = reporters(breaker, client)
        assert breaker.call(ok) == "ok"
        with pytest.raises(OSError, match="down"):
            breaker.call(_raise_oserror)  # opens: the pushed gauge raises, silently
        reporter.flush()
        reporter.flush()
        assert len(caplog.records) == 2  # the state change, then one failure
        frozen.tick(61)
        reporter.flush()
        reporter.close(flush=False)
    failures = [r for r in caplog.records if "failed to report" in r.getMessage()]
    assert len(failures) == 2
    assert all(isinstance(r.exc_info[1], UnicodeEncodeError) for r in failures)


def test_tcp_client_reconnects_once_the_server_is_back(clock, caplog):
    """A refused TCP connection is logged; once StatsD is back the next interval gets through."""
    caplog.set_level(logging.WARNING, logger="cbsync")
    port = closed_port(socket.SOCK_STREAM)
    tcp = statsd.TCPStatsClient("127.0.0.1", port, timeout=WAIT)
    breaker = cbsync.CircuitBreaker("back", clock=clock)
    reporter = StatsdReporter(breaker, client=tcp, interval=NEVER)
    try:
        assert breaker.call(ok) == "ok"
        reporter.flush()
        [record] = caplog.records
        assert isinstance(record.exc_info[1], ConnectionRefusedError)
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("127.0.0.1", port))
        listening.listen(1)
        listening.settimeout(WAIT)
        breaker.call(ok)
        reporter.flush()
    finally:
        reporter.close(flush=False)
    connection, _ = listening.accept()
    connection.settimeout(WAIT)
    tcp.close()  # ends the stream, so everything sent can be read to EOF
    data = read_to_eof(connection)
    connection.close()
    listening.close()
    # The call of the failed interval is lost with it; the next interval is whole.
    assert [(m.name, m.value) for m in parse_stream(data)] == [
        ("cbsync.back.success", 1),
        ("cbsync.back.latency", 0),
        ("cbsync.back.state", 0),
    ]


def read_to_eof(connection):
    """Everything a stream connection delivers until the peer closes it."""
    chunks = []
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _stream_server(kind, tmp_path):
    if kind == "tcp":
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("127.0.0.1", 0))
        client = statsd.TCPStatsClient("127.0.0.1", listening.getsockname()[1], timeout=WAIT)
    else:
        path = str(tmp_path / "statsd.sock")
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listening.bind(path)
        client = statsd.UnixSocketStatsClient(path, timeout=WAIT)
    listening.listen(8)
    listening.settimeout(WAIT)
    return listening, client


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_stream_clients_get_intact_lines_and_one_reconnection(kind, tmp_path, reporters, caplog):
    """TCP and Unix clients: calls from threads, one reconnection, every line intact."""
    threads, calls = 4, 100
    listening, client = _stream_server(kind, tmp_path)
    received_data = []

    def serve():
        for _ in range(2):
            connection, _ = listening.accept()
            connection.settimeout(WAIT)
            with connection:
                received_data.append(read_to_eof(connection))

    reader = threading.Thread(target=serve)
    reader.start()
    breaker = cbsync.CircuitBreaker("shared", failure_threshold=None)
    reporter = reporters(breaker, client)
    reporter.flush()
    breaker.trip()  # not pushed: a stream send could block the call
    breaker.reset()
    client.close()  # the connection drops: the next interval makes one more
    barrier = threading.Barrier(threads)

    def work():
        barrier.wait(timeout=WAIT)
        for _ in range(calls):
            breaker.call(ok)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    reporter.close()  # the last interval
    client.close()  # the reader sees EOF
    reader.join(timeout=30)
    assert not reader.is_alive()
    listening.settimeout(0)
    with pytest.raises(BlockingIOError):
        listening.accept()  # one connection per interval, not one per call or thread
    listening.close()
    assert [r for r in caplog.records if "report" in r.getMessage()] == []
    metrics = [m for data in received_data for m in parse_stream(data)]
    gauge = Metric("cbsync.shared.state", 0, "g", None)
    assert [m for m in metrics if m.type == "g"] == [gauge, gauge]
    assert total(metrics, "cbsync.shared.success") == threads * calls
    assert total(metrics, "cbsync.shared.transition.closed.forced_open") == 1
    assert timer_count(metrics, "cbsync.shared.latency") == pytest.approx(threads * calls)


def test_a_thread_that_cannot_start_is_logged_and_flush_still_sends(
    server, client, reporters, monkeypatch, caplog
):
    """If the reporter's thread cannot start, calls still succeed and flush() still sends."""
    caplog.set_level(logging.WARNING, logger="cbsync")

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    breaker = cbsync.CircuitBreaker("threadless")
    reporter = reporters(breaker, client)
    monkeypatch.undo()
    assert breaker.call(ok) == "ok"
    [record] = caplog.records
    assert "could not start its thread" in record.getMessage()
    reporter.flush()
    names = sorted(metric.name for metric in received(server, client))
    assert names == [
        "cbsync.threadless.latency",
        "cbsync.threadless.state",
        "cbsync.threadless.success",
    ]


# 1,000 breakers for 10,000 intervals would take minutes (a read of 1,000
# breakers costs about 30 ms, 7 times that traced): instead, many breakers for
# a few intervals and a few breakers for many intervals, each against a bound
# 16 times tighter than 1 MiB.  A leak of one small object per breaker per
# interval, or of one per interval, grows either by more than that.
@pytest.mark.parametrize(("breakers", "intervals"), [(1000, 10), (10, 1000)])
def test_memory_stays_flat_over_breakers_and_intervals(
    breakers, intervals, server, client, reporters
):
    """Busy breakers, intervals driven by flush(): traced memory grows < 64 KiB."""
    registry = cbsync.Registry()
    calls = [
        registry.get("b{}".format(i), failure_threshold=None, failure_rate_threshold=None).call
        for i in range(breakers)
    ]
    reporter = reporters(registry, client)  # the server never reads: the kernel drops

    def interval():
        for call in calls:
            call(ok)
        try:
            calls[0](_raise_oserror)
        except OSError:
            pass  # a failure too, in every interval
        reporter.flush()

    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(3):  # the last snapshots and the histograms' buckets, traced
            interval()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(intervals):
            interval()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns when a process with threads forks: this test does so on
# purpose (the reporter's thread runs in the parent) to check the child.
@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks"
    ":DeprecationWarning"
)
def test_forked_child_restarts_the_thread_and_reports_only_its_own_calls(server, client):
    """After os.fork() the child's thread sends by itself, never what the parent counted."""
    registry = cbsync.Registry()
    parent = registry.get("parent")
    reporter = StatsdReporter(registry, client=client, interval="200ms")
    parent_threads = reporter_threads()
    report_r, report_w = os.pipe()
    done_r, done_w = os.pipe()
    for _ in range(5):
        parent.call(ok)  # counted in the parent, maybe not reported yet at the fork
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return to pytest
        status = 1
        try:
            os.close(report_r)
            os.close(done_w)
            for _ in range(3):
                registry.get("child").call(ok)
            threads = reporter_threads()
            report = {
                "new_thread": len(threads) == 1 and not threads & parent_threads,
                "daemon": all(thread.daemon for thread in threads),
            }
            os.write(report_w, json.dumps(report).encode())
            os.close(report_w)
            os.read(done_r, 1)  # wait until the parent got the child's lines
            status = 0
        finally:
            os._exit(status)
    os.close(report_w)
    os.close(done_r)
    try:
        with os.fdopen(report_r, "rb") as pipe:
            report = json.loads(pipe.read().decode())
        assert report == {"new_thread": True, "daemon": True}
        metrics = receive_until(server, lambda got: total(got, "cbsync.child.success") >= 3)
    finally:
        os.close(done_w)
        _, status = os.waitpid(pid, 0)
    assert status == 0
    reporter.close()
    metrics += received(server, client)
    assert total(metrics, "cbsync.child.success") == 3
    assert total(metrics, "cbsync.parent.success") == 5  # sent by the parent only


def test_a_reporter_still_open_at_exit_sends_its_calls(server):
    """A process that ends normally closes its open reporters: a short script reports too."""
    code = (
        "import sys, cbsync\n"
        "from cbsync.integrations.statsd import StatsdReporter\n"
        "StatsdReporter(host='127.0.0.1', port=int(sys.argv[1]), interval='1h')\n"
        "cbsync.registry.get('exiting').call(int)\n"
    )
    port = str(server.getsockname()[1])
    subprocess.run([sys.executable, "-c", code, port], check=True, timeout=60)
    packet = server.recv(65536).decode("ascii")
    names = sorted(metric.name for metric in parse_packet(packet))
    assert names == ["cbsync.exiting.latency", "cbsync.exiting.state", "cbsync.exiting.success"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0}, "sample_rate=0"),
        ({"sample_rate": 1.5}, "sample_rate=1.5"),
        ({"sample_rate": float("nan")}, "sample_rate=nan"),
        ({"sample_rate": True}, "sample_rate=True"),
        ({"sample_rate": "0.5"}, "sample_rate='0.5'"),
        ({"timer_lines": 0}, "timer_lines=0"),
        ({"timer_lines": 1.5}, "timer_lines=1.5"),
        ({"timer_lines": True}, "timer_lines=True"),
        ({"prefix": None}, "prefix=None"),
        ({"host": ""}, "host=''"),
        ({"port": 0}, "port=0"),
        ({"port": 65536}, "port=65536"),
        ({"port": "8125"}, "port='8125'"),
        ({"host": "no-such-host.invalid"}, "host='no-such-host.invalid'"),
        ({"client": object()}, "must be a statsd.StatsClient"),
        ({"client": "udp", "port": 9125}, "not both"),
        ({"interval": 0}, "interval=0"),
        ({"interval": "soon"}, "interval='soon'"),
        ({"source": 42}, "source=42"),
        ({"source": ["not a breaker"]}, "'not a breaker' is not a cbsync.CircuitBreaker"),
    ],
)
def test_bad_arguments_raise_config_error(client, kwargs, message):
    """Bad arguments raise ConfigError naming the argument and its value."""
    if kwargs.get("client") == "udp":
        kwargs = dict(kwargs, client=client)
    kwargs.setdefault("source", [])
    with pytest.raises(cbsync.ConfigError, match=re.escape(message)):
        StatsdReporter(**kwargs)


def test_import_cbsync_does_not_import_statsd():
    """``import cbsync`` leaves the statsd package unimported."""
    code = "import sys, cbsync; sys.exit('statsd' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_docstring_examples_run():
    """The module's docstring examples pass."""
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
