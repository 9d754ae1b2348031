"""StatsD reporting, checked against real UDP, TCP and Unix sockets on this host."""

import collections
import gc
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import weakref

import pytest
import statsd
from _support import ok
from freezegun import freeze_time

import cbsync
from cbsync.integrations import statsd as module
from cbsync.integrations.statsd import (
    StatsdListener,
    sanitize_prefix,
    sanitize_segment,
)

#: ``name:value|type[|@rate]`` -- the StatsD line protocol, as far as cbsync uses it.
LINE = re.compile(
    r"^(?P<name>[^:|@\n]+):(?P<value>-?[0-9]+(?:\.[0-9]+)?)\|(?P<type>c|ms|g)"
    r"(?:\|@(?P<rate>[0-9.]+))?$"
)
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SENTINEL = "zz-test-sentinel"
WAIT = 5.0  # seconds a read may wait for a datagram already sent
#: A flush interval the tests never reach: only flush() (or a full buffer) sends.
NEVER = "1h"

Metric = collections.namedtuple("Metric", "name value type rate")


def parse(line):
    """One received line as a Metric; fails the test if it breaks the protocol."""
    match = LINE.match(line)
    assert match is not None, "not a StatsD line: {!r}".format(line)
    assert SAFE_NAME.match(match["name"]), "unsafe metric name: {!r}".format(line)
    rate = float(match["rate"]) if match["rate"] else None
    return Metric(match["name"], float(match["value"]), match["type"], rate)


@pytest.fixture
def server():
    """A StatsD server: a UDP socket bound to a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    yield sock
    sock.close()


@pytest.fixture
def client(server):
    """A real statsd UDP client sending to ``server``."""
    udp = statsd.StatsClient("127.0.0.1", server.getsockname()[1])
    yield udp
    close_udp(udp)


@pytest.fixture
def listeners():
    """Makes listeners (flushed only on demand unless told otherwise); closes them after."""
    made = []

    def make(client=None, **kwargs):
        kwargs.setdefault("flush_interval", NEVER)
        listener = StatsdListener(client, **kwargs)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def close_udp(udp):
    """Close a statsd UDP client (statsd 3.3 has no ``close()``)."""
    if hasattr(udp, "close"):
        udp.close()
    else:
        udp._sock.close()


def datagrams(server, client):
    """Every datagram the server got until now, in order, as text.

    A sentinel sent last through the same client marks the end (loopback UDP
    from one socket arrives in order), so nothing waits for silence.
    """
    client.incr(SENTINEL)
    packets = []
    while True:
        data = server.recv(65536).decode("ascii")
        if data.startswith(SENTINEL + ":"):
            return packets
        packets.append(data)


def received(server, client):
    """Every metric the server got until now, in order."""
    return [parse(line) for packet in datagrams(server, client) for line in packet.split("\n")]


def closed_tcp_port():
    """A loopback TCP port nothing listens on (bound, then released)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class BrokenClient:
    """A statsd client whose every method raises, counting the attempts."""

    def __init__(self):
        self.attempts = 0

    def _fail(self, *args, **kwargs):
        self.attempts += 1
        raise RuntimeError("statsd client is broken")

    incr = timing = gauge = _fail


class RecordingClient:
    """A client that is not a statsd one: records each call; raises while ``broken``."""

    def __init__(self):
        self.calls = []
        self.broken = False

    def _record(self, method, args):
        if self.broken:
            raise OSError("statsd is down")
        self.calls.append((method, *args))

    def incr(self, *args):
        self._record("incr", args)

    def timing(self, *args):
        self._record("timing", args)

    def gauge(self, *args):
        self._record("gauge", args)


