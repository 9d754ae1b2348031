"""StatsD reporting: every breaker's calls, latencies and states as StatsD metrics.

``StatsdListener`` is a :class:`cbsync.Listener` that sends, through the
`statsd <https://statsd.readthedocs.io/>`_ package, these metrics for each
breaker it is attached to (``<prefix>`` defaults to ``cbsync``):

=============================================  =====  ==================================
name                                           type   sent
=============================================  =====  ==================================
``<prefix>.<breaker>.success``                 c      a call succeeded
``<prefix>.<breaker>.failure``                 c      a call failed
``<prefix>.<breaker>.ignored``                 c      a call raised an ignored exception
``<prefix>.<breaker>.rejected``                c      a call was rejected
``<prefix>.<breaker>.slow``                    c      a call (success or failure) lasted
                                                      at least ``slow_call_duration``
``<prefix>.<breaker>.latency``                 ms     every success and failure
``<prefix>.<breaker>.state``                   g      on attach and on every state change:
                                                      closed 0, half_open 1, open 2,
                                                      forced_open 3, disabled 4
``<prefix>.<breaker>.transition.<old>.<new>``  c      a state change, e.g.
                                                      ``transition.closed.open``
=============================================  =====  ==================================

How metrics are sent
--------------------
A call never waits for StatsD.  The listener's event methods append a small
tuple to an in-memory buffer (no lock, no formatting, no system call), and
that is all unless the sender falls behind (see below); one background
daemon thread per listener, started on the first event, sends the buffer
every ``flush_interval`` (0.1 s by default), or sooner when a burst fills a
tenth of it.  Each flush:

* sums each counter: one line per counter and breaker, e.g.
  ``cbsync.payments.success:250|c`` for 250 successes;
* sends one ``latency`` value per success and failure (StatsD computes the
  percentiles from the individual values);
* sends the last value of each ``state`` gauge (StatsD keeps only the last
  value of a gauge anyway); every transition still counts in its
  ``transition.<old>.<new>`` counter;
* packs the lines into as few packets as the client allows (the UDP client's
  ``maxudpsize``, 512 bytes unless configured; TCP and Unix-socket clients
  get one write per flush).

``sample_rate`` (0 < rate <= 1) samples the latency values: each is kept
with that probability and sent with ``|@<rate>``, so StatsD scales the
timer's count back up.  Counters are summed in the process and are always
sent exactly, without ``|@``: sampling a single summed line would save
nothing and only add noise.  The state gauge and the transition counters are
never sampled either, so a dashboard never misses a state change.

When the sender falls behind
----------------------------
The thread keeps up easily when calls do I/O, as the calls a breaker
protects do: each one releases the GIL and lets the thread send.  Calls that
never release the GIL (a loop of pure-Python calls) let it have the GIL back
only every ``sys.getswitchinterval()`` (5 ms) after each packet it sends.
So once the buffer passes half of ``max_buffer`` events (50,000 by default,
a few megabytes), calls do the sender's work themselves, a little at a time
and without waiting for a lock or for each other:

* a call folds the events past that mark, and 1,024 more, into running sums
  by breaker (which the thread sends), so that counters never run out of
  room, however far behind sending is;
* over UDP (``statsd.StatsClient``: a datagram goes out at once, whatever the
  server does) each such call also sends one packet of latency values,
  formatting the next 2,048 values into packets when none is ready (a few
  tenths of a millisecond).  Threads making such calls hand each other the
  GIL as they send, so loops of pure-Python calls, in one thread or in
  several, lose nothing.  A send keeps its call waiting when another thread
  then holds the GIL for a whole switch interval (a thread computing in pure
  Python); when that happens more than once per 32 packets, calls stop
  sending for a pause (10 ms, doubling while it goes on, up to 1 s) and only
  fold;
* a TCP or Unix-socket client (a send can block until its timeout) or a
  client that is not a statsd one is only ever used by the thread.

At most ``max_buffer`` latency values wait for the thread beside the buffer;
past that the newest are dropped, counted and logged, and their calls are
still counted.  The buffer itself holds at most ``max_buffer`` events; if it
fills all the same (no sender thread can start, or the calls folding lost
the GIL for long), the oldest events are dropped, counted and logged.
Nothing is lost silently (see Failures).  A ``sample_rate`` below 1 (values
are sampled as they are folded) or a larger packet size (``StatsClient(host,
port, maxudpsize=1432)`` on a LAN, more towards a local agent) makes fewer
packets to send.

:meth:`StatsdListener.flush` sends what is buffered now, in the calling
thread; :meth:`StatsdListener.close` flushes, stops the thread and closes the
socket the listener made.  At interpreter exit every live listener is
flushed (best effort: each waits at most 1 s for a send in progress).  A
process that ends with ``os._exit()`` (``multiprocessing`` workers do) skips
that: call ``flush()`` or ``close()`` at the end of such a worker.

Fork: a forked child (gunicorn ``preload_app``, Celery prefork,
``multiprocessing``) starts its own sender thread on its first event, and
drops the events that were still buffered for the parent at the fork (the
parent sends those).  A stream client is reconnected in the child so that
parent and child never write to the same connection.  Code that forks from C
without running Python's fork hooks (uWSGI without ``py-call-osafterfork``)
is noticed when the child's buffer reaches the wake-up size or on
``flush()``; run uWSGI with ``enable-threads`` and ``py-call-osafterfork``
or ``lazy-apps``.

How names are mapped
--------------------
The breaker name becomes exactly one segment: every character outside
``[A-Za-z0-9_-]`` (dots, ``:``, ``|``, ``@``, ``#``, spaces, newlines,
non-ASCII letters...) becomes ``_``, one ``_`` per character, and an empty name
becomes ``_``.  So ``api.example.com:443`` is reported as
``api_example_com_443`` and ``https://api.example.com:443`` as
``https___api_example_com_443``: a host name does not create Graphite levels,
and no name can break the line protocol or make the client raise.  The prefix
is cleaned the same way, except that its dots are kept as separators; empty
segments are dropped, so ``".my app..cb."`` becomes ``my_app.cb`` and an empty
prefix means no prefix.  Distinct names may map to the same metric (``a.b`` and
``a:b`` both give ``a_b``); give breakers names that differ in letters, digits,
``_`` or ``-`` when that matters.  Breakers with the same name (in different
registries) attached to one listener report as one; its ``slow`` counter uses
the ``slow_call_duration`` of the one attached last.  A prefix configured on
the statsd client itself is put in front of all of this, unchanged.

Failures
--------
Nothing here ever raises into a call: sending happens in the background
thread, in ``flush()`` or (over UDP, while the thread lags) in a call, and
every error there is caught; a call never logs, the thread reports for it.
After an error in a call, calls leave all sending to the thread.  The statsd
client raises ``UnicodeEncodeError`` on a non-ASCII client prefix, and
``TCPStatsClient`` raises socket errors.  After a failure the listener stops
sending for a moment (1 s, doubling at each consecutive failure up to 60 s;
the events of that moment are dropped, and the next flush that gets through
sends the current state gauge of every breaker again), and it logs one
WARNING on logger ``cbsync`` at most once a minute, counting the failures and
the dropped events since the previous message; events pushed out of a full
buffer, and latency values dropped past ``max_buffer``, are logged the same
way.  ``StatsdListener.dropped_events`` counts every dropped event (or
latency value) since the listener was made.  UDP (the default) never waits
for the server: an unreachable StatsD costs what a reachable one does.

``TCPStatsClient`` and ``UnixSocketStatsClient`` never reconnect by
themselves after a socket error; the listener closes them after an error so
that the next attempt reconnects.  Give them a ``timeout``
(``TCPStatsClient(host, port, timeout=1.0)``), or a dead server may hold the
sender thread (never a call) for the operating system's connect timeout.
"""

