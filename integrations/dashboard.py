"""A live dashboard of circuit breakers in the browser: a WSGI application.

``Dashboard()`` is a WSGI application showing every breaker of a registry
(by default ``cbsync.registry``) -- or, given ``store=RedisStore(...)``, every
breaker a fleet of processes shares through Redis -- one tile per breaker:
its state (a colour, an icon and a word), why and since when, the countdown
to the next trial call while OPEN, calls and rejections per second, the
window's failure and slow-call rates, the p99 latency, a sparkline of the
last minutes and the latest transitions.  The page is rendered on the server
and refreshed in place by a small script polling ``/api/breakers`` (the same
data as JSON, for scripts too).  Everything the page needs is served by the
application itself: no build step, no CDN, only the standard library (and
``redis`` for the fleet view, imported by the code that builds it).

Mount it in an existing WSGI application under a path (it respects
``SCRIPT_NAME``), with :func:`mount` or werkzeug's ``DispatcherMiddleware``::

    from cbsync.integrations.dashboard import Dashboard, mount

    application = mount(application, "/ops/breakers", Dashboard())

or serve it on its own: :func:`start_server` (a thread of your process) or
``cbsync dashboard --port 8025 [--redis URL --prefix P] [--token T]``.

Trip and reset buttons exist only when the dashboard is given a ``token``:
an action is a ``POST`` carrying ``Authorization: Bearer <token>`` (a header
a browser never adds by itself, so another site cannot forge one; no
cookie is involved), compared in constant time, and every action -- and
every refused attempt -- is logged on logger ``cbsync`` with who asked.
Without a token the dashboard is read-only: it never changes a breaker.

The numbers per second and the sparklines come from samples taken every
``interval`` seconds by a background daemon thread (started by the first
request, restarted after ``os.fork()``), kept in fixed-size rings of
``history`` samples per breaker: memory does not grow with time.
"""

import argparse
import datetime
import hmac
import html
import json
import logging
import math
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from array import array
from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    TextIO,
    Tuple,
    Type,
    Union,
)
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import cbsync
from cbsync import CircuitBreaker, ConfigError, State, StateTransition, TransitionReason
from cbsync.reporting import STATE_CODES, Delta, Reader, Reporter
from cbsync.toolkit import did_you_mean, parse_duration

if TYPE_CHECKING:
    # The fleet view's code imports them when it is built: redis is optional.
    from .redis import FleetStatus, RedisStore

__all__ = [
    "API_VERSION",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "Dashboard",
    "DashboardServer",
    "add_dashboard",
    "mount",
    "run_dashboard",
    "start_server",
]

logger = logging.getLogger("cbsync")

#: Version of the ``/api/breakers`` document; raised only if a field changes meaning.
API_VERSION = 1
#: Port of ``cbsync dashboard`` unless told otherwise.
DEFAULT_PORT = 8025
#: Address ``cbsync dashboard`` listens on unless told otherwise: this host only.
DEFAULT_HOST = "127.0.0.1"
#: Environment variable giving the default of ``--token``.
TOKEN_ENV = "CBSYNC_DASHBOARD_TOKEN"
#: Environment variable giving the default of ``--redis`` (shared with the Redis commands).
REDIS_URL_ENV = "CBSYNC_REDIS_URL"
#: Seconds between two samples of the rates and sparklines.
DEFAULT_INTERVAL = 2.0
#: Samples kept per breaker: five minutes at the default interval.
DEFAULT_HISTORY = 150
#: Seconds between two refreshes of an open page.
DEFAULT_POLL = 1.0
#: Shortest token accepted: a guessable one would make the buttons anyone's.
MIN_TOKEN_LENGTH = 16
#: Transitions shown per tile, newest first.
TRANSITIONS_SHOWN = 5
#: Seconds a read of the fleet is reused, so that many open pages cost Redis one read.
FLEET_FRESH = 0.5
#: Seconds before Redis is asked again after it failed to answer.
FLEET_RETRY = 1.0
#: Largest action request body read, in bytes.
MAX_BODY = 4096
#: Longest operator name kept for the log.
MAX_OPERATOR = 100

_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard_static")
_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

#: How each state shows: an icon and a word, so that colour is never the only cue.
STATE_LABELS: Mapping[State, Tuple[str, str]] = {
    State.CLOSED: ("\u2714", "closed"),
    State.HALF_OPEN: ("\u25d1", "half-open"),
    State.OPEN: ("\u2716", "open"),
    State.FORCED_OPEN: ("\u2298", "forced open"),
    State.DISABLED: ("\u25cb", "disabled"),
}
#: Tiles are sorted by this rank, then by name: what needs attention first.
_RANK = {
    State.OPEN: 0,
    State.FORCED_OPEN: 0,
    State.HALF_OPEN: 1,
    State.DISABLED: 2,
    State.CLOSED: 3,
}

Environ = Dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
SubParsers = Any  # argparse's _SubParsersAction is private


# -- what a tile shows -------------------------------------------------------------


class _Tile(NamedTuple):
    """Everything one tile (and one entry of ``/api/breakers``) shows."""

    name: str
    state: State
    reason: Optional[TransitionReason]
    since: Optional[datetime.datetime]
    retry_after: Optional[float]
    calls_per_second: Optional[float]
    rejected_per_second: Optional[float]
    failure_rate: Optional[float]
    slow_call_rate: Optional[float]
    window_calls: int
    consecutive_failures: int
    p99_latency: Optional[float]
    transitions: Tuple[StateTransition, ...]  # newest first
    history_calls: Tuple[Optional[float], ...]
    history_failure_rate: Tuple[Optional[float], ...]