class StuckClient(RecordingClient):
    """A client whose first call blocks until ``release`` is set (a hung server)."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def _record(self, method, args):
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(WAIT)
        super()._record(method, args)


def slow(clock, seconds, exc=None):
    """A function that takes ``seconds`` on ``clock`` and then returns or raises."""

    def run():
        clock.advance(seconds)
        if exc is not None:
            raise exc
        return "ok"

    return run


def call_from_threads(breaker, threads, calls, join_timeout):
    """``threads`` threads, started together, each make ``calls`` successful calls."""
    barrier = threading.Barrier(threads)

    def work():
        barrier.wait(timeout=WAIT)
        call = breaker.call
        for _ in range(calls):
            call(ok)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=join_timeout)
        assert not worker.is_alive()


def _raise_oserror():
    raise OSError("down")


def test_lifecycle_sends_exactly_the_documented_lines(server, client, clock, listeners):
    """CLOSED -> OPEN -> HALF_OPEN -> CLOSED: each step sends exactly the documented lines."""
    listener = listeners(client)
    breaker = cbsync.CircuitBreaker(
        "payments",
        clock=clock,
        listeners=[listener],
        failure_threshold=2,
        success_threshold=1,
        timeout=10,
        slow_call_duration=0.5,
        ignore=(KeyError,),
    )
    p = "cbsync.payments."

    def step(action, *expected):
        action()
        listener.flush()
        assert collections.Counter(received(server, client)) == collections.Counter(expected)

    def call(func, exc=None):
        def run():
            if exc is None:
                breaker.call(func)
            else:
                with pytest.raises(exc):
                    breaker.call(func)

        return run

    step(lambda: None, Metric(p + "state", 0, "g", None))  # attached
    step(call(ok), Metric(p + "success", 1, "c", None), Metric(p + "latency", 0, "ms", None))
    step(
        call(slow(clock, 0.75)),
        Metric(p + "success", 1, "c", None),
        Metric(p + "latency", 750, "ms", None),
        Metric(p + "slow", 1, "c", None),
    )
    step(
        call(slow(clock, 0.5, OSError("down")), OSError),  # exactly at the limit: slow
        Metric(p + "failure", 1, "c", None),
        Metric(p + "latency", 500, "ms", None),
        Metric(p + "slow", 1, "c", None),
    )
    step(
        call(slow(clock, 0.25, OSError("down")), OSError),
        Metric(p + "failure", 1, "c", None),
        Metric(p + "latency", 250, "ms", None),
        Metric(p + "transition.closed.open", 1, "c", None),
        Metric(p + "state", 2, "g", None),
    )
    step(call(ok, cbsync.CircuitOpenError), Metric(p + "rejected", 1, "c", None))
    clock.advance(10)
    step(
        call(slow(clock, 0.125)),
        Metric(p + "transition.open.half_open", 1, "c", None),
        Metric(p + "success", 1, "c", None),
        Metric(p + "latency", 125, "ms", None),
        Metric(p + "transition.half_open.closed", 1, "c", None),
        Metric(p + "state", 0, "g", None),  # the last of the flush: half_open, then closed
    )
    step(
        call(slow(clock, 2, KeyError("not a failure")), KeyError),
        Metric(p + "ignored", 1, "c", None),
    )
    assert breaker.state is cbsync.State.CLOSED


def test_one_flush_sums_counters_and_keeps_every_latency(server, client, clock, listeners):
    """N successes in one flush: one counter line with value N and N latency values."""
    listener = listeners(client)
    breaker = cbsync.CircuitBreaker(
        "sums", clock=clock, listeners=[listener], failure_threshold=3, slow_call_duration=0.5
    )
    for index in range(100):
        breaker.call(slow(clock, index / 100))
    for _ in range(3):
        with pytest.raises(OSError):
            breaker.call(_raise_oserror)
    listener.flush()
    metrics = received(server, client)
    counters = {m.name: m.value for m in metrics if m.type == "c"}
    assert counters == {
        "cbsync.sums.success": 100,
        "cbsync.sums.failure": 3,
        "cbsync.sums.slow": 50,  # 0.50 to 0.99 s
        "cbsync.sums.transition.closed.open": 1,
    }
    assert len([m for m in metrics if m.type == "c"]) == 4  # one line per counter
    latencies = [m.value for m in metrics if m.name == "cbsync.sums.latency"]
    assert sorted(latencies) == sorted([index * 10.0 for index in range(100)] + [0.0] * 3)
    assert [(m.name, m.value) for m in metrics if m.type == "g"] == [("cbsync.sums.state", 2)]


def test_lines_are_packed_into_as_few_datagrams_as_fit(server, client, clock, listeners):
    """Lines go out packed greedily, each datagram shorter than the client's maxudpsize."""
    listener = listeners(client)
    breaker = cbsync.CircuitBreaker("packed", clock=clock, listeners=[listener])
    for index in range(200):
        breaker.call(slow(clock, index / 1000))
    listener.flush()
    packets = datagrams(server, client)
    assert len(packets) > 1
    limit = client._maxudpsize
    for packet, following in zip(packets, packets[1:]):
        assert len(packet) < limit
        # The next datagram's first line would not have fitted.
        assert len(packet) + 1 + len(following.split("\n")[0]) >= limit
    assert len(packets[-1]) < limit
    lines = [line for packet in packets for line in packet.split("\n")]
    assert len(lines) == 202  # state, success counter, 200 latencies


def test_no_slow_counter_without_slow_call_duration(server, client, clock, listeners):
    """Without ``slow_call_duration`` no call is counted as slow, however long."""
    listener = listeners(client)
    breaker = cbsync.CircuitBreaker("db", clock=clock, listeners=[listener])
    breaker.call(slow(clock, 3600))
    listener.flush()
    names = [metric.name for metric in received(server, client)]
    assert sorted(names) == ["cbsync.db.latency", "cbsync.db.state", "cbsync.db.success"]


def test_state_gauge_value_of_every_state(server, client, clock, listeners):
    """The state gauge is 0 closed, 1 half_open, 2 open, 3 forced_open, 4 disabled."""
    listener = listeners(client)
    breaker = cbsync.CircuitBreaker(
        "gauge",
        clock=clock,
        listeners=[listener],
        failure_threshold=1,
        success_threshold=2,
        timeout=10,
    )
    gauges = []

    def gauge_after(action):
        action()
        listener.flush()
        gauges.extend(m.value for m in received(server, client) if m.type == "g")

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


HOSTILE_NAMES = [
    ("api.example.com:443", "api_example_com_443"),
    ("https://api.example.com:443", "https___api_example_com_443"),
    ("héllo wörld", "h_llo_w_rld"),
    ("\u2603 snow", "__snow"),
    ("emoji \U0001f4a5", "emoji__"),
    ("lone \udcff surrogate", "lone___surrogate"),
    ("a b\tc", "a_b_c"),
    ("key:value", "key_value"),
    ("pipe|c", "pipe_c"),
    ("at@0.5", "at_0_5"),
    ("hash#tag", "hash_tag"),
    ("line\nbreak:1|c", "line_break_1_c"),
    ("crlf\r\n", "crlf__"),
    ("nul\x00byte", "nul_byte"),
    ("%s%d%%", "_s_d__"),
    ("...", "___"),
    (".leading.and.trailing.", "_leading_and_trailing_"),
    ("ok-name_1", "ok-name_1"),
]