import atexit
import collections
import logging
import math
import os
import random
import re
import sys
import threading
import time
import weakref
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import statsd

import cbsync
from cbsync import CircuitBreaker, CircuitOpenError, ConfigError, OpenReason, State
from cbsync.toolkit import ForkGuard, parse_duration

__all__ = ["StatsdListener"]

logger = logging.getLogger("cbsync")

#: Value of the ``state`` gauge for each state.
STATE_VALUES: Dict[State, int] = {
    State.CLOSED: 0,
    State.HALF_OPEN: 1,
    State.OPEN: 2,
    State.FORCED_OPEN: 3,
    State.DISABLED: 4,
}

#: Seconds between two flushes of the buffer by the background thread.
FLUSH_INTERVAL = 0.1
#: Events the buffer holds at most; past this the oldest are dropped.
MAX_BUFFER = 50_000
#: Sanitised names kept per listener; past this the cache starts afresh.
_NAMES_KEPT = 1024
#: Seconds between two log messages about failed or dropped reporting.
_LOG_INTERVAL = 60.0
#: Seconds without sending after a first failure; doubles at each further one.
_PAUSE_FIRST = 1.0
#: Longest pause, in seconds.
_PAUSE_MAX = 60.0
#: Characters per write to a TCP or Unix-socket client.
_STREAM_CHUNK = 65536
#: Seconds ``close()`` and the exit hook wait for a send in progress.
_STOP_WAIT = 1.0
#: Past the buffer's high-water mark a call folds the events above it and
#: this many more into the running sums (about 0.1 ms of work).
_FOLD_CHUNK = 1024
#: Latency values a call formats at a time into packets for the calls to send,
#: one packet per call, over UDP (about 140 packets of 512 bytes, 0.4 ms).
_DIRECT_CHUNK = 2048
#: A packet sent from a call that took this long (or 80 % of the interpreter's
#: switch interval, if longer) cost the call the GIL: another thread kept it.
_SLOW_SEND = 0.001
#: Such packets tolerated per packet sent without waiting, and how many in a
#: row at most: past that, calls stop sending for a pause.
_SLOW_SHARE = 1.0 / 32
_SLOW_DEBT = 2.0
#: Seconds of the first such pause; it doubles at each further one (up to the
#: longest) and halves after a run of packets sent without waiting.
_DIRECT_PAUSE_FIRST = 0.01
_DIRECT_PAUSE_MAX = 1.0

# Event kinds: the first item of each buffered tuple.  The call counters come
# first so that a tally indexes its counts by kind.
_SUCCESS, _FAILURE, _IGNORED, _REJECTED, _STATE, _TRANSITION = range(6)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# statsd >= 3.0 drives every client through these: prepared lines go to
# ``_send`` (with the client's ``_prefix`` applied by the caller), which is
# what the client's own pipeline does.
_StatsClientBase: Any = statsd.client.base.StatsClientBase
_StreamClientBase: Any = statsd.client.stream.StreamClientBase

#: A buffered event: (kind, breaker name, value).  Only atomic values, so
#: that the garbage collector stops tracking it at once (a tuple holding the
#: breaker would be traversed by every collection while it is buffered).
_Event = Tuple[int, str, Any]


def _monotonic() -> float:
    # Looked up at each call so that freezegun drives the listener's clock.
    return time.monotonic()


