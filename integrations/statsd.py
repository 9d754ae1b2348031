"""StatsD reporting: what every breaker did, read from it every interval.

:class:`StatsdReporter` reads the breakers of a registry (present and future)
or the breakers it is given every ``interval`` (10 s) on a background thread
and sends, through a `statsd <https://statsd.readthedocs.io/>`_ client's
pipeline (which packs lines into few packets), per breaker: counters
``<prefix>.<breaker>.success|failure|ignored|rejected|slow`` and
``.transition.<old>.<new>``, a timer ``.latency`` (ms) and a gauge ``.state``
(closed 0, half_open 1, open 2, forced_open 3, disabled 4).  Calls are never
touched: the reporter reads the totals and latency histogram each breaker
keeps anyway (:mod:`cbsync.reporting`).  Counters are exact -- each is the
difference of two of the breaker's totals, so nothing between two reads is
missed -- and sent only when they moved.  The gauge is sent every interval
and, with a UDP client, also the moment the state changes (one datagram from
the thread that changed it; a stream send could block that call).

Latency lines.  The N successes and failures an interval added to a
breaker's histogram (buckets 5 % apart from 10 µs to about 18 minutes,
:data:`cbsync.reporting.LATENCY_BOUNDS`) become
``L = min(timer_lines, ceil(N * sample_rate))`` lines.  The calls, sorted
by latency, are cut into L slices of N / L calls, and line j carries the
latency at the top of slice j (the call at rank ``ceil(j * N / L)``), so the
last line is the slowest call.  When L < N every line carries the rate
``|@<L/N>``, and the server counts L x N / L = N calls.  A value is the upper
bound of its bucket; then all of a breaker's values are scaled by one factor
between 1/1.05 and 1 (each stays in its bucket) that brings their mean as
close as it can to the interval's exact mean -- onto it when L = N.  So each
value is within 5 % of the latency it stands for, and the percentiles a
server computes over the lines are right to 5 % in value and to 1/L of the
calls in rank (with 100 lines, ``upper_99`` is the call at rank 99 %).

Names: the breaker name is one segment (every character outside
``[A-Za-z0-9_-]`` becomes ``_``, an empty name ``_``); the prefix is cleaned
the same way but keeps its dots.  No name can break the line protocol.

Nothing here raises into a call.  A failed send is logged on logger
``cbsync`` at most once a minute and tried again the next interval; a TCP or
Unix-socket client is closed after a failure, so that it reconnects.  After
``os.fork()`` the child's thread starts again and reports the child's calls.
The full guide: docs/metrics.md, section StatsD.
"""

import atexit
import math
import re
from typing import Any, List, Optional, Sequence, Tuple, Union

import statsd
from statsd.client.base import StatsClientBase
from statsd.client.stream import StreamClientBase

import cbsync
from cbsync import CircuitBreaker, ConfigError, Listener, Registry, State, TransitionReason
from cbsync.reporting import LATENCY_BOUNDS, STATE_CODES, Delta, Reader, Reporter, Source
from cbsync.toolkit import ForkGuard, parse_duration

__all__ = ["StatsdReporter", "sanitize_prefix", "sanitize_segment", "timer_values"]

#: Default seconds between two reads.
DEFAULT_INTERVAL = 10.0
#: Default most timer lines per breaker per interval.
DEFAULT_TIMER_LINES = 100

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: Ratio between neighbouring bucket bounds.
_GROWTH = LATENCY_BOUNDS[1] / LATENCY_BOUNDS[0]
#: What a latency in the last, unbounded bucket is reported as.
_TOP = LATENCY_BOUNDS[-2] * _GROWTH


def sanitize_segment(text: str) -> str:
    """One metric-name segment: characters outside ``[A-Za-z0-9_-]`` become
    ``_``; an empty result becomes ``_``.

    >>> sanitize_segment("api.example.com:443")
    'api_example_com_443'
    >>> sanitize_segment("")
    '_'
    """
    return _UNSAFE.sub("_", text) or "_"


def sanitize_prefix(prefix: str) -> str:
    """A prefix: each dot-separated segment sanitised, empty segments dropped.

    >>> sanitize_prefix(".my app..cb.")
    'my_app.cb'
    >>> sanitize_prefix("")
    ''
    """
    return ".".join(_UNSAFE.sub("_", part) for part in prefix.split(".") if part)