@pytest.mark.parametrize(("name", "segment"), HOSTILE_NAMES)
def test_hostile_breaker_names_give_only_valid_lines(
    server, client, clock, listeners, name, segment
):
    """A hostile breaker name becomes one safe segment in every valid line."""
    listener = listeners(client)
    breaker = cbsync.CircuitBreaker(
        name,
        clock=clock,
        listeners=[listener],
        failure_threshold=1,
        ignore=(KeyError,),
        slow_call_duration=0.1,
    )
    breaker.call(slow(clock, 0.2))
    with pytest.raises(KeyError):
        breaker.call(slow(clock, 0, KeyError("ignored")))
    with pytest.raises(OSError):
        breaker.call(_raise_oserror)
    with pytest.raises(cbsync.CircuitOpenError):
        breaker.call(ok)
    listener.flush()
    rests = []
    for metric in received(server, client):
        prefix, breaker_segment, rest = metric.name.split(".", 2)
        assert (prefix, breaker_segment) == ("cbsync", segment)
        rests.append((rest, metric.value))
    assert collections.Counter(rests) == collections.Counter(
        [
            ("success", 1),
            ("failure", 1),
            ("ignored", 1),
            ("rejected", 1),
            ("slow", 1),
            ("transition.closed.open", 1),
            ("latency", 200),
            ("latency", 0),
            ("state", 2),
        ]
    )


def test_empty_name_becomes_underscore():
    """An empty breaker name maps to ``_`` (a breaker refuses one, the mapping does not)."""
    assert sanitize_segment("") == "_"
    listener = StatsdListener(host="127.0.0.1")
    assert listener.metric_base("") == "cbsync._"
    listener.close()


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
def test_prefix_keeps_dots_and_loses_everything_unsafe(server, client, listeners, prefix, clean):
    """The prefix keeps its dots but no empty segment and nothing unsafe."""
    listener = listeners(client, prefix=prefix)
    assert sanitize_prefix(prefix) == clean
    assert listener.prefix == clean
    cbsync.CircuitBreaker("svc", listeners=[listener])
    listener.flush()
    [metric] = received(server, client)
    assert metric.name == (clean + ".svc.state" if clean else "svc.state")


def test_prefix_of_the_statsd_client_goes_in_front(server, listeners):
    """A prefix set on the statsd client itself comes first, unchanged."""
    prefixed = statsd.StatsClient("127.0.0.1", server.getsockname()[1], prefix="host-1.web")
    listener = listeners(prefixed)
    cbsync.CircuitBreaker("svc", listeners=[listener]).call(ok)
    listener.flush()
    plain = statsd.StatsClient("127.0.0.1", server.getsockname()[1])
    names = sorted(metric.name for metric in received(server, plain))
    close_udp(plain)
    close_udp(prefixed)
    assert names == [
        "host-1.web.cbsync.svc.latency",
        "host-1.web.cbsync.svc.state",
        "host-1.web.cbsync.svc.success",
    ]


def test_default_client_from_host_and_port_and_close_flushes(server):
    """Without a client, one is made for ``host`` and ``port``; close() sends what is buffered."""
    port = server.getsockname()[1]
    listener = StatsdListener(host="127.0.0.1", port=port, prefix="app", flush_interval=NEVER)
    breaker = cbsync.CircuitBreaker("svc", listeners=[listener])
    breaker.call(ok)
    thread = listener._thread
    listener.close()  # flushes, stops the thread, closes its socket
    assert listener._thread is None
    assert not thread.is_alive()
    breaker.call(ok)  # closed: buffers nothing, sends nothing, logs nothing
    assert len(listener._buffer) == 0
    listener.close()  # twice: nothing happens
    sentinel = statsd.StatsClient("127.0.0.1", port)
    names = sorted(metric.name for metric in received(server, sentinel))
    close_udp(sentinel)
    assert names == ["app.svc.latency", "app.svc.state", "app.svc.success"]


def test_sample_rate_samples_latencies_and_counters_stay_exact(
    server, client, clock, listeners, monkeypatch
):
    """``sample_rate`` samples the latency values (``|@rate``); counters are exact sums."""
    draws = iter([0.25, 0.75])  # keep the first latency, drop the second
    monkeypatch.setattr(random, "random", lambda: next(draws))
    listener = listeners(client, sample_rate=0.5)
    breaker = cbsync.CircuitBreaker(
        "sampled", clock=clock, listeners=[listener], failure_threshold=1
    )
    breaker.call(slow(clock, 0.1))
    with pytest.raises(OSError):
        breaker.call(slow(clock, 0.2, OSError("down")))  # then opens
    for _ in range(2):
        with pytest.raises(cbsync.CircuitOpenError):
            breaker.call(ok)
    listener.flush()
    p = "cbsync.sampled."
    assert collections.Counter(received(server, client)) == collections.Counter(
        [
            Metric(p + "success", 1, "c", None),
            Metric(p + "failure", 1, "c", None),
            Metric(p + "rejected", 2, "c", None),
            Metric(p + "latency", 100, "ms", 0.5),
            Metric(p + "transition.closed.open", 1, "c", None),
            Metric(p + "state", 2, "g", None),
        ]
    )
    with pytest.raises(StopIteration):
        next(draws)  # exactly two draws: one per latency value


def test_states_survive_a_sample_rate_that_drops_everything(
    server, client, listeners, monkeypatch
):
    """With every sample dropped, the state gauge and transitions still arrive."""
    monkeypatch.setattr(random, "random", lambda: 0.999)
    listener = listeners(client, sample_rate=0.01)
    breaker = cbsync.CircuitBreaker("tiny", listeners=[listener], failure_threshold=1)
    breaker.call(ok)
    with pytest.raises(OSError):
        breaker.call(_raise_oserror)
    breaker.reset()
    listener.flush()
    metrics = received(server, client)
    assert [(m.name, m.value) for m in metrics if m.type == "ms"] == []
    assert [(m.name, m.value) for m in metrics if "success" not in m.name] == [
        ("cbsync.tiny.failure", 1),
        ("cbsync.tiny.transition.closed.open", 1),
        ("cbsync.tiny.transition.open.closed", 1),
        ("cbsync.tiny.state", 0),
    ]