class _Reading(NamedTuple):
    """The tiles of one read, and whether the source could be read."""

    tiles: List[_Tile]
    read_at: Optional[datetime.datetime]
    unavailable_since: Optional[datetime.datetime] = None
    error: Optional[str] = None


class _Ring:
    """The last ``size`` values of a series (``None`` for a gap), in fixed memory."""

    __slots__ = ("_count", "_next", "_values")

    def __init__(self, size: int) -> None:
        self._values = array("d", [math.nan]) * size
        self._next = 0
        self._count = 0

    def push(self, value: Optional[float]) -> None:
        self._values[self._next] = math.nan if value is None else value
        self._next = (self._next + 1) % len(self._values)
        self._count = min(self._count + 1, len(self._values))

    def values(self) -> Tuple[Optional[float], ...]:
        """Oldest first."""
        size = len(self._values)
        start = (self._next - self._count) % size
        ordered = [self._values[(start + i) % size] for i in range(self._count)]
        return tuple(None if math.isnan(value) else value for value in ordered)


class _History:
    """Per breaker: rings of calls per second and failure rates, and the latest rates."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._calls: Dict[str, _Ring] = {}
        self._failure_rate: Dict[str, _Ring] = {}
        self._rates: Dict[str, Tuple[Optional[float], Optional[float]]] = {}

    def record(
        self,
        samples: Sequence[Tuple[str, Optional[float], Optional[float], Optional[float]]],
    ) -> None:
        """Add one sample per breaker: ``(name, calls/s, rejected/s, failure rate)``;
        breakers missing from ``samples`` are forgotten (they left the source)."""
        with self._lock:
            names = {sample[0] for sample in samples}
            for table in (self._calls, self._failure_rate, self._rates):
                for gone in [name for name in table if name not in names]:
                    del table[gone]
            for name, calls, rejected, failure_rate in samples:
                if name not in self._calls:
                    self._calls[name] = _Ring(self.size)
                    self._failure_rate[name] = _Ring(self.size)
                self._calls[name].push(calls)
                self._failure_rate[name].push(failure_rate)
                self._rates[name] = (calls, rejected)

    def rates(self, name: str) -> Tuple[Optional[float], Optional[float]]:
        """Calls and rejections per second over the last sample interval."""
        return self._rates.get(name, (None, None))

    def series(self, name: str) -> Tuple[Tuple[Optional[float], ...], Tuple[Optional[float], ...]]:
        with self._lock:
            calls = self._calls.get(name)
            failure_rate = self._failure_rate.get(name)
            if calls is None or failure_rate is None:
                return (), ()
            return calls.values(), failure_rate.values()


# -- the two sources: this process's breakers, or the fleet's in Redis ------------


class _LocalView:
    """The breakers of a registry (or given breakers), read in this process."""

    fleet = False

    def __init__(self, source: Any, history: _History) -> None:
        self.reader = Reader(source)
        self.history = history
        self.description = "this process's breakers"
        self._last_sample: Optional[float] = None
        self._sampled: FrozenSet[str] = frozenset()

    def sample(self, deltas: List[Delta]) -> None:
        now = time.monotonic()
        elapsed = None if self._last_sample is None else now - self._last_sample
        self._last_sample = now
        samples = []
        for delta in deltas:
            calls = rejected = None
            # A breaker's first delta counts since its creation: no rate from it.
            if elapsed and elapsed > 0 and delta.name in self._sampled:
                calls = (delta.calls + delta.ignored) / elapsed
                rejected = delta.rejected / elapsed
            samples.append((delta.name, calls, rejected, delta.snapshot.window_failure_rate))
        self._sampled = frozenset(delta.name for delta in deltas)
        self.history.record(samples)

    def read(self) -> _Reading:
        tiles = []
        seen = set()
        for breaker in self.reader.breakers():
            if breaker in seen:
                continue
            seen.add(breaker)
            tiles.append(self._tile(breaker))
        return _Reading(tiles, _utc_now())

    def _tile(self, breaker: CircuitBreaker) -> _Tile:
        retry_after = breaker.retry_after
        snap = breaker.snapshot()
        last = snap.transitions[-1] if snap.transitions else None
        calls, rejected = self.history.rates(snap.name)
        history_calls, history_failure_rate = self.history.series(snap.name)
        return _Tile(
            name=snap.name,
            state=snap.state,
            reason=last.reason if last else None,
            since=last.at if last else None,
            retry_after=retry_after if snap.state is State.OPEN else None,
            calls_per_second=calls,
            rejected_per_second=rejected,
            failure_rate=snap.window_failure_rate,
            slow_call_rate=snap.window_slow_call_rate,
            window_calls=snap.window_calls,
            consecutive_failures=snap.consecutive_failures,
            p99_latency=snap.p99_latency,
            transitions=tuple(reversed(snap.transitions[-TRANSITIONS_SHOWN:])),
            history_calls=history_calls,
            history_failure_rate=history_failure_rate,
        )

    def act(self, action: str, name: str, reason: str) -> State:
        for breaker in self.reader.breakers():
            if breaker.name == name:
                if action == "trip":
                    breaker.trip(reason)
                else:
                    breaker.reset()
                return breaker.state
        raise KeyError(name)

    def names(self) -> List[str]:
        return [breaker.name for breaker in self.reader.breakers()]


class _FleetView:
    """The breakers shared through a :class:`~cbsync.integrations.redis.RedisStore`.

    Redis is read at most every :data:`FLEET_FRESH` seconds whatever the
    number of open pages.  When it cannot answer, the last rows read are
    shown with the time the outage began, and Redis is asked again every
    :data:`FLEET_RETRY` seconds: the view recovers by itself.
    """

    fleet = True

    def __init__(self, store: "RedisStore", history: _History) -> None:
        from redis.exceptions import RedisError

        from .redis import RedisStore

        if not isinstance(store, RedisStore):
            raise ConfigError(
                "store={!r} must be a cbsync.integrations.redis.RedisStore".format(store)
            )
        self._errors = (RedisError, OSError)
        self.store = store
        self.history = history
        self.reader = Reader(())  # no local breakers: the sampler's ticks only
        self.description = "the fleet on {} (prefix {!r})".format(store.server, store.prefix)
        self._lock = threading.Lock()
        self._rows: List[FleetStatus] = []
        self._read_at: Optional[datetime.datetime] = None
        self._next_read = -math.inf
        self._down_since: Optional[datetime.datetime] = None
        self._error: Optional[str] = None
        self._transitions: Dict[str, Deque[StateTransition]] = {}

    def _fetch(self) -> None:
        """Read the fleet if the last read is stale (under ``self._lock``)."""
        now = time.monotonic()
        if now < self._next_read:
            return
        try:
            rows = self.store.fleet_status()
        except self._errors as exc:
            self._next_read = now + FLEET_RETRY
            self._error = "{}: {}".format(type(exc).__name__, exc)
            if self._down_since is None:
                self._down_since = _utc_now()
                logger.warning(
                    "cbsync dashboard: fleet state unavailable from %s: %s; showing the "
                    "last state read, asking again every %gs",
                    self.store.server,
                    self._error,
                    FLEET_RETRY,
                )
            return
        self._next_read = now + FLEET_FRESH
        if self._down_since is not None:
            logger.info("cbsync dashboard: fleet state available again from %s", self.store.server)
        self._down_since = None
        self._error = None
        self._read_at = _utc_now()
        self._note_transitions(rows)
        self._rows = rows

    def _note_transitions(self, rows: List["FleetStatus"]) -> None:
        # Redis keeps each breaker's current state only: the transitions shown
        # are those this dashboard saw between two reads.
        before = {row.name: row for row in self._rows}
        for row in rows:
            old = before.get(row.name)
            if old is not None and (old.state, old.changed_at) != (row.state, row.changed_at):
                seen = self._transitions.setdefault(row.name, deque(maxlen=TRANSITIONS_SHOWN))
                seen.appendleft(
                    StateTransition(old.state, row.state, row.reason, row.changed_at or _utc_now())
                )
        names = {row.name for row in rows}
        for gone in [name for name in self._transitions if name not in names]:
            del self._transitions[gone]

    def read(self) -> _Reading:
        with self._lock:
            self._fetch()
            rows = list(self._rows)
            transitions = {name: tuple(seen) for name, seen in self._transitions.items()}
            reading = _Reading([], self._read_at, self._down_since, self._error)
        for row in rows:
            history_calls, history_failure_rate = self.history.series(row.name)
            reading.tiles.append(
                _Tile(
                    name=row.name,
                    state=row.state,
                    reason=None if row.reason.kind == "unknown" else row.reason,
                    since=row.changed_at,
                    retry_after=row.retry_after if row.state is State.OPEN else None,
                    calls_per_second=None,
                    rejected_per_second=None,
                    failure_rate=row.window_failure_rate,
                    slow_call_rate=row.window_slow_call_rate,
                    window_calls=row.window_calls,
                    consecutive_failures=row.consecutive_failures,
                    p99_latency=None,
                    transitions=transitions.get(row.name, ()),
                    history_calls=history_calls,
                    history_failure_rate=history_failure_rate,
                )
            )
        return reading

    def sample(self, deltas: List[Delta]) -> None:
        reading = self.read()
        available = reading.unavailable_since is None
        self.history.record(
            [
                (tile.name, None, None, tile.failure_rate if available else None)
                for tile in reading.tiles
            ]
        )

    def act(self, action: str, name: str, reason: str) -> State:
        with self._lock:
            self._next_read = -math.inf  # the check below must see the fleet now
            self._fetch()
            if self._down_since is not None:
                raise OSError("fleet state unavailable: {}".format(self._error))
            if name not in {row.name for row in self._rows}:
                raise KeyError(name)
        row = self.store.trip(name, reason) if action == "trip" else self.store.reset(name)
        with self._lock:
            self._next_read = -math.inf  # show the change at the next read
        return row.state

    def names(self) -> List[str]:
        with self._lock:
            return [row.name for row in self._rows]


_View = Union[_LocalView, _FleetView]


# -- formatting: mirrored in dashboard_static/dashboard.js -------------------------
#
# The page is rendered here, then refreshed by the script from /api/breakers;
# each function below has a twin in the script that must give the same text
# (a browser test compares them).


def _fixed(value: float, digits: int) -> str:
    # Rounds halves up, as the script does: str.format rounds them to even.
    scale = 10**digits
    return "{:.{}f}".format(math.floor(value * scale + 0.5) / scale, digits)


def _percent(rate: Optional[float]) -> str:
    return "\u2013" if rate is None else _fixed(rate * 100, 1) + "%"


def _per_second(rate: Optional[float]) -> str:
    if rate is None:
        return "\u2013"
    return _fixed(rate, 1) if rate < 10 else _fixed(rate, 0)


def _latency(seconds: Optional[float]) -> str:
    if seconds is None:
        return "\u2013"
    if seconds < 0.001:
        return _fixed(seconds * 1e6, 0) + " \u00b5s"
    if seconds < 1:
        return _fixed(seconds * 1e3, 1) + " ms"
    return _fixed(seconds, 2) + " s"


def _duration(seconds: float) -> str:
    whole = max(0, math.floor(seconds))
    if whole < 60:
        return "{}s".format(whole)
    if whole < 3600:
        return "{}m {:02d}s".format(whole // 60, whole % 60)
    if whole < 86400:
        return "{}h {:02d}m".format(whole // 3600, whole % 3600 // 60)
    return "{}d {}h".format(whole // 86400, whole % 86400 // 3600)


def _since(seconds: Optional[float]) -> str:
    return "" if seconds is None else "for " + _duration(seconds)


def _retry(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    if seconds <= 0:
        return "trial call due"
    return "retry in " + _duration(math.ceil(seconds))


def _clock_time(at: Optional[str]) -> str:
    """``HH:MM:SS`` of an ISO time (the script cuts the same characters)."""
    return "" if at is None else at[11:19]


#: Height of a sparkline in its SVG's units; its width is the history size - 1.
_SPARK_HEIGHT = 24


def _spark_path(values: Sequence[Optional[float]], top: Optional[float], size: int) -> str:
    """An SVG path of ``values`` (right-aligned in ``size`` slots, scaled to ``top``);
    a gap (``None``) breaks the line."""
    if top is None:
        top = max((v for v in values if v is not None), default=0.0)
    if not top or top <= 0:
        top = 1.0
    offset = size - len(values)
    parts = []
    command = "M"
    for index, value in enumerate(values):
        if value is None:
            command = "M"
            continue
        y = _SPARK_HEIGHT - 1 - min(value / top, 1.0) * (_SPARK_HEIGHT - 2)
        tenths = math.floor(y * 10 + 0.5)  # _fixed(y, 1), inlined: 150 points a tile
        parts.append("{}{},{}.{}".format(command, offset + index, tenths // 10, tenths % 10))
        command = "L"
    return "".join(parts)


def _seconds_between(
    later: datetime.datetime, earlier: Optional[datetime.datetime]
) -> Optional[float]:
    return None if earlier is None else max(0.0, (later - earlier).total_seconds())


# -- JSON ------------------------------------------------------------------------


def _iso(at: Optional[datetime.datetime]) -> Optional[str]:
    return None if at is None else at.astimezone(datetime.timezone.utc).isoformat()


def _number(value: Optional[float]) -> Optional[float]:
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return None  # JSON has no infinity; the last latency bucket has no bound
    return round(value, 6)


def _tile_json(tile: _Tile, now: datetime.datetime, history: bool) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "name": tile.name,
        "state": tile.state.value,
        "state_code": STATE_CODES[tile.state],
        "reason": None if tile.reason is None else str(tile.reason),
        "reason_kind": None if tile.reason is None else tile.reason.kind,
        "since": _iso(tile.since),
        "seconds_in_state": _number(_seconds_between(now, tile.since)),
        "retry_after": _number(tile.retry_after),
        "calls_per_second": _number(tile.calls_per_second),
        "rejected_per_second": _number(tile.rejected_per_second),
        "failure_rate": _number(tile.failure_rate),
        "slow_call_rate": _number(tile.slow_call_rate),
        "window_calls": tile.window_calls,
        "consecutive_failures": tile.consecutive_failures,
        "p99_latency": _number(tile.p99_latency),
        "transitions": [
            {
                "at": _iso(t.at),
                "old": t.old.value,
                "new": t.new.value,
                "reason": str(t.reason),
            }
            for t in tile.transitions
        ],
    }
    if history:
        # Samples are finite (a gap is None): rounding is all they need.
        entry["history"] = {
            "calls_per_second": [None if v is None else round(v, 6) for v in tile.history_calls],
            "failure_rate": [
                None if v is None else round(v, 6) for v in tile.history_failure_rate
            ],
        }
    return entry


# -- HTML ------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _state_html(state: State) -> str:
    icon, word = STATE_LABELS[state]
    return '<span class="icon" aria-hidden="true">{}</span> {}'.format(icon, word)


def _transition_html(entry: Mapping[str, Any]) -> str:
    return '<li><time>{}</time> {} \u2192 {} <span class="why">{}</span></li>'.format(
        _e(_clock_time(entry["at"])),
        _e(STATE_LABELS[State(entry["old"])][1]),
        _e(STATE_LABELS[State(entry["new"])][1]),
        _e(entry["reason"]),
    )


_METRICS = (
    ("calls_per_second", "calls/s", _per_second),
    ("rejected_per_second", "rejected/s", _per_second),
    ("failure_rate", "failures", _percent),
    ("slow_call_rate", "slow", _percent),
    ("p99_latency", "p99", _latency),
)


def _tile_html(entry: Mapping[str, Any], size: int, actions: bool, shown: bool) -> str:
    """One tile, from its ``/api/breakers`` entry (with history)."""
    state = entry["state"]
    metrics = "".join(
        '<div><dt>{}</dt><dd data-field="{}">{}</dd></div>'.format(
            label, field, show(entry[field])
        )
        for field, label, show in _METRICS
    )
    buttons = ""
    if actions:
        buttons = (
            '<div class="actions"><button type="button" data-action="trip">Trip</button>'
            '<button type="button" data-action="reset">Reset</button></div>'
        )
    return (
        '<article class="tile state-{state}" data-name="{name}"{hidden}>'
        '<header><h2 class="name" title="{name}">{name}</h2>'
        '<span class="state" data-field="state">{state_html}</span></header>'
        '<p class="status"><span data-field="reason">{reason}</span> '
        '<span data-field="since">{since}</span> '
        '<span data-field="retry">{retry}</span></p>'
        '<dl class="metrics">{metrics}</dl>'
        '<svg class="spark" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        'aria-hidden="true"><path class="calls" data-field="spark_calls" d="{calls}"></path>'
        '<path class="failures" data-field="spark_failures" d="{failures}"></path></svg>'
        '<ol class="transitions" data-field="transitions">{transitions}</ol>'
        "{buttons}</article>"
    ).format(
        state=_e(state),
        name=_e(entry["name"]),
        hidden="" if shown else " hidden",
        state_html=_state_html(State(state)),
        reason=_e(entry["reason"] or "no state change yet"),
        since=_e(_since(entry["seconds_in_state"])),
        retry=_e(_retry(entry["retry_after"])),
        metrics=metrics,
        width=max(size - 1, 1),
        height=_SPARK_HEIGHT,
        calls=_spark_path(entry["history"]["calls_per_second"], None, size),
        failures=_spark_path(entry["history"]["failure_rate"], 1.0, size),
        transitions="".join(_transition_html(t) for t in entry["transitions"]),
        buttons=buttons,
    )


_EMPTY_ENTRY: Mapping[str, Any] = {
    "name": "",
    "state": "closed",
    "reason": None,
    "seconds_in_state": None,
    "retry_after": None,
    "calls_per_second": None,
    "rejected_per_second": None,
    "failure_rate": None,
    "slow_call_rate": None,
    "p99_latency": None,
    "transitions": [],
    "history": {"calls_per_second": [], "failure_rate": []},
}


def _matches(name: str, query: str) -> bool:
    return query.casefold() in name.casefold()


# -- the application -------------------------------------------------------------


class Dashboard:
    """A WSGI application showing breakers live; see the module documentation.

    ``source`` is what :class:`cbsync.reporting.Reader` takes -- a
    :class:`~cbsync.Registry` (default ``cbsync.registry``, which follows the
    process default), a breaker or an iterable of breakers; ``store`` (a
    :class:`~cbsync.integrations.redis.RedisStore`) shows the fleet's shared
    breakers instead, and its buttons act on every process.  ``token``
    enables the trip and reset buttons (at least :data:`MIN_TOKEN_LENGTH`
    characters; ``None``, the default, makes the dashboard read-only).
    ``interval`` is the seconds between two samples of the rates and
    sparklines (``None``: no background thread; call :meth:`sample`
    yourself), ``history`` the samples kept per breaker, ``poll`` the
    seconds between two refreshes of an open page.

    >>> import cbsync
    >>> from cbsync.integrations.dashboard import Dashboard
    >>> registry = cbsync.Registry()
    >>> _ = registry.get("payments")
    >>> dashboard = Dashboard(registry, interval=None)
    >>> [entry["name"] for entry in dashboard.document()["breakers"]]
    ['payments']

    Routes, below wherever it is mounted (``SCRIPT_NAME``): ``GET /`` the
    page (``?q=`` filters by name, ``?live=0`` stops the refreshes),
    ``GET /api/breakers`` the JSON document (``?q=``, and ``?history=0``
    leaves the sparkline series out), ``POST /api/trip`` and
    ``POST /api/reset`` the actions, ``/static/...`` the script, style sheet
    and icon.
    """

    def __init__(
        self,
        source: Any = None,
        *,
        store: Optional["RedisStore"] = None,
        token: Optional[str] = None,
        title: str = "cbsync breakers",
        interval: Union[float, str, datetime.timedelta, None] = DEFAULT_INTERVAL,
        history: int = DEFAULT_HISTORY,
        poll: Union[float, str, datetime.timedelta] = DEFAULT_POLL,
    ) -> None:
        if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH):
            raise ConfigError(
                "token must be a string of at least {} characters (make one with: python -c "
                "'import secrets; print(secrets.token_urlsafe())'), or None for a read-only "
                "dashboard".format(MIN_TOKEN_LENGTH)
            )
        if not isinstance(history, int) or isinstance(history, bool) or history < 2:
            raise ConfigError("history={!r} must be an int of at least 2 samples".format(history))
        if not isinstance(title, str):
            raise ConfigError("title={!r} must be a string".format(title))
        self.interval = None if interval is None else parse_duration("interval", interval)
        self.poll = parse_duration("poll", poll)
        self.title = title
        self._token = None if token is None else token.encode("utf-8")
        self._history = _History(history)
        self._view: _View
        if store is not None:
            if source is not None:
                raise ConfigError("give either source= (local breakers) or store= (the fleet)")
            self._view = _FleetView(store, self._history)
        else:
            self._view = _LocalView(cbsync.registry if source is None else source, self._history)
        self._reporter: Optional[Reporter] = None
        self._reporter_lock = threading.Lock()
        self._closed = False

    @property
    def actions(self) -> bool:
        """Whether trip and reset are enabled (a token was given)."""
        return self._token is not None

    @property
    def description(self) -> str:
        """What the dashboard shows, for people: this process's breakers, or the fleet's."""
        return self._view.description

    # -- sampling --------------------------------------------------------------------

    def sample(self) -> None:
        """Take one sample of every breaker's rates and sparkline values now.

        The background thread does this every ``interval``; with
        ``interval=None`` call it yourself (a test does, under a fake clock).
        """
        self._view.sample(self._view.reader.read())

    def _start_sampling(self) -> None:
        if self._reporter is not None or self.interval is None or self._closed:
            return
        with self._reporter_lock:
            if self._reporter is None and not self._closed:
                self.sample()  # the baseline the first rates are measured from
                # The reporter's thread is a daemon, restarted in a forked child.  It
                # reads with the same Reader, so its first deltas start at that baseline.
                self._reporter = Reporter(
                    self._view.reader, self._view.sample, interval=self.interval
                )

    def close(self) -> None:
        """Stop the sampling thread (a store given to the dashboard stays open)."""
        self._closed = True
        with self._reporter_lock:
            reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.close(flush=False)

    # -- the data ----------------------------------------------------------------------

    def document(self, query: str = "", history: bool = True) -> Dict[str, Any]:
        """The ``/api/breakers`` document: see the documentation for its fields."""
        reading = self._view.read()
        now = _utc_now()
        tiles = sorted(reading.tiles, key=lambda tile: (_RANK[tile.state], tile.name))
        return {
            "version": API_VERSION,
            "view": "fleet" if self._view.fleet else "local",
            "source": self._view.description,
            "generated_at": _iso(now),
            "read_at": _iso(reading.read_at),
            "available": reading.unavailable_since is None,
            "unavailable_since": _iso(reading.unavailable_since),
            "error": reading.error,
            "actions": self.actions,
            "interval": self.interval,
            "history_size": self._history.size,
            "breakers": [
                _tile_json(tile, now, history) for tile in tiles if _matches(tile.name, query)
            ],
        }

    # -- WSGI --------------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            self._start_sampling()
            status, headers, body = self._route(environ)
        except Exception:
            # Mounted in someone's application, the dashboard must never take
            # a worker down with it.
            logger.exception("cbsync dashboard: failed to answer %s", _request_line(environ))
            status, headers, body = _json_reply(
                "500 Internal Server Error", {"error": "internal error"}
            )
        headers = headers + _SECURITY_HEADERS
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            return [b""]
        return [body]

    def _route(self, environ: Environ) -> "_Reply":
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if path in ("/api/trip", "/api/reset"):
            if method != "POST":
                return _not_allowed("POST")
            return self._act(path[len("/api/") :], environ)
        if method not in ("GET", "HEAD"):
            return _not_allowed("GET, HEAD")
        if path == "/":
            return self._page(environ, query)
        if path == "/api/breakers":
            document = self.document(
                _first(query, "q"), history=_first(query, "history") not in ("0", "false")
            )
            return _json_reply("200 OK", document)
        if path.startswith("/static/") and path[len("/static/") :] in _ASSETS:
            return _asset(path[len("/static/") :])
        return _json_reply("404 Not Found", {"error": "no such page: {}".format(path)})

    def _page(self, environ: Environ, query: Mapping[str, List[str]]) -> "_Reply":
        base = _e(_base(environ))
        search = _first(query, "q")
        document = self.document()
        size = self._history.size
        tiles = "".join(
            _tile_html(entry, size, self.actions, _matches(entry["name"], search))
            for entry in document["breakers"]
        )
        labels = {state.value: list(STATE_LABELS[state]) for state in State}
        operator = ""
        if self.actions:
            operator = (
                '<form class="operator" autocomplete="off">'
                '<label>Operator <input name="operator" size="10" maxlength="{}"></label> '
                '<label>Token <input type="password" name="token" size="16"></label></form>'
            ).format(MAX_OPERATOR)
        body = _PAGE.format(
            title=_e(self.title),
            base=base,
            poll=int(self.poll * 1000),
            live="0" if _first(query, "live") in ("0", "false") else "1",
            actions="1" if self.actions else "0",
            labels=_e(json.dumps(labels, ensure_ascii=False)),
            size=size,
            source=_e(document["source"]),
            mode="actions enabled" if self.actions else "read-only",
            updated=_e(_clock_time(document["read_at"])),
            search=_e(search),
            operator=operator,
            banner=_e(_banner(document)),
            banner_hidden=" hidden" if document["available"] else "",
            tiles=tiles,
            empty_hidden=(
                " hidden"
                if any(_matches(entry["name"], search) for entry in document["breakers"])
                else ""
            ),
            template=_tile_html(_EMPTY_ENTRY, size, self.actions, True),
            version=_e(cbsync.__version__),
        )
        return "200 OK", [("Content-Type", "text/html; charset=utf-8")], body.encode("utf-8")

    def _act(self, action: str, environ: Environ) -> "_Reply":
        who = _who(environ)
        if self._token is None:
            logger.warning(
                "cbsync dashboard: refused a %s from %s: the dashboard is read-only", action, who
            )
            return _json_reply(
                "403 Forbidden",
                {"error": "the dashboard is read-only: start it with a token to enable actions"},
            )
        given = _bearer(environ)
        if given is None or not hmac.compare_digest(given, self._token):
            logger.warning(
                "cbsync dashboard: refused a %s from %s: wrong or missing token", action, who
            )
            return _json_reply(
                "403 Forbidden",
                {"error": "send the operator token: Authorization: Bearer <token>"},
            )
        media = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return _json_reply(
                "415 Unsupported Media Type", {"error": "send a JSON body (application/json)"}
            )
        try:
            request = _read_json(environ)
        except ValueError as exc:
            return _json_reply("400 Bad Request", {"error": str(exc)})
        name = request.get("name")
        reason = request.get("reason") or "dashboard"
        operator = request.get("operator")
        if not isinstance(name, str) or not name:
            return _json_reply("400 Bad Request", {"error": '"name" must be a non-empty string'})
        if not isinstance(reason, str):
            return _json_reply("400 Bad Request", {"error": '"reason" must be a string'})
        if isinstance(operator, str) and operator.strip():
            who = "{} ({})".format(_printable(operator.strip()[:MAX_OPERATOR]), who)
        try:
            state = self._view.act(action, name, reason)
        except KeyError:
            return _json_reply(
                "404 Not Found",
                {
                    "error": "no breaker named {!r}{}".format(
                        name, did_you_mean(name, self._view.names())
                    )
                },
            )
        except self._unavailable() as exc:
            logger.warning(
                "cbsync dashboard: %s could not %s breaker %s: %s",
                who,
                action,
                _printable(name),
                exc,
            )
            return _json_reply("503 Service Unavailable", {"error": str(exc)})
        where = " in every process" if self._view.fleet else ""
        logger.warning(
            "cbsync dashboard: %s %s breaker %s%s%s; now %s",
            who,
            "tripped" if action == "trip" else "reset",
            _printable(name),
            where,
            " (reason {})".format(_printable(reason)) if action == "trip" else "",
            state.value,
        )
        return _json_reply("200 OK", {"name": name, "action": action, "state": state.value})

    def _unavailable(self) -> Tuple[Type[BaseException], ...]:
        return self._view._errors if isinstance(self._view, _FleetView) else (OSError,)

    def __repr__(self) -> str:
        return "<cbsync Dashboard of {} ({})>".format(
            self._view.description, "actions enabled" if self.actions else "read-only"
        )


_Reply = Tuple[str, List[Tuple[str, str]], bytes]

_SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]


def _json_reply(status: str, document: Any) -> _Reply:
    body = json.dumps(document, allow_nan=False, ensure_ascii=False).encode("utf-8")
    return (
        status,
        [("Content-Type", "application/json; charset=utf-8"), ("Cache-Control", "no-store")],
        body,
    )


def _not_allowed(allow: str) -> _Reply:
    status, headers, body = _json_reply("405 Method Not Allowed", {"error": "use " + allow})
    return status, [*headers, ("Allow", allow)], body


def _asset(name: str) -> _Reply:
    with open(os.path.join(_STATIC, name), "rb") as asset:
        body = asset.read()
    return (
        "200 OK",
        [("Content-Type", _ASSETS[name]), ("Cache-Control", "no-cache")],
        body,
    )


def _first(query: Mapping[str, List[str]], key: str) -> str:
    values = query.get(key)
    return values[0] if values else ""


def _base(environ: Environ) -> str:
    """Where the dashboard is mounted: its URLs start with this."""
    return urllib.parse.quote(environ.get("SCRIPT_NAME", "").rstrip("/"), safe="/%")


def _bearer(environ: Environ) -> Optional[bytes]:
    header: str = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    # WSGI gives headers as latin-1 text; the token's own bytes come back this way.
    return credentials.strip().encode("latin-1", "replace")


def _read_json(environ: Environ) -> Dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ValueError("bad Content-Length") from None
    if not 0 < length <= MAX_BODY:
        raise ValueError("send a JSON body of at most {} bytes".format(MAX_BODY))
    data = environ["wsgi.input"].read(length)
    try:
        request: object = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(request, dict):
        raise ValueError('send a JSON object: {"name": "<breaker>"}')
    return request


def _printable(text: str) -> str:
    # Names come from requests: never let one forge a log line.
    return repr(text)


def _who(environ: Environ) -> str:
    who = "{} from {}".format(
        _printable(environ["REMOTE_USER"]) if environ.get("REMOTE_USER") else "someone",
        environ.get("REMOTE_ADDR") or "an unknown address",
    )
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded:
        who += " (forwarded for {})".format(_printable(forwarded[:200]))
    return who


def _request_line(environ: Environ) -> str:
    return "{} {}{}".format(
        environ.get("REQUEST_METHOD", "?"),
        environ.get("SCRIPT_NAME", ""),
        environ.get("PATH_INFO", ""),
    )


def _banner(document: Mapping[str, Any]) -> str:
    if document["available"]:
        return ""
    since = document["unavailable_since"]
    text = "Fleet state unavailable since {} UTC ({})".format(
        _clock_time(since) if since else "?", document["error"]
    )
    if document["read_at"]:
        text += "; showing the state read at {} UTC".format(_clock_time(document["read_at"]))
    return text + "."


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="{base}/static/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{base}/static/dashboard.css">
<script src="{base}/static/dashboard.js" defer></script>
</head>
<body data-api="{base}/api" data-poll="{poll}" data-live="{live}" data-actions="{actions}" \
data-labels="{labels}" data-size="{size}">
<header class="top">
<h1>{title}</h1>
<p class="source">{source} &middot; {mode} &middot; \
updated <time data-field="updated">{updated}</time> UTC</p>
<form class="filter" role="search" method="get"><label>Filter \
<input type="search" name="q" value="{search}" autocomplete="off" spellcheck="false">\
</label></form>
{operator}
</header>
<p class="banner" role="alert" data-field="banner"{banner_hidden}>{banner}</p>
<p class="notice" role="status" data-field="notice"></p>
<main class="tiles">
{tiles}
</main>
<p class="empty" data-field="empty"{empty_hidden}>No breakers to show.</p>
<template id="tile-template">{template}</template>
<footer>cbsync {version} &middot; the same data as JSON: \
<a href="{base}/api/breakers">api/breakers</a></footer>
</body>
</html>
"""