def timer_values(
    buckets: Sequence[Tuple[float, int]], latency_sum: float, lines: int
) -> List[float]:
    """``lines`` latencies, in seconds, standing for the calls in ``buckets``.

    ``buckets`` are ``(upper bound, calls)`` in increasing order (a
    :class:`~cbsync.reporting.Delta`'s ``latency``), ``latency_sum`` their
    total seconds, ``1 <= lines <=`` their calls.  See "Latency lines" in the
    module documentation.

    >>> timer_values([(0.1, 3), (1.0, 1)], latency_sum=2.2, lines=2)
    [0.1, 1.0]
    >>> [round(value, 3) for value in timer_values([(0.1, 1)], latency_sum=0.098, lines=1)]
    [0.098]
    """
    calls = sum(count for _, count in buckets)
    values = []
    index = -1
    covered = 0  # calls in buckets[: index + 1]
    for line in range(1, lines + 1):
        rank = -(-line * calls // lines)  # ceil(line * calls / lines), exact
        while covered < rank:
            index += 1
            covered += buckets[index][1]
        values.append(min(buckets[index][0], _TOP))
    mean = math.fsum(values) / lines
    if mean > 0:
        # Bucket i holds (bound / 1.05, bound]; the first one [0, 10 µs].
        low = 0.0 if values[-1] <= LATENCY_BOUNDS[0] else 1 / _GROWTH
        scale = min(1.0, max(low, latency_sum / calls / mean))
        values = [value * scale for value in values]
    return values


def _rate_text(rate: float) -> str:
    # StatsD servers read the rate as plain digits: never "1e-05".
    text = repr(rate)
    return text if "e" not in text else "{:.20f}".format(rate).rstrip("0")


def _udp_client(host: str, port: int) -> Any:
    if not isinstance(host, str) or not host:
        raise ConfigError("host={!r} must be a non-empty string".format(host))
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("port={!r} must be an integer from 1 to 65535".format(port))
    try:
        return statsd.StatsClient(host, port)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            "cannot use StatsD at host={!r} port={!r}: {}".format(host, port, exc)
        ) from exc