def test_other_clients_get_sums_and_sample_latencies_themselves(clock, listeners):
    """A client that is not a statsd one gets incr(sum), timing(ms, rate) and gauge calls."""
    recording = RecordingClient()
    listener = listeners(recording, sample_rate=0.5)
    breaker = cbsync.CircuitBreaker("duck", clock=clock, listeners=[listener])
    breaker.call(slow(clock, 0.25))
    breaker.call(slow(clock, 0.5))
    listener.flush()
    assert recording.calls == [
        ("incr", "cbsync.duck.success", 2),
        ("timing", "cbsync.duck.latency", 250.0, 0.5),
        ("timing", "cbsync.duck.latency", 500.0, 0.5),
        ("gauge", "cbsync.duck.state", 0),
    ]


def test_registry_reports_present_and_future_breakers(server, client, listeners):
    """``registry.add_listener(StatsdListener())`` covers existing and new breakers."""
    registry = cbsync.Registry()
    before = registry.get("before")
    listener = listeners(client)
    registry.add_listener(listener)
    after = registry.get("after")
    before.call(ok)
    after.call(ok)
    listener.flush()
    names = collections.Counter(metric.name for metric in received(server, client))
    assert names == collections.Counter(
        "cbsync.{}.{}".format(breaker, metric)
        for breaker in ("before", "after")
        for metric in ("state", "success", "latency")
    )


def test_background_thread_sends_by_itself_and_is_a_daemon(server, client, listeners):
    """A daemon thread, started on the first event, sends within a flush interval."""
    listener = listeners(client, flush_interval="50ms")
    assert listener._thread is None  # nothing runs before the first event
    breaker = cbsync.CircuitBreaker("background", listeners=[listener])
    thread = listener._thread
    assert thread is not None
    assert thread.daemon
    assert thread.is_alive()
    breaker.call(ok)
    names = set()
    while "cbsync.background.success" not in names:
        # real time: recv waits (at most WAIT s) for the thread's next flush
        packet = server.recv(65536).decode("ascii")
        names.update(parse(line).name for line in packet.split("\n"))
    assert names == {
        "cbsync.background.state",
        "cbsync.background.success",
        "cbsync.background.latency",
    }
    listener.close()
    assert not thread.is_alive()


def test_a_burst_wakes_the_thread_before_the_interval(server, client, listeners):
    """A tenth of ``max_buffer`` buffered wakes the sender at once, whatever the interval."""
    listener = listeners(client, max_buffer=100)  # flush interval: an hour
    breaker = cbsync.CircuitBreaker("burst", listeners=[listener])
    for _ in range(10):
        breaker.call(ok)  # the attach gauge and 10 successes: past 10 events
    successes = 0
    while successes < 10:
        # real time: recv waits (at most WAIT s) for the woken thread to send
        packet = server.recv(65536).decode("ascii")
        for line in packet.split("\n"):
            metric = parse(line)
            if metric.name == "cbsync.burst.success":
                successes += metric.value
    assert successes == 10


def test_stuck_sender_leaves_counters_exact_and_bounds_latency_values(clock, listeners, caplog):
    """A hung sender: every call is still counted; extra latency values are dropped and logged."""
    caplog.set_level(logging.WARNING, logger="cbsync")
    stuck = StuckClient()
    listener = listeners(stuck, max_buffer=100)  # wakes the thread at 10 events
    breaker = cbsync.CircuitBreaker("full", clock=clock, listeners=[listener])
    for _ in range(10):
        breaker.call(ok)
    assert stuck.entered.wait(WAIT)  # the thread took the first events and hangs
    for _ in range(400):
        assert breaker.call(ok) == "ok"
    assert len(listener._buffer) <= 100
    dropped = listener.dropped_events
    # At most 100 events wait in the buffer and 100 latency values beside it.
    assert 400 - 200 <= dropped < 400
    assert caplog.records == []  # logged by the sender, never by a call
    stuck.release.set()
    assert listener.flush(timeout=WAIT)
    assert listener.dropped_events == dropped
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "StatsD reporting fell behind" in message
    assert "0 failure(s) and {} dropped event(s)".format(dropped) in message
    assert "0 of them pushed out of the full buffer of 100, {} of them only".format(dropped) in (
        message
    )
    successes = sum(call[2] for call in stuck.calls if call[:2] == ("incr", "cbsync.full.success"))
    assert successes == 410
    timings = [call for call in stuck.calls if call[:2] == ("timing", "cbsync.full.latency")]
    assert len(timings) == 410 - dropped


def test_full_buffer_drops_oldest_counts_and_logs(server, client, listeners, monkeypatch, caplog):
    """With no sender thread the buffer stays bounded: the oldest events go, counted and logged."""
    caplog.set_level(logging.WARNING, logger="cbsync")

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with freeze_time("2024-01-01 00:00:00") as frozen:
        listener = listeners(client, max_buffer=100)
        breaker = cbsync.CircuitBreaker("full", listeners=[listener])
        for _ in range(150):
            assert breaker.call(ok) == "ok"
        assert len(listener._buffer) == 100
        assert listener.dropped_events == 51  # the attach gauge and 50 successes
        monkeypatch.undo()
        frozen.tick(61)  # past the minute in which the thread's failure was logged
        assert listener.flush()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "can't start new thread" in str(caplog.records[0].exc_info[1])
    assert re.search(
        r"fell behind \([0-9]+ failure\(s\) and 51 dropped event\(s\) since the last message, "
        r"51 of them pushed out of the full buffer of 100, 0 of them only",
        messages[1],
    )
    metrics = received(server, client)
    assert sum(m.value for m in metrics if m.name == "cbsync.full.success") == 100
    assert len([m for m in metrics if m.name == "cbsync.full.latency"]) == 100
    # What was lost held the attach gauge: the current state is sent again.
    assert [(m.name, m.value) for m in metrics if m.type == "g"] == [("cbsync.full.state", 0)]