# -- mounting and serving ----------------------------------------------------------


def mount(app: WSGIApp, prefix: str, dashboard: WSGIApp) -> WSGIApp:
    """A WSGI application serving ``dashboard`` under ``prefix`` and the rest with ``app``.

    What werkzeug's ``DispatcherMiddleware`` does, for applications without
    werkzeug (a Django project's ``wsgi.py``)::

        application = mount(get_wsgi_application(), "/ops/breakers", Dashboard())
    """
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.rstrip("/") == "":
        raise ConfigError("prefix={!r} must be a path such as '/ops/breakers'".format(prefix))
    prefix = prefix.rstrip("/")

    def dispatch(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == prefix or path.startswith(prefix + "/"):
            environ = dict(environ)
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
            environ["PATH_INFO"] = path[len(prefix) :]
            return dashboard(environ, start_response)
        return app(environ, start_response)

    return dispatch


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # an open page never keeps the process alive

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser closing its connection mid-answer is no error worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        logger.exception("cbsync dashboard: error serving %s", client_address)


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("cbsync dashboard: %s " + format, self.address_string(), *args)


class DashboardServer:
    """A threaded ``wsgiref`` server for one WSGI application (a :class:`Dashboard`).

    ``port=0`` takes a free port; :attr:`url` says where it listens.
    :meth:`start` serves from a daemon thread, :meth:`serve_forever` from the
    calling one; :meth:`close` stops serving and closes the socket.
    """

    def __init__(self, app: WSGIApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError("cannot listen on {}:{}: {}".format(host, port, exc)) from exc
        self._server.set_app(app)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: Optional[threading.Thread] = None
        self._serving = False

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        host = "[{}]".format(self.host) if ":" in self.host else self.host
        return "http://{}:{}/".format(host, self.port)

    def start(self) -> "DashboardServer":
        """Serve from a daemon thread; return self."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="cbsync-dashboard", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`close` (from another thread) or an exception."""
        self._serving = True
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._serving = False

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        if self._serving or (self._thread is not None and self._thread.is_alive()):
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._server.server_close()

    def __repr__(self) -> str:
        return "<cbsync DashboardServer {}>".format(self.url)


def start_server(
    dashboard: Optional[WSGIApp] = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> DashboardServer:
    """Serve ``dashboard`` (default: a read-only :class:`Dashboard` of
    ``cbsync.registry``) from a daemon thread of this process; return the
    server (``.url``, ``.close()``)."""
    return DashboardServer(dashboard if dashboard is not None else Dashboard(), host, port).start()


# -- cbsync dashboard ------------------------------------------------------------


def add_dashboard(subparsers: SubParsers) -> None:
    """Add ``cbsync dashboard`` to the command line."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve a live dashboard of the breakers shared through Redis, in the browser",
        description=(
            "Serve a web page showing every breaker live: state, reason, retry countdown, "
            "rates, p99 latency, a sparkline and recent transitions.  With --redis it "
            "shows the breakers a fleet shares through Redis (without, this command's own "
            "process has no breakers: mount cbsync.integrations.dashboard.Dashboard in "
            "your application instead).  Trip and reset buttons only with --token (or ${}); "
            "read-only otherwise.  Ctrl-C stops it.".format(TOKEN_ENV)
        ),
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default: %(default)s, this host only)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="port to listen on; 0 takes a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get(REDIS_URL_ENV),
        help="show the fleet's breakers on this Redis, e.g. redis://localhost:6379/0 "
        "(default: ${})".format(REDIS_URL_ENV),
    )
    parser.add_argument(
        "--prefix",
        default="cbsync:",
        help="the key prefix the applications' RedisStore uses (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help="enable the trip and reset buttons for whoever gives this token (default: "
        "${}; prefer the variable: a command line is visible to other users)".format(TOKEN_ENV),
    )
    parser.add_argument("--title", default="cbsync breakers", help="the page's title")
    parser.set_defaults(run=run_dashboard)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a port number".format(text)) from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("{!r} must be between 0 and 65535".format(text))
    return port


def _fleet_store(args: argparse.Namespace) -> Optional["RedisStore"]:
    if not args.redis:
        return None
    try:
        from .redis import RedisStore
    except ImportError as exc:
        raise ConfigError(
            "--redis needs the redis package: pip install 'cbsync[redis]' ({})".format(exc)
        ) from exc
    return RedisStore(args.redis, prefix=args.prefix)


def run_dashboard(
    args: argparse.Namespace,
    out: Optional[TextIO] = None,
    started: Optional[Callable[[DashboardServer], None]] = None,
) -> int:
    """``cbsync dashboard``: serve until Ctrl-C (or until the server is closed);
    ``started`` is called with the server once it listens."""
    out = out if out is not None else sys.stdout
    store = _fleet_store(args)
    try:
        dashboard = Dashboard(store=store, token=args.token or None, title=args.title)
        server = DashboardServer(dashboard, args.host, args.port)
        out.write(
            "cbsync dashboard: {} on {} ({}); Ctrl-C stops it\n".format(
                dashboard.description,
                server.url,
                "trip and reset enabled with the token" if dashboard.actions else "read-only",
            )
        )
        if store is None:
            out.write(
                "cbsync dashboard: no --redis given: this process has no breakers of its own; "
                "mount Dashboard() in your application to see its breakers\n"
            )
        if args.host not in ("127.0.0.1", "::1", "localhost"):
            out.write(
                "cbsync dashboard: listening beyond this host: anyone who reaches {} can "
                "read the breakers' names and state\n".format(server.url)
            )
        out.flush()
        if started is not None:
            started(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            dashboard.close()
    finally:
        if store is not None:
            store.close()
    return 0