def _perf() -> float:
    # Times a packet sent from a call.  A function of its own, so that a test
    # can replace it (and freezegun leaves it alone).
    return time.perf_counter()


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


class _Names:
    """The full metric names of one breaker name, built once."""

    __slots__ = (
        "failure",
        "ignored",
        "latency",
        "rejected",
        "slow",
        "state",
        "success",
        "transition",
    )

    def __init__(self, base: str) -> None:
        self.success = base + ".success"
        self.failure = base + ".failure"
        self.ignored = base + ".ignored"
        self.rejected = base + ".rejected"
        self.slow = base + ".slow"
        self.latency = base + ".latency"
        self.state = base + ".state"
        self.transition = base + ".transition."


class _Tally:
    """The folded events of one breaker, waiting to be sent."""

    __slots__ = ("counts", "latencies", "slow", "state", "transitions")

    def __init__(self) -> None:
        #: Events by kind (only the first four are reported as counters).
        self.counts = [0, 0, 0, 0, 0, 0]
        #: Seconds of the successes and failures still to send (already
        #: sampled for a statsd client), in order.
        self.latencies: List[float] = []
        #: Successes and failures at least ``slow_call_duration`` long.
        self.slow = 0
        #: Last state gauge value, or None.
        self.state: Optional[int] = None
        #: ``"<old>.<new>"`` -> count, in order of first occurrence.
        self.transitions: Dict[str, int] = {}

    def merge(self, later: "_Tally") -> None:
        """Add the events of ``later``, folded after these."""
        counts = self.counts
        for kind, count in enumerate(later.counts):
            counts[kind] += count
        self.latencies.extend(later.latencies)
        self.slow += later.slow
        if later.state is not None:
            self.state = later.state
        transitions = self.transitions
        for key, count in later.transitions.items():
            transitions[key] = transitions.get(key, 0) + count


class _Lines:
    """Prepares StatsD lines and sends them packed through a statsd client."""

    def __init__(self, client: Any, rate: float) -> None:
        self._client = client
        self._suffix = "|@{}".format(rate) if rate < 1 else ""
        self._limit: int = getattr(client, "_maxudpsize", _STREAM_CHUNK)
        #: Lines, or runs of lines already joined with newlines.
        self.lines: List[str] = []

    def counter(self, name: str, count: int) -> None:
        self.lines.append("{}:{:d}|c".format(name, count))

    def gauge(self, name: str, value: int) -> None:
        self.lines.append("{}:{:d}|g".format(name, value))

    def timers(self, name: str, seconds: List[float]) -> None:
        # The values were sampled when they were folded: each one is a line.
        if not seconds:
            return
        # The statsd client's own format, '%0.6f|ms' of milliseconds; one
        # template for all the values formats them in one C-level call.
        line = name.replace("%", "%%") + ":%0.6f|ms" + self._suffix
        template = "\n".join([line] * len(seconds))
        self.lines.append(template % tuple([value * 1000.0 for value in seconds]))

    def packets(self) -> List[str]:
        """The lines packed as the client's own pipeline packs them: greedily,
        each packet shorter than the limit (a line longer than that alone)."""
        lines, self.lines = self.lines, []
        if not lines:
            return []
        # Cut with C-level string search rather than a Python loop over lines.
        data = "\n".join(lines)
        limit = self._limit
        packets = []
        start = 0
        end = len(data)
        while end - start >= limit:
            cut = data.rfind("\n", start, start + limit)
            if cut < 0:  # one line longer than a packet: alone
                cut = data.find("\n", start)
                if cut < 0:
                    break
            packets.append(data[start:cut])
            start = cut + 1
        packets.append(data[start:])
        return packets

    def send(self) -> None:
        send = self._client._send
        for packet in self.packets():
            send(packet)


class _Calls:
    """Sends through ``incr``/``timing``/``gauge`` of a client that is not a statsd one."""

    def __init__(self, client: Any, rate: float) -> None:
        self._client = client
        self._rate = rate

    def counter(self, name: str, count: int) -> None:
        self._client.incr(name, count)

    def gauge(self, name: str, value: int) -> None:
        self._client.gauge(name, value)

    def timers(self, name: str, seconds: List[float]) -> None:
        # Such a client samples (and marks the rate) itself, as statsd's does.
        timing = self._client.timing
        rate = self._rate
        for value in seconds:
            timing(name, value * 1000.0, rate)

    def send(self) -> None:
        """Everything went out already."""


def _run(ref: "weakref.ReferenceType[StatsdListener]", wakeup: threading.Event) -> None:
    """The sender thread: flush every interval or when woken, until told to stop.

    It holds its listener only weakly between flushes, so a listener dropped
    without ``close()`` is collected and its thread ends.
    """
    me = threading.current_thread()
    while True:
        listener = ref()
        if listener is None or listener._thread is not me:
            return
        interval = listener._interval
        del listener
        wakeup.wait(interval)
        wakeup.clear()
        listener = ref()
        if listener is None or listener._thread is not me:
            return
        listener._flush_in_thread()
        del listener