def test_concurrent_calls_are_all_counted(server, client, listeners):
    """Calls from several threads while the thread flushes: every one is counted once."""
    threads, calls = 4, 250
    listener = listeners(client, flush_interval="10ms")
    breaker = cbsync.CircuitBreaker("busy", listeners=[listener])
    call_from_threads(breaker, threads, calls, join_timeout=30)
    listener.flush()
    metrics = received(server, client)
    assert sum(m.value for m in metrics if m.name == "cbsync.busy.success") == threads * calls
    assert len([m for m in metrics if m.name == "cbsync.busy.latency"]) == threads * calls
    assert listener.dropped_events == 0


def test_cpu_bound_threads_lose_no_count(server, client, listeners):
    """Four threads making 200,000 pure-CPU calls: the counters received add up to every call."""
    threads, calls = 4, 50_000
    # A small buffer, so the sender (which gets the GIL only now and then) lags
    # early; few latency values, so every datagram fits in the socket's buffer.
    listener = listeners(client, max_buffer=1000, sample_rate=0.0001)
    breaker = cbsync.CircuitBreaker("cpu", listeners=[listener])
    call_from_threads(breaker, threads, calls, join_timeout=60)
    assert listener.flush(timeout=WAIT)
    metrics = received(server, client)
    assert sum(m.value for m in metrics if m.name == "cbsync.cpu.success") == threads * calls
    assert {m.name for m in metrics} <= {
        "cbsync.cpu.state",
        "cbsync.cpu.success",
        "cbsync.cpu.latency",
    }
    assert listener.dropped_events == 0


class TimedUdp(statsd.StatsClient):
    """A real UDP client whose every send lasts ``delay`` seconds on its own clock."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.now = 0.0
        self.delay = 0.0
        self.packets = 0

    def clock(self):
        """The time on this client's clock."""
        return self.now

    def _send(self, data):
        self.packets += 1
        self.now += self.delay
        super()._send(data)


@pytest.fixture
def timed(server, monkeypatch):
    """A TimedUdp client sending to ``server``, whose clock times the listener's packets."""
    udp = TimedUdp("127.0.0.1", server.getsockname()[1])
    monkeypatch.setattr(module, "_perf", udp.clock)
    yield udp
    close_udp(udp)


def call_until(breaker, done, limit=5000):
    """Make successful calls until ``done()`` (at most ``limit``); return how many."""
    for made in range(1, limit + 1):
        breaker.call(ok)
        if done():
            return made
    raise AssertionError("not done after {} calls".format(limit))


def drain(server, into):
    """Add the metrics already waiting on ``server`` to the list ``into`` (never waits)."""
    server.setblocking(False)
    try:
        while True:
            into.extend(parse(line) for line in server.recv(65536).decode("ascii").split("\n"))
    except BlockingIOError:
        return into
    finally:
        server.settimeout(WAIT)


def test_calls_send_latency_values_themselves_while_the_sender_lags(server, timed, listeners):
    """Past the high-water mark calls send the latency values over UDP, the sender the counts."""
    listener = listeners(timed, max_buffer=200)  # the high-water mark is at 100 events
    breaker = cbsync.CircuitBreaker("direct", listeners=[listener])
    by_calls = []
    with listener._send_lock:  # the sender thread cannot send anything
        for _ in range(3):
            for _ in range(500):
                breaker.call(ok)
            drain(server, by_calls)
        by_calls += received(server, timed)
    assert timed.packets > 1500 // 20  # latency lines are 33 characters, packets 512
    assert {m.name for m in by_calls} == {"cbsync.direct.latency"}
    # Still waiting: the buffer (the 100 events below the mark and a few), and what one
    # call past the mark folded and packed for the next calls to send.
    assert 1500 - len(by_calls) < 2 * 200
    assert listener.flush(timeout=WAIT)
    metrics = by_calls + received(server, timed)
    assert sum(m.value for m in metrics if m.name == "cbsync.direct.success") == 1500
    assert len([m for m in metrics if m.name == "cbsync.direct.latency"]) == 1500
    assert listener.dropped_events == 0


def test_calls_stop_sending_while_it_costs_them_the_gil(server, timed, listeners):
    """Sends that keep calls waiting for the GIL pause the calls' sending; nothing goes unseen."""
    metrics = []
    made = 0
    high = 300  # buffered events past which calls fold (and send)

    def calls_until(done):
        nonlocal made
        made += call_until(breaker, done)
        drain(server, metrics)

    def crowded_call_sends():
        """Whether a call past the high-water mark sends a packet (if not, it folds)."""
        calls_until(lambda: len(listener._buffer) >= high)
        sent = timed.packets
        calls_until(lambda: True)  # one call
        if timed.packets > sent:
            return True
        assert len(listener._buffer) < high
        return False

    with freeze_time("2024-01-01 00:00:00") as frozen:
        listener = listeners(timed, max_buffer=2 * high)
        breaker = cbsync.CircuitBreaker("gil", listeners=[listener])
        with listener._send_lock:  # the sender thread cannot send anything
            calls_until(lambda: timed.packets == 10)
            timed.delay = 0.01  # each send now keeps the call waiting 10 ms
            calls_until(lambda: timed.packets == 12)
            assert not crowded_call_sends()  # two such packets in a row: paused
            frozen.tick(0.01)  # the first pause is over
            calls_until(lambda: timed.packets == 13)  # one more such packet: paused again
            frozen.tick(0.01)
            assert not crowded_call_sends()  # for 20 ms this time
            frozen.tick(0.01)
            timed.delay = 0.0
            assert crowded_call_sends()
            calls_until(lambda: timed.packets >= 40)
        assert listener.flush(timeout=WAIT)
    metrics += received(server, timed)
    assert sum(m.value for m in metrics if m.name == "cbsync.gil.success") == made
    latencies = len([m for m in metrics if m.name == "cbsync.gil.latency"])
    # The sender never sent meanwhile: what paused calls folded past the bound was dropped.
    assert latencies == made - listener.dropped_events