class _StateGauge(Listener):
    """Sends a breaker's state gauge as soon as the state changes.

    Overrides only ``on_state_change``, so calls that change nothing cost
    nothing more.  It sends the state the breaker is in now: two threads'
    changes may reach listeners out of order.
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def on_state_change(
        self, breaker: CircuitBreaker, old: State, new: State, reason: TransitionReason
    ) -> None:
        try:
            name = self._prefix + sanitize_segment(breaker.name) + ".state"
            self._client.gauge(name, STATE_CODES[breaker.state])
        except Exception:
            pass  # the next interval sends the gauge again, and logs a failure


class StatsdReporter:
    """Sends every breaker's counters, latency timer and state gauge to StatsD
    every ``interval``, from a background thread.

    ``source`` is a :class:`~cbsync.Registry` (its breakers, present and
    future; default ``cbsync.registry``, which follows the current default
    registry), a breaker, or a list of breakers.  ``client`` is a
    ``statsd.StatsClient`` (UDP), ``TCPStatsClient`` or
    ``UnixSocketStatsClient``; without one, a ``StatsClient(host, port)`` is
    made (the host name is resolved once, here) and closed by :meth:`close`.
    ``prefix`` starts every name; ``interval`` is seconds, a ``timedelta`` or
    a string such as ``"30s"``; ``timer_lines`` bounds the latency lines per
    breaker per interval and ``sample_rate`` (0 < rate <= 1) is the fraction
    of calls that get one (see the module documentation).

    >>> import cbsync
    >>> from cbsync.integrations.statsd import StatsdReporter
    >>> registry = cbsync.Registry()
    >>> reporter = StatsdReporter(registry, host="127.0.0.1", port=8125)
    >>> registry.get("payments").call(lambda: "paid")
    'paid'
    >>> reporter.close()  # sends a last time, stops the thread, closes the socket
    """

    def __init__(
        self,
        source: Optional[Source] = None,
        *,
        client: Any = None,
        host: str = "localhost",
        port: int = 8125,
        prefix: str = "cbsync",
        sample_rate: float = 1.0,
        interval: Any = DEFAULT_INTERVAL,
        timer_lines: int = DEFAULT_TIMER_LINES,
    ) -> None:
        if source is None:
            source = cbsync.registry
        reader = Reader(source)
        seconds = parse_duration("interval", interval)
        if not isinstance(prefix, str):
            raise ConfigError("prefix={!r} must be a string".format(prefix))
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, (int, float))
            or not 0 < sample_rate <= 1
        ):
            raise ConfigError(
                "sample_rate={!r} must be a number greater than 0 and at most 1".format(
                    sample_rate
                )
            )
        if isinstance(timer_lines, bool) or not isinstance(timer_lines, int) or timer_lines < 1:
            raise ConfigError(
                "timer_lines={!r} must be a whole number of at least 1".format(timer_lines)
            )
        self._owned: Any = None
        if client is None:
            client = self._owned = _udp_client(host, port)
        elif host != "localhost" or port != 8125:
            raise ConfigError(
                "give either client= or host=/port=, not both "
                "(client={!r}, host={!r}, port={!r})".format(client, host, port)
            )
        elif not isinstance(client, StatsClientBase):
            raise ConfigError(
                "client={!r} must be a statsd.StatsClient, TCPStatsClient or "
                "UnixSocketStatsClient".format(client)
            )
        self._client = client
        self._rate = float(sample_rate)
        self._timer_lines = timer_lines
        clean = sanitize_prefix(prefix)
        self._prefix = clean + "." if clean else ""
        self._stream = isinstance(client, StreamClientBase)
        self._closed = False
        self._fork = ForkGuard(self._after_fork)
        # Where the immediate state gauge listens (a UDP send never waits).
        self._gauge = _StateGauge(client, self._prefix)
        self._listened: List[Union[Registry, CircuitBreaker]] = []
        if isinstance(client, statsd.StatsClient):
            if source is cbsync.registry:  # it stands for the default registry of now
                self._listened = [cbsync.default_registry()]
            elif isinstance(source, Registry):
                self._listened = [source]
            else:
                self._listened = list(reader.breakers())
            for target in self._listened:
                target.add_listener(self._gauge)
        # (A forked child's reader starts at the fork: it reports the child's calls.)
        self._reporter = Reporter(reader, self._send, interval=seconds)
        atexit.register(self.close)

    @property
    def prefix(self) -> str:
        """The sanitised prefix, without its trailing dot ('' for none)."""
        return self._prefix[:-1]

    @property
    def interval(self) -> float:
        """Seconds between two reads."""
        return self._reporter.interval

    def metric_base(self, name: str) -> str:
        """``<prefix>.<breaker>`` for a breaker called ``name``.

        >>> reporter = StatsdReporter([], host="127.0.0.1", prefix="app.cb")
        >>> reporter.metric_base("api.example.com:443")
        'app.cb.api_example_com_443'
        >>> reporter.close()
        """
        return self._prefix + sanitize_segment(name)

    def flush(self) -> None:
        """Read every breaker and send what it did since the last read, now,
        in the calling thread (never raises; a failure is logged).  After
        :meth:`close` it does nothing."""
        if self._closed:
            return
        self._fork.check()
        self._reporter.flush()

    def close(self, flush: bool = True) -> None:
        """Stop the thread after a last :meth:`flush` (unless ``flush=False``),
        and close the client made from ``host`` and ``port``.

        A client passed as ``client=`` belongs to the caller and stays open.
        Closing twice does nothing.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for target in self._listened:
            try:
                target.remove_listener(self._gauge)
            except ValueError:
                pass  # removed by hand already
        self._reporter.close(flush)
        owned, self._owned = self._owned, None
        if owned is not None:
            close = getattr(owned, "close", None)
            if close is not None:
                close()
            else:  # statsd < 4.0: StatsClient has no close()
                owned._sock.close()

    def _after_fork(self) -> None:
        if self._stream:
            # A connection shared with the parent would mix both streams.
            self._disconnect()

    def _disconnect(self) -> None:
        try:
            self._client.close()  # the next send connects again
        except Exception:
            pass  # the next send reports what is wrong

    def _send(self, deltas: List[Delta]) -> None:
        self._fork.check()
        pipe = self._client.pipeline()
        for delta in deltas:
            self._add(pipe, delta)
        try:
            pipe.send()
        except Exception:
            if self._stream:
                self._disconnect()
            raise  # logged by the Reporter, at most once a minute

    def _add(self, pipe: Any, delta: Delta) -> None:
        """Add one breaker's lines to ``pipe``."""
        base = self._prefix + sanitize_segment(delta.name) + "."
        counters = (
            ("success", delta.successes),
            ("failure", delta.failures),
            ("ignored", delta.ignored),
            ("rejected", delta.rejected),
            ("slow", delta.slow_calls),
        )
        for name, count in counters:
            if count > 0:
                pipe.incr(base + name, count)
        for (old, new), count in delta.transitions.items():
            if count > 0:
                pipe.incr("{}transition.{}.{}".format(base, old.value, new.value), count)
        calls = sum(count for _, count in delta.latency)
        if calls > 0:
            # (Less a hair: 100 * 0.07 is 7.000000000000001, which is 7 lines.)
            lines = max(1, min(self._timer_lines, math.ceil(calls * self._rate - 1e-9)))
            suffix = "|ms" if lines == calls else "|ms|@" + _rate_text(lines / calls)
            for seconds in timer_values(delta.latency, delta.latency_sum, lines):
                # The client's timing() would drop a line with a rate below 1
                # at random; these are chosen already.  _send_stat (statsd 3.3
                # to 4.0) adds the client's prefix and queues in the pipeline.
                pipe._send_stat(base + "latency", "{:0.6f}{}".format(seconds * 1000.0, suffix), 1)
        pipe.gauge(base + "state", STATE_CODES[delta.state])

    def __repr__(self) -> str:
        return "<StatsdReporter prefix={!r} every {:g}s to {!r}>".format(
            self.prefix, self.interval, self._client
        )