class StatsdListener(cbsync.Listener):
    """Reports breakers to StatsD: outcome counters, latency, state, transitions.

    ``client`` is a ``statsd.StatsClient`` (UDP), ``TCPStatsClient`` or
    ``UnixSocketStatsClient``, or any object with their ``incr``, ``timing``
    and ``gauge`` methods; without one, a ``StatsClient(host, port)`` is
    made (the host name is resolved once, here).  A statsd client (or a
    subclass) gets prepared lines, packed, through its packet sender, as its
    own ``pipeline()`` would send them; any other object gets one ``incr``
    per counter, one ``timing`` per latency value and one ``gauge`` per
    state.  ``prefix`` starts every name; ``sample_rate`` (0 < rate <= 1)
    samples the latency values.

    Calls only buffer their events; a background daemon thread sends them
    every ``flush_interval`` (seconds, a ``timedelta`` or a string such as
    ``"250ms"``; default 0.1 s), summing counters.  When it lags behind
    calls that never release the GIL, calls past half of ``max_buffer``
    buffered events (default 50,000) fold them into the counter sums
    themselves and, over UDP, send latency values a packet at a time; at
    most ``max_buffer`` latency values wait, and any dropped event is
    counted and logged.  See the module documentation for the names, their
    mapping, sampling, falling behind and failures.

    Add it to a registry to report every breaker, present and future, or to
    one breaker:

    >>> import cbsync
    >>> from cbsync.integrations.statsd import StatsdListener
    >>> registry = cbsync.Registry()
    >>> listener = StatsdListener(host="127.0.0.1", port=8125)
    >>> registry.add_listener(listener)
    >>> registry.get("payments").call(lambda: "paid")
    'paid'

    :meth:`close` sends what is buffered, stops the thread and releases the
    socket of a client the listener made:

    >>> registry.remove_listener(listener)
    >>> listener.close()
    """

    def __init__(
        self,
        client: Any = None,
        *,
        host: str = "localhost",
        port: int = 8125,
        prefix: str = "cbsync",
        sample_rate: float = 1.0,
        flush_interval: Any = FLUSH_INTERVAL,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
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
        interval = parse_duration("flush_interval", flush_interval)
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise ConfigError(
                "max_buffer={!r} must be a whole number of at least 1".format(max_buffer)
            )
        self._owned: Any = None
        if client is None:
            client = self._owned = _udp_client(host, port)
        else:
            if host != "localhost" or port != 8125:
                raise ConfigError(
                    "give either client= or host=/port=, not both "
                    "(client={!r}, host={!r}, port={!r})".format(client, host, port)
                )
            for method in ("incr", "timing", "gauge"):
                if not callable(getattr(client, method, None)):
                    raise ConfigError(
                        "client={!r} has no {}() method; pass a statsd.StatsClient, "
                        "TCPStatsClient or UnixSocketStatsClient".format(client, method)
                    )
        self._client = client
        self._rate = float(sample_rate)
        self._interval = interval
        self._max_buffer = max_buffer
        #: Buffer length that wakes the sender early.
        self._threshold = max(1, max_buffer // 10)
        #: Buffer length past which a call folds events itself (the sender
        #: was woken and has not caught up).
        self._high = max(self._threshold + 1, max_buffer // 2)
        clean = sanitize_prefix(prefix)
        self._prefix = clean + "." if clean else ""
        # A statsd client is fed prepared lines, so its own prefix goes in
        # front here; any other client applies its prefix itself.
        self._packets = isinstance(client, _StatsClientBase) and callable(
            getattr(client, "_send", None)
        )
        client_prefix = getattr(client, "_prefix", None) if self._packets else None
        self._wire_prefix = (client_prefix + "." if client_prefix else "") + self._prefix
        self._stream = isinstance(client, _StreamClientBase)
        #: Calls may send latency values themselves: a UDP datagram goes out
        #: at once whatever the server does, and the client is thread-safe.
        self._direct = self._packets and isinstance(client, statsd.StatsClient)
        #: Latency values are sampled as they are folded (a client that is
        #: not a statsd one samples them itself).
        self._sample = self._packets and self._rate < 1
        self._names: Dict[str, _Names] = {}
        #: Events waiting for the sender.  The call path only appends, and
        #: only while ``len(buffer) < self._room``; anything else goes through
        #: ``_crowded``.  ``_room`` is 0 while no sender thread runs here (so
        #: the next event starts one), ``_threshold`` while one does, and
        #: ``_high`` once it has been woken and not yet drained: from there on
        #: calls fold events into ``_folded`` themselves.
        self._buffer: Deque[_Event] = collections.deque()
        self._room = 0
        self._closed = False
        #: Events folded into running sums, by breaker name, waiting for the
        #: sender: exact counters and at most ``max_buffer`` latency values
        #: (``_folded_values``).  Under ``_fold_lock``.
        self._folded: Dict[str, _Tally] = {}
        self._folded_values = 0
        #: Packets of latency values made by a call, for the calls (one each)
        #: and the sender to send.
        self._ready: Deque[str] = collections.deque()
        #: Calls send no packet before this ``_monotonic()`` time (sending cost
        #: them the GIL too often), the next such pause, and the packets
        #: that cost the GIL less those tolerated (see ``_send_packet``).
        self._direct_after = -math.inf
        self._direct_pause = _DIRECT_PAUSE_FIRST
        self._direct_debt = 0.0
        self._slow_until = -math.inf  # perf_counter() time
        #: An error a call met sending, for the sender to report.
        self._direct_error: Optional[BaseException] = None
        #: Breaker name -> the breaker last attached under it (for its
        #: slow_call_duration and, after a loss, its current state).
        self._attached: Dict[str, Callable[[], Optional[CircuitBreaker]]] = {}
        # Sender state: used by whoever holds the send lock.
        self._failures = 0  # consecutive
        self._resume_at = -math.inf
        self._resend_states = False
        #: Set when an event was pushed out of the full buffer.
        self._lost = False
        # Trouble counters since the last log message (under self._lock).
        self._failed_unlogged = 0
        self._dropped_unlogged = 0
        self._full_unlogged = 0
        #: Latency values dropped (their calls were counted) since the last message.
        self._values_unlogged = 0
        self._log_after = -math.inf
        #: Events dropped since creation, whatever the reason.
        self._dropped_total = 0
        self._new_process()
        self._fork = ForkGuard(self._after_fork)
        _live.add(self)

    def _new_process(self) -> None:
        #: Guards starting and stopping the thread and the trouble counters.
        self._lock = threading.Lock()
        #: Held while draining and sending (the thread, ``flush()``);
        #: reentrant, as a logging handler may flush from a warning.
        self._send_lock = threading.RLock()
        #: Guards ``_folded``: held for a few operations per breaker at a time.
        self._fold_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _after_fork(self) -> None:
        self._new_process()
        # The parent sends what it folded and packed (a child forked from C
        # gets here before it folds anything itself).
        self._ready.clear()
        self._folded = {}
        self._folded_values = 0
        if not self._closed:
            self._room = 0  # the parent's thread does not exist here
        if self._stream:
            # A connection shared with the parent would mix both streams.
            try:
                self._client.close()
            except Exception:
                pass  # the next send reconnects or reports the failure

    @property
    def prefix(self) -> str:
        """The sanitised prefix, without its trailing dot ('' for none)."""
        return self._prefix[:-1]

    @property
    def flush_interval(self) -> float:
        """Seconds between two flushes by the background thread."""
        return self._interval

    @property
    def dropped_events(self) -> int:
        """Events dropped since the listener was made: pushed out of the full
        buffer, buffered while sending was paused or failing, or (their
        counters sent) whose latency value did not fit in ``max_buffer``."""
        return self._dropped_total

    def metric_base(self, name: str) -> str:
        """``<prefix>.<breaker>`` for a breaker called ``name``.

        >>> listener = StatsdListener(host="127.0.0.1", prefix="app.cb")
        >>> listener.metric_base("api.example.com:443")
        'app.cb.api_example_com_443'
        >>> listener.close()
        """
        return self._prefix + sanitize_segment(name)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Send everything buffered now, in the calling thread.

        Waits for a send in progress in the background thread first, at most
        ``timeout`` seconds (``None``: as long as it takes) and returns
        ``False`` if that was not enough; otherwise ``True``, whether or not
        StatsD got the lines (a failure is logged, never raised).
        """
        self._fork.check()
        lock = self._send_lock
        if not lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        try:
            self._send_buffered()
        finally:
            lock.release()
        return True

    def close(self) -> None:
        """Flush, stop the background thread, and close the client this
        listener made from ``host`` and ``port``.

        A client passed as ``client=`` belongs to the caller and is left open.
        Events after this are not sent; remove the listener from its breakers
        first.  Closing twice does nothing.
        """
        self._fork.check()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._room = 0
        self.flush(timeout=_STOP_WAIT)
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._wakeup.set()
            if thread is not threading.current_thread():
                thread.join(_STOP_WAIT)
        self._buffer.clear()
        self._ready.clear()
        with self._fold_lock:
            self._folded = {}
            self._folded_values = 0
        _live.discard(self)
        owned, self._owned = self._owned, None
        if owned is None:
            return
        close = getattr(owned, "close", None)
        if close is not None:
            close()
        else:  # statsd < 4.0: StatsClient has no close()
            owned._sock.close()

    # -- events (the call path: append a tuple, nothing else) ---------------

    def on_attach(self, breaker: CircuitBreaker) -> None:
        name = breaker.name
        self._fork.check()  # the lock below may be a copy held in the parent
        with self._lock:
            attached = self._attached
            if len(attached) >= _NAMES_KEPT:
                # Bounded by the breakers alive: forget the collected ones.
                for gone in [key for key, ref in attached.items() if ref() is None]:
                    del attached[gone]
            attached[name] = weakref.ref(breaker)
        event = (_STATE, name, STATE_VALUES[breaker.state])
        buffer = self._buffer
        if len(buffer) < self._room:
            buffer.append(event)
        else:
            self._crowded(event)

    def on_success(self, breaker: CircuitBreaker, elapsed: float) -> None:
        buffer = self._buffer
        if len(buffer) < self._room:
            buffer.append((_SUCCESS, breaker.name, elapsed))
        else:
            self._crowded((_SUCCESS, breaker.name, elapsed))

    def on_failure(
        self, breaker: CircuitBreaker, elapsed: float, exc: Optional[BaseException]
    ) -> None:
        buffer = self._buffer
        if len(buffer) < self._room:
            buffer.append((_FAILURE, breaker.name, elapsed))
        else:
            self._crowded((_FAILURE, breaker.name, elapsed))

    def on_ignored(
        self, breaker: CircuitBreaker, elapsed: float, exc: Optional[BaseException]
    ) -> None:
        buffer = self._buffer
        if len(buffer) < self._room:
            buffer.append((_IGNORED, breaker.name, None))
        else:
            self._crowded((_IGNORED, breaker.name, None))

    def on_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        buffer = self._buffer
        if len(buffer) < self._room:
            buffer.append((_REJECTED, breaker.name, None))
        else:
            self._crowded((_REJECTED, breaker.name, None))

    def on_state_change(
        self, breaker: CircuitBreaker, old: State, new: State, reason: OpenReason
    ) -> None:
        event = (_TRANSITION, breaker.name, (old, new))
        buffer = self._buffer
        if len(buffer) < self._room:
            buffer.append(event)
        else:
            self._crowded(event)

    def __repr__(self) -> str:
        return "<StatsdListener prefix={!r} sample_rate={} client={!r}>".format(
            self.prefix, self._rate, self._client
        )

    # -- the slow path of an event -------------------------------------------

    def _crowded(self, event: _Event) -> None:
        """Buffer ``event`` when the fast path cannot: fold the buffer here
        (past the high-water mark: the woken sender lags), start the sender
        thread (first event, or first after a fork), wake it (buffer past the
        threshold), or drop the oldest event (buffer full)."""
        try:
            buffer = self._buffer
            # (A child forked from C, with no fork hooks, is rebuilt by this
            # check and takes the path below, which starts its sender.)
            if self._room == self._high and len(buffer) >= self._high and not self._fork.check():
                self._fold_here(event)
                return
            self._fork.check()
            wake = False
            with self._lock:
                if self._closed:
                    self._room = 0
                    return
                if len(buffer) >= self._max_buffer:
                    self._drop_oldest(buffer)
                buffer.append(event)
                if self._thread is None:
                    self._start_thread()
                elif len(buffer) >= self._threshold:
                    self._room = self._high
                    wake = True
            if wake:
                self._wakeup.set()
        except Exception as exc:  # e.g. "can't start new thread"
            self._internal_error(exc)

    def _fold_here(self, event: _Event) -> None:
        """Past the high-water mark (the woken sender lags): buffer ``event``
        and do some of the sender's work in this call.

        Over UDP the call sends one packet of latency values, first making a
        chunk of them if none is ready.  Otherwise (or to make that chunk) it
        folds the events past the mark, and a chunk more, into the running
        sums, so that no counter is lost.  Threads fold separate chunks; no
        call waits for another's work.
        """
        buffer = self._buffer
        if len(buffer) >= self._max_buffer:
            # Full even so: the calls folding lost the GIL for long.
            with self._lock:
                self._drop_oldest(buffer)
        buffer.append(event)
        direct = False
        if self._direct:
            now = _monotonic()
            direct = now >= self._direct_after and now >= self._resume_at
            if direct:
                try:
                    packet: Optional[str] = self._ready.popleft()
                except IndexError:
                    packet = None
                if packet is not None:
                    self._send_packet(packet)
                    return
        batch = self._keep(
            self._fold(len(buffer) - self._high + _FOLD_CHUNK), _DIRECT_CHUNK if direct else 0
        )
        if batch:
            lines = _Lines(self._client, self._rate)
            for name, values in batch:
                lines.timers(self._names_of(name).latency, values)
            packets = lines.packets()
            self._ready.extend(packets[1:])
            self._send_packet(packets[0])

    def _drop_oldest(self, buffer: Deque[_Event]) -> None:
        # self._lock is held.
        try:
            buffer.popleft()
        except IndexError:
            return  # the sender emptied it meanwhile
        self._full_unlogged += 1
        self._dropped_total += 1
        self._lost = True

    def _start_thread(self) -> None:
        # self._lock is held.
        thread = threading.Thread(
            target=_run,
            args=(weakref.ref(self), self._wakeup),
            name="cbsync-statsd",
            daemon=True,  # never keeps the process alive
        )
        self._thread = thread
        # Wake the thread when the listener is collected, so that it ends.
        finalizer = weakref.finalize(self, self._wakeup.set)
        finalizer.atexit = False
        try:
            thread.start()
        except BaseException:
            self._thread = None
            # Retry when the buffer next reaches the threshold, not at each event.
            self._room = self._threshold
            raise
        self._room = self._threshold

    # -- the sender (background thread, flush(); under the send lock) --------

    def _flush_in_thread(self) -> None:
        try:
            with self._send_lock:
                self._send_buffered()
        except Exception as exc:  # a bug here must not end the thread
            self._internal_error(exc)

    def _send_buffered(self) -> None:
        with self._lock:
            error, self._direct_error = self._direct_error, None
        if error is not None:  # met by a call sending latency values
            self._direct_after = -math.inf  # calls wait for the pause below instead
            self._failed(error, 0)
        with self._fold_lock:
            folded, self._folded = self._folded, {}
            self._folded_values = 0
        _merge(folded, self._fold(len(self._buffer)))  # all kept: sent now
        if self._room > self._threshold:
            self._room = self._threshold  # woken and drained: re-arm the wake-up
        lost = self._lost
        if lost:
            self._lost = False
            self._resend_states = True
        if folded or lost:
            self._send_tallies(folded)
        if self._ready:
            self._send_ready()
        if lost or self._values_unlogged:
            self._warn("fell behind")

    def _send_tallies(self, tallies: Dict[str, _Tally]) -> None:
        if _monotonic() < self._resume_at:
            # Paused after a failure: drop, count, and send every state later.
            self._resend_states = True
            events = _events_in(tallies)
            with self._lock:
                self._dropped_unlogged += events
                self._dropped_total += events
            return
        sink: Any = (_Lines if self._packets else _Calls)(self._client, self._rate)
        try:
            self._emit(tallies, sink)
            sink.send()
        except Exception as exc:
            if self._stream:
                try:
                    self._client.close()  # the next send reconnects
                except Exception:
                    pass  # the original error is the one worth reporting
            self._failed(exc, _events_in(tallies))
        else:
            self._failures = 0
            self._resume_at = -math.inf

    def _send_ready(self) -> None:
        """Send the packets of latency values the calls made and left."""
        ready = self._ready
        send = self._client._send
        dropped = 0
        for _ in range(len(ready)):  # not those the calls keep adding
            try:
                packet = ready.popleft()
            except IndexError:
                break  # the calls sent the rest
            if _monotonic() < self._resume_at:  # paused after a failure
                dropped += packet.count("\n") + 1
                continue
            try:
                send(packet)
            except Exception as exc:
                self._failed(exc, packet.count("\n") + 1)
        if dropped:
            with self._lock:
                self._dropped_unlogged += dropped
                self._dropped_total += dropped

    # -- folding (calls past the high-water mark, the sender) ---------------

    def _fold(self, limit: int) -> Dict[str, _Tally]:
        """Take at most ``limit`` buffered events and tally them by breaker:
        counters summed, slow calls counted, latency values sampled.

        No lock: ``popleft`` is atomic, so threads folding at once take
        separate events.
        """
        buffer = self._buffer
        count = min(len(buffer), limit)
        if count <= 0:
            return {}
        items: List[_Event] = []
        popleft = buffer.popleft
        append = items.append
        try:
            for _ in range(count):
                append(popleft())
        except IndexError:
            pass  # another thread took the rest
        tallies = self._tally(items)
        attached = self._attached
        for name, tally in tallies.items():
            latencies = tally.latencies
            if latencies:
                ref = attached.get(name)
                breaker = ref() if ref is not None else None
                slow = breaker.config.slow_call_duration if breaker is not None else None
                if slow is not None:
                    tally.slow = len([value for value in latencies if value >= slow])
                if self._sample:
                    draw = random.random
                    rate = self._rate
                    tally.latencies = [value for value in latencies if draw() <= rate]
        return tallies

    def _keep(self, tallies: Dict[str, _Tally], take: int) -> List[Tuple[str, List[float]]]:
        """Add ``tallies`` to ``_folded`` and take out at most ``take`` latency
        values to send, the oldest first; past ``max_buffer`` values kept, the
        newest are dropped and counted."""
        dropped = 0
        with self._fold_lock:
            batch = self._take_values(take) if take else []
            folded = self._folded
            for name, tally in tallies.items():
                latencies = tally.latencies
                if latencies:
                    room = self._max_buffer - self._folded_values
                    if len(latencies) > room:
                        dropped += len(latencies) - room
                        del latencies[room:]
                    self._folded_values += len(latencies)
                earlier = folded.get(name)
                if earlier is None:
                    folded[name] = tally
                else:
                    earlier.merge(tally)
            left = take - sum([len(values) for _, values in batch])
            if left > 0:
                batch += self._take_values(left)
        if dropped:
            with self._lock:
                self._values_unlogged += dropped
                self._dropped_total += dropped
        return batch

    def _take_values(self, limit: int) -> List[Tuple[str, List[float]]]:
        """Take at most ``limit`` latency values out of ``_folded``, oldest
        breakers first.  ``_fold_lock`` is held."""
        batch: List[Tuple[str, List[float]]] = []
        left = limit
        for name, tally in self._folded.items():
            latencies = tally.latencies
            if not latencies:
                continue
            if len(latencies) <= left:
                tally.latencies = []
            else:
                latencies, tally.latencies = latencies[:left], latencies[left:]
            batch.append((name, latencies))
            left -= len(latencies)
            if not left:
                break
        self._folded_values -= limit - left
        return batch

    def _send_packet(self, packet: str) -> None:
        """Send a packet of latency values from a call (UDP).

        A send releases the GIL; if another thread then keeps it for a switch
        interval (a thread computing in pure Python), the call waits that
        long.  When that happens more than once per 32 packets (two waits in
        a row at most; the calls waiting at once count as one), calls stop
        sending for a pause (10 ms, doubling while it goes on, at most 1 s)
        and only fold meanwhile.  Never raises and never logs: an error is
        kept for the sender to report.  The bookkeeping is shared by the
        calls without a lock: a lost update only shifts a pause a little.
        """
        clock = _perf
        began = clock()
        try:
            self._client._send(packet)
        except Exception as exc:  # e.g. a non-ASCII prefix on the client
            self._direct_after = math.inf  # until the sender has reported it
            lines = packet.count("\n") + 1
            with self._lock:
                self._direct_error = exc
                self._dropped_unlogged += lines
                self._dropped_total += lines
            self._wakeup.set()
            return
        ended = clock()
        if ended - began < max(_SLOW_SEND, 0.8 * sys.getswitchinterval()):
            debt = self._direct_debt
            if debt > 0:
                self._direct_debt = max(debt - _SLOW_SHARE, 0.0)
            elif self._direct_pause > _DIRECT_PAUSE_FIRST:
                self._direct_pause = max(self._direct_pause / 2, _DIRECT_PAUSE_FIRST)
            return
        if began < self._slow_until:
            return  # the same wait as another call's: a thread that kept the GIL
        self._slow_until = ended
        debt = self._direct_debt + 1.0
        if debt >= _SLOW_DEBT:
            pause = self._direct_pause
            self._direct_after = _monotonic() + pause
            self._direct_pause = min(pause * 2, _DIRECT_PAUSE_MAX)
            debt -= 1.0  # one more such packet after the pause: pause again
        self._direct_debt = debt

    def _tally(self, items: List[_Event]) -> Dict[str, _Tally]:
        tallies: Dict[str, _Tally] = {}
        get = tallies.get
        # A run of successes of one breaker (the bulk of any busy buffer)
        # only appends latencies; successes are counted from them at the end.
        run_name: Optional[str] = None
        unused: List[float] = []
        run_append = unused.append
        for kind, name, value in items:
            if name is run_name and kind == _SUCCESS:
                run_append(value)
                continue
            tally = get(name)
            if tally is None:
                tally = tallies[name] = _Tally()
            if kind == _SUCCESS:
                run_name = name
                run_append = tally.latencies.append
                run_append(value)
                continue
            tally.counts[kind] += 1
            if kind == _FAILURE:
                tally.latencies.append(value)
            elif kind == _STATE:
                tally.state = value
            elif kind == _TRANSITION:
                old, new = value
                key = old.value + "." + new.value
                tally.transitions[key] = tally.transitions.get(key, 0) + 1
                tally.state = STATE_VALUES[new]
        for tally in tallies.values():
            # Each success and failure left exactly one latency value here.
            tally.counts[_SUCCESS] = len(tally.latencies) - tally.counts[_FAILURE]
        return tallies

    def _emit(self, tallies: Dict[str, _Tally], sink: Any) -> None:
        with self._lock:
            attached = dict(self._attached)
        states: Dict[str, int] = {}
        if self._resend_states:
            # Some events were lost: the current state of every breaker, so
            # that no dashboard stays wrong until the next transition.
            self._resend_states = False
            for name, attached_ref in attached.items():
                alive = attached_ref()
                if alive is not None:
                    states[name] = STATE_VALUES[alive.state]
        for name, tally in tallies.items():
            names = self._names_of(name)
            success, failure, ignored, rejected = tally.counts[:4]
            if success:
                sink.counter(names.success, success)
            if failure:
                sink.counter(names.failure, failure)
            if ignored:
                sink.counter(names.ignored, ignored)
            if rejected:
                sink.counter(names.rejected, rejected)
            latencies = tally.latencies
            ref = attached.get(name)
            breaker = ref() if ref is not None else None
            if tally.slow:
                sink.counter(names.slow, tally.slow)
            for key, count in tally.transitions.items():
                sink.counter(names.transition + key, count)
            if latencies:
                sink.timers(names.latency, latencies)
            if tally.state is not None and name not in states:
                # Two threads' transitions of one breaker can reach listeners
                # out of order; the breaker's state now is what is true.
                state = STATE_VALUES[breaker.state] if breaker is not None else tally.state
                sink.gauge(names.state, state)
        for name, value in states.items():
            sink.gauge(self._names_of(name).state, value)

    def _names_of(self, name: str) -> _Names:
        names = self._names.get(name)
        if names is None:
            names = _Names(self._wire_prefix + sanitize_segment(name))
            if len(self._names) >= _NAMES_KEPT:
                # Bounded: a program making endless breaker names must not
                # grow this without limit.  Rebuilding a name is cheap.
                self._names.clear()
            self._names[name] = names
        return names

    def _failed(self, exc: BaseException, events: int) -> None:
        self._failures += 1
        pause = min(_PAUSE_FIRST * 2.0 ** min(self._failures - 1, 16), _PAUSE_MAX)
        self._resume_at = _monotonic() + pause
        self._resend_states = True
        with self._lock:
            self._failed_unlogged += 1
            self._dropped_unlogged += events
            self._dropped_total += events
        self._warn("failed", exc, pause)

    def _internal_error(self, exc: BaseException) -> None:
        with self._lock:
            self._failed_unlogged += 1
        self._warn("failed", exc)

    def _warn(
        self, what: str, exc: Optional[BaseException] = None, pause: Optional[float] = None
    ) -> None:
        """Log the trouble counted so far, at most once a minute; never raise."""
        try:
            now = _monotonic()
            with self._lock:
                if now < self._log_after:
                    return
                self._log_after = now + _LOG_INTERVAL
                failed, self._failed_unlogged = self._failed_unlogged, 0
                full, self._full_unlogged = self._full_unlogged, 0
                values, self._values_unlogged = self._values_unlogged, 0
                dropped, self._dropped_unlogged = self._dropped_unlogged + full + values, 0
            logger.warning(
                "cbsync: StatsD reporting %s (%d failure(s) and %d dropped event(s) since "
                "the last message, %d of them pushed out of the full buffer of %d, %d of "
                "them only their latency value, past the %d kept; %s); calls are not affected",
                what,
                failed,
                dropped,
                full,
                self._max_buffer,
                values,
                self._max_buffer,
                "sending paused {:.0f}s".format(pause) if pause is not None else "sending goes on",
                exc_info=None if exc is None else (type(exc), exc, exc.__traceback__),
            )
        except Exception:
            pass  # a broken log handler must not reach a call or end the thread


def _merge(tallies: Dict[str, _Tally], later: Dict[str, _Tally]) -> None:
    """Add the ``later`` tallies to ``tallies``."""
    for name, tally in later.items():
        earlier = tallies.get(name)
        if earlier is None:
            tallies[name] = tally
        else:
            earlier.merge(tally)


def _events_in(tallies: Dict[str, _Tally]) -> int:
    """How many events the tallies hold."""
    return sum([sum(tally.counts) for tally in tallies.values()])


#: Listeners not closed yet, flushed at exit and cleaned after a fork.
_live: "weakref.WeakSet[StatsdListener]" = weakref.WeakSet()


def _flush_at_exit() -> None:
    for listener in list(_live):
        try:
            listener.flush(timeout=_STOP_WAIT)
        except Exception:
            pass  # best effort: the process is ending


def _forget_parent_events() -> None:
    # Runs in a child right after os.fork(), before anything else: what is
    # buffered there is the parent's, and the parent sends it.
    for listener in list(_live):
        listener._buffer.clear()
        listener._ready.clear()
        listener._folded = {}
        listener._folded_values = 0
        # The parent reports its own trouble.
        listener._lost = False
        listener._direct_error = None
        listener._failed_unlogged = listener._dropped_unlogged = listener._full_unlogged = 0
        listener._values_unlogged = 0


atexit.register(_flush_at_exit)
_register_at_fork: Optional[Callable[..., None]] = getattr(os, "register_at_fork", None)
if _register_at_fork is not None:
    _register_at_fork(after_in_child=_forget_parent_events)


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