def test_an_error_sending_from_a_call_is_caught_and_reported_by_the_sender(
    server, listeners, caplog
):
    """An error sending from a call neither raises nor logs there; the sender reports it once."""
    caplog.set_level(logging.WARNING, logger="cbsync")
    # The statsd client encodes every line as ASCII: this prefix makes each send raise.
    udp = TimedUdp("127.0.0.1", server.getsockname()[1], prefix="h\u00e9")
    try:
        listener = listeners(udp, max_buffer=200)  # the high-water mark is at 100 events
        breaker = cbsync.CircuitBreaker("err", listeners=[listener])
        with listener._send_lock:  # the sender thread cannot report yet
            for _ in range(400):
                assert breaker.call(ok) == "ok"
            assert udp.packets == 1  # after the error, no call tried again
            assert listener.dropped_events > 0
            assert caplog.records == []
        assert listener.flush(timeout=WAIT)
    finally:
        close_udp(udp)
    [record] = caplog.records
    assert "StatsD reporting failed" in record.getMessage()
    assert isinstance(record.exc_info[1], UnicodeEncodeError)
    assert listener.dropped_events >= 401  # sending is paused: everything was dropped


def test_tcp_client_at_closed_port_never_reaches_a_call(clock, listeners, caplog):
    """A TCP client with nobody listening: calls succeed, one log line."""
    caplog.set_level(logging.DEBUG, logger="cbsync")
    tcp = statsd.TCPStatsClient("127.0.0.1", closed_tcp_port(), timeout=1.0)
    listener = listeners(tcp)
    breaker = cbsync.CircuitBreaker("tcp", clock=clock, listeners=[listener])
    for _ in range(20):
        assert breaker.call(ok) == "ok"
    with pytest.raises(OSError, match="mine"):
        breaker.call(slow(clock, 0, OSError("mine")))
    listener.flush()
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.WARNING
    assert "StatsD reporting failed" in record.getMessage()
    assert isinstance(record.exc_info[1], ConnectionRefusedError)


def test_broken_client_never_reaches_a_call(clock, listeners, caplog):
    """A client raising on every method: calls succeed, nothing raised, one log line."""
    caplog.set_level(logging.DEBUG, logger="cbsync")
    broken = BrokenClient()
    listener = listeners(broken)
    breaker = cbsync.CircuitBreaker("broken", clock=clock, listeners=[listener])
    for _ in range(10):
        assert breaker.call(ok) == "ok"
    with pytest.raises(OSError, match="down"):
        breaker.call(_raise_oserror)
    assert broken.attempts == 0  # calls only buffer
    assert listener.flush()
    assert broken.attempts == 1
    assert len(caplog.records) == 1
    assert "StatsD reporting failed" in caplog.records[0].getMessage()
    assert isinstance(caplog.records[0].exc_info[1], RuntimeError)


def test_every_event_survives_a_broken_client(clock, listeners):
    """Each listener method, given a broken client, returns without touching it; the flush
    that follows raises nothing."""
    breaker = cbsync.CircuitBreaker("each", clock=clock, slow_call_duration=0.1)
    error = cbsync.CircuitOpenError("each", cbsync.State.OPEN, cbsync.OpenReason("manual"), None)
    events = [
        ("on_attach", (breaker,)),
        ("on_success", (breaker, 1.0)),
        ("on_failure", (breaker, 1.0, OSError("down"))),
        ("on_failure", (breaker, 1.0, None)),
        ("on_ignored", (breaker, 1.0, KeyError("k"))),
        ("on_rejected", (breaker, error)),
        ("on_state_change", (breaker, cbsync.State.CLOSED, cbsync.State.OPEN, error.reason)),
    ]
    for method, args in events:
        broken = BrokenClient()
        listener = listeners(broken)
        assert getattr(listener, method)(*args) is None
        assert broken.attempts == 0
        assert listener.flush()
        assert broken.attempts == 1


def test_failures_pause_sending_and_log_once_a_minute(listeners, caplog):
    """After a failure sending pauses (1 s, doubling); the log repeats after a minute."""
    caplog.set_level(logging.WARNING, logger="cbsync")
    broken = BrokenClient()
    with freeze_time("2024-01-01 00:00:00") as frozen:
        listener = listeners(broken)
        breaker = cbsync.CircuitBreaker("paused", listeners=[listener])

        def call_and_flush():
            breaker.call(ok)
            listener.flush()

        listener.flush()
        assert broken.attempts == 1  # the gauge on attach; paused 1 s
        call_and_flush()
        assert broken.attempts == 1  # paused: dropped, client untouched
        frozen.tick(1.0)
        call_and_flush()
        assert broken.attempts == 2  # retried, failed again: paused 2 s
        frozen.tick(1.5)
        call_and_flush()
        assert broken.attempts == 2
        frozen.tick(0.5)
        call_and_flush()
        assert broken.attempts == 3
        assert len(caplog.records) == 1
        frozen.tick(61)
        call_and_flush()
        assert broken.attempts == 4
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "1 failure(s) and 1 dropped event(s)" in messages[0]
    assert "sending paused 1s" in messages[0]
    # Since then: 3 failed flushes (one event each) and 2 events dropped while paused.
    assert "3 failure(s) and 5 dropped event(s)" in messages[1]
    assert "sending paused 8s" in messages[1]
    assert listener.dropped_events == 6


def test_state_is_sent_again_after_a_loss(clock, listeners, caplog):
    """After sending failed, the next flush that gets through sends every breaker's state."""
    caplog.set_level(logging.WARNING, logger="cbsync")
    recording = RecordingClient()
    with freeze_time("2024-01-01 00:00:00") as frozen:
        listener = listeners(recording)
        quiet = cbsync.CircuitBreaker("quiet", clock=clock, listeners=[listener])
        busy = cbsync.CircuitBreaker(
            "busy", clock=clock, listeners=[listener], failure_threshold=1
        )
        listener.flush()
        recording.calls.clear()
        recording.broken = True
        with pytest.raises(OSError):
            busy.call(_raise_oserror)  # opens; that news is lost
        listener.flush()
        recording.broken = False
        frozen.tick(1.0)
        with pytest.raises(cbsync.CircuitOpenError):
            busy.call(ok)
        listener.flush()
    assert quiet.state is cbsync.State.CLOSED
    assert recording.calls[0] == ("incr", "cbsync.busy.rejected", 1)
    assert sorted(recording.calls[1:]) == [
        ("gauge", "cbsync.busy.state", 2),
        ("gauge", "cbsync.quiet.state", 0),
    ]
    assert ["StatsD" in record.getMessage() for record in caplog.records] == [False, True]


def test_tcp_client_reconnects_once_the_server_is_back(listeners, caplog):
    """After a refused connection the TCP client reconnects when StatsD is back."""
    caplog.set_level(logging.WARNING, logger="cbsync")
    port = closed_tcp_port()
    tcp = statsd.TCPStatsClient("127.0.0.1", port, timeout=WAIT)
    with freeze_time("2024-01-01 00:00:00") as frozen:
        listener = listeners(tcp)
        breaker = cbsync.CircuitBreaker("back", listeners=[listener])
        listener.flush()
        assert len(caplog.records) == 1
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("127.0.0.1", port))
        listening.listen(1)
        listening.settimeout(WAIT)
        frozen.tick(1.0)
        breaker.call(ok)
        listener.flush()
    connection, _ = listening.accept()
    connection.settimeout(WAIT)
    tcp.close()  # ends the stream, so everything sent can be read to EOF
    data = read_to_eof(connection)
    connection.close()
    listening.close()
    names = [parse(line).name for line in data.decode("ascii").splitlines()]
    # The lost attach gauge is sent again with the first flush that gets through.
    assert names == ["cbsync.back.success", "cbsync.back.latency", "cbsync.back.state"]


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


def read_to_eof(connection):
    """Everything a stream connection delivers until the peer closes it."""
    chunks = []
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_stream_clients_get_intact_lines_and_one_reconnection(kind, tmp_path, listeners, caplog):
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
    listener = listeners(client)
    breaker = cbsync.CircuitBreaker("shared", listeners=[listener])
    listener.flush()
    # Drop the connection made for the attach gauge: the next flush makes one more.
    client.close()
    call_from_threads(breaker, threads, calls, join_timeout=30)
    listener.flush()
    client.close()  # the reader sees EOF
    reader.join(timeout=30)
    assert not reader.is_alive()
    listening.settimeout(0)
    with pytest.raises(BlockingIOError):
        listening.accept()  # one connection per flush, not one per call or thread
    listening.close()
    assert caplog.records == []
    data = b"".join(received_data)
    metrics = [parse(line) for line in data.decode("ascii").splitlines()]
    assert [m for m in metrics if m.type == "g"] == [Metric("cbsync.shared.state", 0, "g", None)]
    assert sum(m.value for m in metrics if m.name == "cbsync.shared.success") == threads * calls
    assert len([m for m in metrics if m.name == "cbsync.shared.latency"]) == threads * calls


def test_name_cache_is_bounded(client, listeners):
    """The cache of sanitised names never grows past its bound."""
    listener = listeners(client)
    for index in range(module._NAMES_KEPT + 10):
        listener.on_attach(cbsync.CircuitBreaker("svc-{}".format(index)))
    listener.flush()
    assert 0 < len(listener._names) <= module._NAMES_KEPT
    assert 0 < len(listener._attached) <= module._NAMES_KEPT  # those breakers are gone


def test_a_thread_that_cannot_start_is_logged_and_calls_go_on(
    server, client, listeners, monkeypatch, caplog
):
    """If the sender thread cannot start, calls still succeed; flush() still sends."""
    caplog.set_level(logging.WARNING, logger="cbsync")

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    listener = listeners(client)
    breaker = cbsync.CircuitBreaker("threadless", listeners=[listener])
    assert breaker.call(ok) == "ok"
    assert listener._thread is None
    monkeypatch.undo()
    [record] = caplog.records
    assert "can't start new thread" in str(record.exc_info[1])
    listener.flush()
    names = sorted(metric.name for metric in received(server, client))
    assert names == [
        "cbsync.threadless.latency",
        "cbsync.threadless.state",
        "cbsync.threadless.success",
    ]


def test_thread_ends_when_the_listener_is_dropped(client):
    """A listener dropped without close() is collected, and its thread ends."""
    listener = StatsdListener(client, flush_interval=NEVER)
    breaker = cbsync.CircuitBreaker("dropped", listeners=[listener])
    thread = listener._thread
    assert thread.is_alive()
    ref = weakref.ref(listener)
    del listener, breaker
    gc.collect()
    assert ref() is None
    thread.join(WAIT)  # the collected listener's finalizer woke the thread
    assert not thread.is_alive()


def test_fork_without_hooks_is_noticed_and_the_thread_restarted(server, client, listeners):
    """A child forked from C (no fork hooks) restarts the sender when its buffer fills up."""
    listener = listeners(client, max_buffer=100)  # wakes at 10 events
    breaker = cbsync.CircuitBreaker("cfork", listeners=[listener])
    parent_thread, parent_wakeup = listener._thread, listener._wakeup
    # As the child of a fork that ran no Python hook would see it: another pid
    # than the one the listener's resources were made in.
    listener._fork.pid = -1
    for _ in range(10):
        breaker.call(ok)
    thread = listener._thread
    assert thread is not parent_thread
    assert thread.daemon
    assert thread.is_alive()
    assert listener._wakeup is not parent_wakeup
    parent_wakeup.set()  # here the "parent's" thread exists: it sees it is replaced and ends
    parent_thread.join(WAIT)
    assert not parent_thread.is_alive()
    listener.flush()
    metrics = received(server, client)
    assert sum(m.value for m in metrics if m.name == "cbsync.cfork.success") == 10


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns when a process with threads forks: this test does so on
# purpose (the listener's thread runs in the parent) to check the child.
@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks"
    ":DeprecationWarning"
)
def test_forked_child_restarts_the_thread_and_forgets_the_parents_events(server, client):
    """After os.fork() the child sends through its own new thread, never the parent's events."""
    listener = StatsdListener(client, flush_interval="10ms")
    parent = cbsync.CircuitBreaker("parent", listeners=[listener])
    listener.flush()
    parent_thread = listener._thread
    report_r, report_w = os.pipe()
    done_r, done_w = os.pipe()
    # Hold the send lock so that the parent's call is still buffered at the fork.
    with listener._send_lock:
        parent.call(ok)
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return to pytest
            status = 1
            try:
                os.close(report_r)
                os.close(done_w)
                buffered = len(listener._buffer)
                child = cbsync.CircuitBreaker("child", listeners=[listener])
                child.call(ok)
                thread = listener._thread
                report = {
                    "buffered_at_fork": buffered,
                    "new_thread": thread is not None and thread is not parent_thread,
                    "daemon": thread is not None and thread.daemon,
                    "alive": thread is not None and thread.is_alive(),
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
        assert report == {"buffered_at_fork": 0, "new_thread": True, "daemon": True, "alive": True}
        names = collections.Counter()
        while names["cbsync.child.success"] == 0:
            # real time: recv waits (at most WAIT s) for the child's thread to send
            packet = server.recv(65536).decode("ascii")
            names.update(parse(line).name for line in packet.split("\n"))
    finally:
        os.close(done_w)
        _, status = os.waitpid(pid, 0)
    assert status == 0
    listener.close()
    names.update(metric.name for metric in received(server, client))
    assert names["cbsync.child.state"] == 1
    assert names["cbsync.child.latency"] == 1
    assert names["cbsync.parent.success"] == 1  # sent by the parent only


def test_buffered_events_are_sent_at_exit(server):
    """A process that ends normally flushes its listeners first (its thread never waits)."""
    code = (
        "import sys, cbsync\n"
        "from cbsync.integrations.statsd import StatsdListener\n"
        "listener = StatsdListener(host='127.0.0.1', port=int(sys.argv[1]), flush_interval='1h')\n"
        "cbsync.CircuitBreaker('exiting', listeners=[listener]).call(int)\n"
    )
    port = str(server.getsockname()[1])
    subprocess.run([sys.executable, "-c", code, port], check=True, timeout=60)
    packet = server.recv(65536).decode("ascii")
    names = sorted(parse(line).name for line in packet.split("\n"))
    assert names == ["cbsync.exiting.latency", "cbsync.exiting.state", "cbsync.exiting.success"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0}, "sample_rate=0"),
        ({"sample_rate": 1.5}, "sample_rate=1.5"),
        ({"sample_rate": float("nan")}, "sample_rate=nan"),
        ({"sample_rate": True}, "sample_rate=True"),
        ({"sample_rate": "0.5"}, "sample_rate='0.5'"),
        ({"prefix": None}, "prefix=None"),
        ({"host": ""}, "host=''"),
        ({"port": 0}, "port=0"),
        ({"port": 65536}, "port=65536"),
        ({"port": "8125"}, "port='8125'"),
        ({"host": "no-such-host.invalid"}, "host='no-such-host.invalid'"),
        ({"client": object()}, "no incr() method"),
        ({"client": "udp", "port": 9125}, "not both"),
        ({"flush_interval": 0}, "flush_interval=0"),
        ({"flush_interval": "soon"}, "flush_interval='soon'"),
        ({"max_buffer": 0}, "max_buffer=0"),
        ({"max_buffer": 1.5}, "max_buffer=1.5"),
        ({"max_buffer": True}, "max_buffer=True"),
    ],
)
def test_bad_arguments_raise_config_error(client, kwargs, message):
    """Bad arguments raise ConfigError naming the argument and its value."""
    if kwargs.get("client") == "udp":
        kwargs = dict(kwargs, client=client)
    with pytest.raises(cbsync.ConfigError, match=re.escape(message)):
        StatsdListener(**kwargs)


def test_import_cbsync_does_not_import_statsd():
    """``import cbsync`` leaves the statsd package unimported."""
    code = "import sys, cbsync; sys.exit('statsd' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
