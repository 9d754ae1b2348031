"""Shared breaker state on Redis: many processes and hosts agree on a breaker.

``RedisStore(client_or_url, *, prefix="cbsync:", sync_interval=0.25)`` is
given to a breaker (``CircuitBreaker(..., store=store)``) or to a registry
(``Registry(store=store)``), and every breaker bound to it shares its state
with the breakers of the same name in every process using the same Redis
database and prefix::

    from cbsync.integrations.redis import RedisStore

    store = RedisStore("redis://redis.internal:6379/0")
    registry = cbsync.Registry(store=store)

What it costs a call
--------------------
Nothing, in CLOSED: a call makes no Redis round trip.  Outcomes are counted
locally and flushed as deltas every ``sync_interval`` by one background thread
per store (daemon, started with the first call of a bound breaker, restarted
in a forked child), which sends every bound breaker in one pipelined round
trip.  The same round trip brings back each breaker's fleet-wide counts and
state.  A CLOSED breaker judges the fleet's counts: the window of the last
sync plus what it has not flushed yet, so failures spread over processes open
the circuit for all of them.

The fleet's counts are as fresh as the last sync: a process opens on what it
knew then plus its own unflushed calls, and the flush that takes the fleet
over a threshold opens the circuit in Redis (the other processes follow at
their next sync).  A process's calls before its first sync are decided on
local state.  A forked child's counts start at the fork (under uWSGI, whose
fork runs no Python hook, at the child's first call that takes the
breaker's lock: lock-free successes before it are not flushed), so the
child flushes what it counted and never what its parent did.

One thing only goes to Redis from a caller's thread, and never in CLOSED:
asking for a trial permit once an OPEN period is over or while HALF_OPEN (one
script call).  Permits are fleet-wide leases that expire
(``max(LEASE_FLOOR, 8 * sync_interval)``, renewed while the call runs), so a
process that dies during a trial call cannot keep the circuit half-open; a
permit is given back at the next sync after its call ends.  The breaker's lock
is never held during Redis I/O.

How processes agree
-------------------
Every transition -- open, half-open, close, trip, reset -- is a Lua script
doing compare-and-set on the breaker's version number, so exactly one process
performs it; the others learn of it within ``sync_interval`` and report it
with reason kind ``"remote"`` (value: that process's reason), or, for a trip,
``FORCED_OPEN`` with kind ``"manual"``.  A process that reaches a threshold
opens its own breaker at once (it does not wait for Redis) and then publishes
the transition; if another process published first, it keeps its own reason
and takes the fleet's OPEN period.  OPEN periods are measured on the Redis
server's clock (``TIME``), so hosts need not agree on the time; a breaker's
``retry_after`` is that period mapped onto its own clock.  ``trip()`` and
``reset()`` on any bound breaker act on the whole fleet, as do ``cbsync trip``
and ``cbsync reset``.  ``disable()`` stays local: a DISABLED breaker ignores
the fleet's state (its outcomes are still counted), and its ``reset()``
re-enables it alone -- it adopts the fleet's state at the next sync instead
of closing the breaker everywhere.

When Redis is down or slow
--------------------------
Given a URL, the store builds its own client with no retries and short
socket timeouts (:data:`SOCKET_TIMEOUT`; redis-py's defaults retry for
seconds).  Given a client, the store uses it as it is -- configure its
``socket_timeout``, ``socket_connect_timeout`` and ``retry`` yourself: a
trial-permit request waits as long as that client does.  In both cases no
Redis error ever reaches a caller: breakers go on deciding on local state (a
breaker still opens on its own failures), the store logs one WARNING on logger
``cbsync`` per outage and retries with backoff (from ``sync_interval``
doubling to :data:`MAX_BACKOFF`), and when Redis answers again the breakers
resynchronise: transitions made meanwhile are published (compare-and-set
against the version they last saw, so a reset done elsewhere wins), counts
made meanwhile stay local, and a Redis that lost its data is given back each
breaker's state.  A Redis error that concerns one breaker's keys (such as
``WRONGTYPE``, when another program wrote a key under the prefix) is no
outage: that breaker decides on local state and is logged (WARNING, at most
once per :data:`ERROR_LOG_INTERVAL`), the others go on syncing.  A store
whose background thread cannot be started ("can't start new thread") logs
one WARNING and tries again with backoff; meanwhile nothing is synced in the
background (``sync()`` still works) and no call ever fails for it.

Keys
----
Everything lives under ``prefix``; breaker names are percent-escaped
(``urllib.parse.quote``), so any name is one key segment.  Per breaker:
``<prefix>s:<name>`` (state hash), ``<prefix>w:<name>`` (window: counts per
time bucket), ``<prefix>l:<name>`` (trial leases); and ``<prefix>idx`` lists
the breakers in use.  Every key has an expiry, refreshed while a process uses
the breaker: the window expires one span after its last call, the state one
day after no process synced it.  All processes sharing a breaker name should
give it the same configuration (the fleet window's span is the
``failure_window``; a count-based window is approximated by the same time
buckets, capped at ``window_size`` calls).  Redis Cluster is not supported.
"""

import datetime
import hashlib
import itertools
import json
import logging
import math
import os
import random
import socket
import threading
import time
import urllib.parse
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from cbsync import CircuitBreakerConfig, ConfigError, State, TransitionReason
from cbsync.stores import BreakerHandle, LocalTransition, RemoteState, StoreBinding, TrialVerdict
from cbsync.toolkit import ForkGuard, parse_duration

__all__ = ["FleetBreaker", "FleetStatus", "RedisStore"]

logger = logging.getLogger("cbsync")

#: Socket and connect timeout of the client a store builds from a URL, seconds.
SOCKET_TIMEOUT = 0.5
#: Longest wait between two reconnection attempts, seconds.
MAX_BACKOFF = 5.0
#: A breaker's state key outlives the last process using it by this long (seconds).
KEY_TTL = 86400.0
#: A HALF_OPEN trial lease lasts ``max(LEASE_FLOOR, 8 * sync_interval)`` seconds,
#: renewed every sync while its call runs: a dead holder frees it that fast.
LEASE_FLOOR = 1.0
#: Time buckets of the fleet's window (as many as a local time-based window has).
TIME_BUCKETS = 20
#: Bounds of ``sync_interval``, seconds.
MIN_SYNC_INTERVAL = 0.01
MAX_SYNC_INTERVAL = 60.0

_ERRORS = (RedisError, OSError)
#: Error codes of replies that concern the server, not one breaker's keys.
_SERVER_WIDE_CODES = frozenset(
    ("BUSY", "MISCONF", "MASTERDOWN", "CLUSTERDOWN", "LOADING", "NOREPLICAS", "UNKILLABLE")
)
#: A breaker whose Redis keys keep failing is logged at most this often (seconds).
ERROR_LOG_INTERVAL = 60.0
_STATES = {state.value: state for state in State}

# -- Lua -------------------------------------------------------------------------
#
# KEYS of every script: state hash S, window hash W, lease zset L, index IDX.
# State fields: ep (epoch: the hash's creation time, so a Redis that lost its
# data is told from an old version), v (version), st, up (end of OPEN, server
# ms), rk/rv (the state's reason kind / JSON value), tk/tv (the last
# transition's), org (who performed it), ro (reopen count), ts (trial
# successes), at (when, server ms).  Window fields: c<b>/f<b>/s<b> (calls,
# failures, slow calls of time bucket b) and cf (consecutive failures).
# Replies: ep, v, st, remaining ms (-1 unless OPEN), rk, rv, tk, tv, org, ro,
# ts, at, now, then the script's own values.

_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local S, W, L, IDX = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local T = redis.call('TIME')
local now = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local FIELDS = {'ep', 'v', 'st', 'up', 'rk', 'rv', 'tk', 'tv', 'org', 'ro', 'ts', 'at'}

local function load(create)
  local r = redis.call('HMGET', S, unpack(FIELDS))
  local s = {}
  for i, f in ipairs(FIELDS) do s[f] = r[i] end
  if not s.ep then
    if not create then return nil end
    s = {ep = T[1] .. '.' .. T[2], v = 0, st = 'closed', up = 0, rk = '', rv = '',
         tk = '', tv = '', org = '', ro = 0, ts = 0, at = now}
    redis.call('HSET', S, 'ep', s.ep, 'v', 0, 'st', 'closed', 'up', 0, 'rk', '', 'rv', '',
               'tk', '', 'tv', '', 'org', '', 'ro', 0, 'ts', 0, 'at', now)
  end
  s.v = tonumber(s.v)
  s.up = tonumber(s.up) or 0
  s.ro = tonumber(s.ro) or 0
  s.ts = tonumber(s.ts) or 0
  s.at = tonumber(s.at) or 0
  return s
end

local function set_state(s, st, rk, rv, tk, tv, org, up, ro)
  s.v = s.v + 1
  s.st, s.rk, s.rv, s.tk, s.tv, s.org, s.up, s.ro, s.ts, s.at =
    st, rk, rv, tk, tv, org, up, ro, 0, now
  redis.call('HSET', S, 'v', s.v, 'st', st, 'up', up, 'rk', rk, 'rv', rv, 'tk', tk,
             'tv', tv, 'org', org, 'ro', ro, 'ts', 0, 'at', now)
  -- Trial leases belong to one HALF_OPEN period; a closed circuit starts a new window.
  redis.call('DEL', L)
  if st == 'closed' then redis.call('DEL', W) end
end

local function reply(s, extra)
  local remaining = -1
  if s.st == 'open' then remaining = math.max(0, s.up - now) end
  local out = {s.ep, s.v, s.st, remaining, s.rk, s.rv, s.tk, s.tv, s.org, s.ro, s.ts,
               s.at, now}
  for _, x in ipairs(extra) do out[#out + 1] = x end
  return out
end

local function window(bw, nb, prune)
  local cur = math.floor(now / bw)
  local c, f, sl, cf = 0, 0, 0, 0
  local flat = redis.call('HGETALL', W)
  local stale = {}
  for i = 1, #flat, 2 do
    local k = flat[i]
    if k == 'cf' then
      cf = tonumber(flat[i + 1])
    else
      local b = tonumber(string.sub(k, 2))
      if b and b > cur - nb then
        local n = tonumber(flat[i + 1])
        local kind = string.sub(k, 1, 1)
        if kind == 'c' then c = c + n elseif kind == 'f' then f = f + n else sl = sl + n end
      elseif b then
        stale[#stale + 1] = k
      end
    end
  end
  if prune and #stale > 0 then redis.call('HDEL', W, unpack(stale)) end
  return c, f, sl, cf
end

local function touch(name, key_ttl)
  redis.call('PEXPIRE', S, key_ttl)
  redis.call('ZADD', IDX, now, name)
  redis.call('PEXPIRE', IDX, key_ttl)
  redis.call('ZREMRANGEBYSCORE', IDX, '-inf', now - key_ttl)
end
"""

# ARGV: name, org, dc, df, ds, had_success, trailing, bw, nb, cap, fthr, rthr,
# minc, sthr, period_ms, success_threshold, ts_n, ts_ep, ts_v, lease_ttl,
# key_ttl, nrel, <nrel lease ids to release>, <lease ids to renew>.
# Extra reply: calls, failures, slow, consecutive failures (the fleet's).
_SYNC = (
    _PRELUDE
    + """
local function rate(x) return tostring(math.floor(x * 10000 + 0.5) / 10000) end
local s = load(true)
local org = ARGV[2]
local dc, df, ds = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local bw, nb, cap = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local lease_ttl, key_ttl = tonumber(ARGV[20]), tonumber(ARGV[21])
if dc > 0 then
  local b = math.floor(now / bw)
  redis.call('HINCRBY', W, 'c' .. b, dc)
  if df > 0 then redis.call('HINCRBY', W, 'f' .. b, df) end
  if ds > 0 then redis.call('HINCRBY', W, 's' .. b, ds) end
  if ARGV[6] == '1' then
    redis.call('HSET', W, 'cf', ARGV[7])
  elseif df > 0 then
    redis.call('HINCRBY', W, 'cf', df)
  end
  redis.call('PEXPIRE', W, bw * (nb + 2))
  redis.call('HSET', S, 'bw', bw, 'nb', nb, 'cap', cap)
end
local c, f, sl, cf = window(bw, nb, dc > 0)
local nrel = tonumber(ARGV[22])
for i = 23, 22 + nrel do redis.call('ZREM', L, ARGV[i]) end
if #ARGV > 22 + nrel then
  for i = 23 + nrel, #ARGV do redis.call('ZADD', L, 'XX', now + lease_ttl, ARGV[i]) end
  redis.call('PEXPIRE', L, lease_ttl * 2)
end
local tsn = tonumber(ARGV[17])
if tsn > 0 and s.st == 'half_open' and s.ep == ARGV[18] and s.v == tonumber(ARGV[19]) then
  s.ts = s.ts + tsn
  if s.ts >= tonumber(ARGV[16]) then
    local n = tostring(s.ts)
    set_state(s, 'closed', 'trial_successes', n, 'trial_successes', n, org, 0, 0)
    c, f, sl, cf = 0, 0, 0, 0
  else
    redis.call('HSET', S, 'ts', s.ts)
  end
end
-- The flush that takes the fleet's counts over a threshold opens the circuit.
if dc > 0 and s.st == 'closed' then
  local fthr, rthr = tonumber(ARGV[11]), tonumber(ARGV[12])
  local minc, sthr = tonumber(ARGV[13]), tonumber(ARGV[14])
  local kind, value
  local calls = c
  if cap > 0 and calls > cap then calls = cap end
  if fthr > 0 and cf >= fthr then
    kind, value = 'consecutive_failures', tostring(cf)
  elseif c > 0 and calls >= minc then
    if rthr > 0 and f / c >= rthr then
      kind, value = 'failure_rate', rate(f / c)
    elseif sthr > 0 and sl / c >= sthr then
      kind, value = 'slow_call_rate', rate(sl / c)
    end
  end
  if kind then
    set_state(s, 'open', kind, value, kind, value, org, now + tonumber(ARGV[15]), s.ro)
  end
end
touch(ARGV[1], key_ttl)
return reply(s, {c, f, sl, cf})
"""
)

# ARGV: name, org, mode ('cas' or 'force'), expected ep, expected v (-1, or a
# hash at version 0: any version whose state is the expected from-state),
# from-state, new state, rk, rv, tk, tv, remaining ms (OPEN), reopen count
# (-1: keep), key_ttl.
# Extra reply: 1 if this call made the transition.
_TRANSITION = (
    _PRELUDE
    + """
local s = load(true)
local ok
if ARGV[3] == 'force' then
  ok = true
elseif tonumber(ARGV[5]) < 0 or s.v == 0 then
  -- No expected version, or a hash no process ever moved (new, or Redis lost
  -- its data since the version was seen): nothing to lose a race to.
  ok = s.st == ARGV[6]
else
  ok = s.ep == ARGV[4] and s.v == tonumber(ARGV[5])
end
if ok then
  local up = 0
  if ARGV[7] == 'open' then up = now + tonumber(ARGV[12]) end
  local ro = tonumber(ARGV[13])
  if ro < 0 then ro = s.ro end
  set_state(s, ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[2], up, ro)
end
touch(ARGV[1], tonumber(ARGV[14]))
if ok then return reply(s, {1}) end
return reply(s, {0})
"""
)

# ARGV: name, org, lease id, half_open_max_calls, lease_ttl, key_ttl.
# Extra reply: 1 if the lease was granted.
_ACQUIRE = (
    _PRELUDE
    + """
local s = load(true)
if s.st == 'open' and now >= s.up then
  set_state(s, 'half_open', s.rk, s.rv, 'open_period_elapsed', '', ARGV[2], 0, s.ro)
end
local granted = 0
if s.st == 'half_open' then
  local ttl = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', L, '-inf', now)
  if redis.call('ZCARD', L) < tonumber(ARGV[4]) then
    redis.call('ZADD', L, now + ttl, ARGV[3])
    redis.call('PEXPIRE', L, ttl * 2)
    granted = 1
  end
end
touch(ARGV[1], tonumber(ARGV[6]))
return reply(s, {granted})
"""
)

# Read only.  Extra reply: calls, failures, slow, consecutive failures, trial
# calls holding a lease, bucket width ms, buckets, count cap; {} if unknown.
_STATUS = (
    _PRELUDE
    + """
local s = load(false)
if not s then return {} end
local conf = redis.call('HMGET', S, 'bw', 'nb', 'cap')
local bw, nb, cap = tonumber(conf[1]), tonumber(conf[2]), tonumber(conf[3]) or 0
local c, f, sl, cf = 0, 0, 0, 0
if bw and nb then c, f, sl, cf = window(bw, nb, false) end
local leases = redis.call('ZCOUNT', L, '(' .. now, '+inf')
return reply(s, {c, f, sl, cf, leases, bw or 0, nb or 0, cap})
"""
)

#: Scripts sent by EVALSHA in the background rounds, and their digests.
_PIPELINED = (_SYNC, _TRANSITION)
_SHA = {source: hashlib.sha1(source.encode("utf-8")).hexdigest() for source in _PIPELINED}


def _escape(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _encode(value: object) -> str:
    return json.dumps(value)


def _decode(text: str) -> Union[int, float, str, None]:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if value is None or isinstance(value, (int, float, str)):
        return value
    return text


def _reason(kind: object, value: object) -> TransitionReason:
    return TransitionReason(_text(kind) or "unknown", _decode(_text(value)))  # type: ignore[arg-type]


def _capped(calls: int, failures: int, slow: int, cap: int) -> Tuple[int, int, int]:
    """``(calls, failures, slow)`` of a count-based window of ``cap`` calls (0: no cap).

    The fleet's window is made of time buckets; a count-based breaker judges
    at most its ``window_size`` latest calls, approximated by scaling the
    failures and slow calls down in proportion.
    """
    if cap and calls > cap:
        return cap, round(failures * cap / calls), round(slow * cap / calls)
    return calls, failures, slow


def _per_breaker(exc: BaseException) -> bool:
    """Whether a Redis error concerns one breaker's keys, not the server as a whole.

    A plain error reply (``WRONGTYPE`` on a key some other program wrote under
    the prefix, a script error on data it cannot read) is that breaker's
    problem; connection errors, timeouts and the replies redis-py gives a class
    of their own (``READONLY``, ``OOM``, ``NOPERM``, ``NOSCRIPT``...) or that
    say the server is unwell (``BUSY``, ``MISCONF``...) concern every breaker.
    """
    if type(exc) is not ResponseError:
        return False
    code = str(exc).split(" ", 1)[0]
    return code not in _SERVER_WIDE_CODES


class _Reply(NamedTuple):
    remote: RemoteState
    origin: str
    trial_successes: int
    changed_at: int
    now: int
    extra: List[int]


def _parse(reply: Sequence[Any], origin: str) -> _Reply:
    remaining = int(reply[3])
    org = _text(reply[8])
    remote = RemoteState(
        state=_STATES[_text(reply[2])],
        reason=_reason(reply[4], reply[5]),
        cause=_reason(reply[6], reply[7]),
        remaining=remaining / 1000.0 if remaining >= 0 else None,
        reopen_count=int(reply[9]),
        mine=org == origin,
        version=(_text(reply[0]), int(reply[1])),
    )
    return _Reply(
        remote, org, int(reply[10]), int(reply[11]), int(reply[12]), [int(x) for x in reply[13:]]
    )


def _where(client: Any) -> str:
    """The server a client talks to, for people: never credentials."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return "unix://{}?db={}".format(kwargs["path"], kwargs.get("db", 0))
    return "redis://{}:{}/{}".format(
        kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    )


class FleetStatus(NamedTuple):
    """One breaker as Redis holds it, for operators (:meth:`RedisStore.fleet_status`).

    ``reason`` is why the fleet is in ``state`` (kind ``"unknown"`` for a
    breaker that never changed state); ``window_*`` describe the
    fleet's window (``None`` rates when it is empty); ``trial_calls`` counts
    live HALF_OPEN leases; ``changed_at`` is when the last transition happened
    (server time, UTC) and ``changed_by`` which process performed it
    (``host:pid:random``, or ``cli:host:pid``).
    """

    name: str
    state: State
    reason: TransitionReason
    retry_after: Optional[float]
    window_calls: int
    window_failure_rate: Optional[float]
    window_slow_call_rate: Optional[float]
    consecutive_failures: int
    trial_calls: int
    changed_at: Optional[datetime.datetime]
    changed_by: str


#: The name :class:`FleetStatus` had: it is a status row, not a breaker.
FleetBreaker = FleetStatus


class _Pub:
    """A local transition waiting to be published."""

    __slots__ = ("cause", "from_state", "mode", "new", "reason", "reopen", "until")

    def __init__(self, transition: LocalTransition) -> None:
        self.new = transition.new
        reset = transition.cause.kind == "reset"
        #: "force" always wins (trip and reset); "cas" only from the version seen.
        self.mode = "force" if transition.new is State.FORCED_OPEN or reset else "cas"
        self.from_state = transition.old
        self.cause = transition.cause
        self.reason = transition.reason
        self.until = transition.until
        self.reopen = transition.reopen_count


class _Work(NamedTuple):
    """What one binding sends in one round, collected under its breaker's lock."""

    binding: "_Binding"
    totals: Tuple[int, int, int]
    rebases: int
    pub: Optional[_Pub]
    pub_args: List[object]
    sync_args: List[object]
    releases: List[str]
    trial_successes: int
    trial_version: Optional[Tuple[str, int]]


class _Binding(StoreBinding):
    """One breaker's link to a :class:`RedisStore`.

    Every attribute but ``shared`` and ``refusing`` is read and written with
    the breaker's lock held (by the breaker's hooks, or through
    ``handle.synchronise``); Redis is only ever called without it.
    """

    def __init__(self, store: "RedisStore", handle: BreakerHandle) -> None:
        self._store = store
        #: The breaker, as a store sees it (held weakly by the handle).
        self.handle = handle
        self.name = handle.name
        escaped = _escape(handle.name)
        prefix = store.prefix
        self.escaped = escaped
        self.keys = (prefix + "s:" + escaped, prefix + "w:" + escaped, prefix + "l:" + escaped)
        self.reconfigured(handle.config)
        #: The fleet's version this breaker's state corresponds to.
        self._version: Optional[Tuple[str, int]] = None
        #: The fleet's (calls, failures, slow, consecutive) at the last sync.
        self._fleet = (0, 0, 0, 0)
        #: The breaker's (calls, failures, slow) totals already flushed.
        self._marks = (0, 0, 0)
        #: Counts made while Redis was unreachable stay local: skip them.
        self._rebase = False
        #: The process whose counts ``_marks`` are (see _mark_fork()).
        self._pid = os.getpid()
        #: Bumped whenever a close or reset starts a new window (see apply()).
        self._rebases = 0
        self._pubs: List[_Pub] = []
        self._leases: List[str] = []
        self._releases: List[str] = []
        self._trial_successes = 0
        self._trial_version: Optional[Tuple[str, int]] = None
        self.shared = False
        #: The fleet refused a trial permit since the last sync: refuse without asking.
        self.refusing = False
        #: When an error of this breaker's own keys was last logged (monotonic).
        self._error_logged = -math.inf

    @property
    def alive(self) -> bool:
        return self.handle.alive

    # -- hooks called by the breaker (lock held, no I/O) ------------------------

    def reconfigured(self, config: CircuitBreakerConfig) -> None:
        """What the scripts send of the configuration (also at bind time)."""
        self._bucket_ms = max(1, int(config.failure_window * 1000 / TIME_BUCKETS))
        self._cap = config.window_size if config.window_type == "count_based" else 0
        self._max_calls = config.half_open_max_calls
        self._key_ttl_ms = int(
            max(KEY_TTL, 2 * config.max_timeout, 2 * config.failure_window) * 1000
        )
        self._judge_args: List[object] = [
            config.failure_threshold or 0,
            repr(config.failure_rate_threshold or 0.0),
            config.minimum_calls,
            repr(
                config.slow_call_rate_threshold if config.slow_call_duration is not None else 0.0
            ),
        ]
        self._success_threshold = config.success_threshold

    def judged_counts(
        self, calls: int, failures: int, slow: int, consecutive: int
    ) -> Tuple[int, int, int, int]:
        self._store._ensure_thread()
        if not self.shared:
            return calls, failures, slow, consecutive
        total, total_failures, total_slow, _ = self.handle.totals()
        mark_calls, mark_failures, mark_slow = self._marks
        new_calls = max(0, total - mark_calls)
        new_failures = max(0, total_failures - mark_failures)
        new_slow = max(0, total_slow - mark_slow)
        fleet_calls, fleet_failures, fleet_slow, fleet_consecutive = self._fleet
        calls = fleet_calls + new_calls
        failures = fleet_failures + new_failures
        slow = fleet_slow + new_slow
        if new_calls == new_failures:
            # No success here since the last flush: the fleet's streak goes on.
            consecutive = fleet_consecutive + new_failures
        calls, failures, slow = _capped(calls, failures, slow, self._cap)
        return calls, failures, slow, consecutive

    def changed(self, transition: LocalTransition) -> None:
        released = self._release_leases()
        if transition.new is State.DISABLED:
            # disable() stays local: nothing to publish, only leases to give back.
            if released:
                self._store._wake_up()
            return
        if transition.old is State.DISABLED and transition.new is State.CLOSED:
            self._rejoin()
            self._store._wake_up()
            return
        if transition.new is State.CLOSED:
            self._new_window()
        pub = _Pub(transition)
        if pub.mode == "force":
            # Unconditional: whatever was waiting is superseded.
            self._pubs = [pub]
        elif self._pubs and self._pubs[-1].mode == "cas":
            # Only the latest state matters, compared with the version seen first.
            pub.from_state = self._pubs[-1].from_state
            self._pubs[-1] = pub
        else:
            self._pubs.append(pub)
        self._store._wake_up()

    def forked(self) -> None:
        # The breaker is rebuilt in a forked child, before it counts anything
        # there: under uWSGI (no at-fork hook) this is the child's first locked
        # call, earlier than the store could notice the fork by itself.
        try:
            self._mark_fork()
            self._store._fork.check()
        except Exception:  # never into the call that noticed the fork
            logger.exception("cbsync: breaker %r could not rebuild its Redis link", self.name)

    def _mark_fork(self) -> None:
        """Start this breaker's counts afresh in a forked child (once per process).

        What the parent counted is the parent's to flush, and so are its
        leases, publications and trial successes; what the child counts from
        now on is its own.  Runs from a fork hook (the store's or the
        breaker's), while no thread of the child holds the breaker's lock.
        """
        pid = os.getpid()
        if self._pid == pid:
            return
        self._pid = pid
        if self.handle.alive:
            self._marks = self.handle.totals_at_fork()[:3]
        self._rebase = False
        self.shared = False
        self._pubs = []
        self._leases = []
        self._releases = []
        self._trial_successes = 0

    def _release_leases(self) -> bool:
        """Give back every trial lease this breaker holds; whether it held any (lock held).

        Leases belong to one HALF_OPEN period.  When it ends here (any local
        transition: a trial failure reopening, ``disable()``, ``trip()``...)
        or the fleet moves on, the calls still running are trials no more:
        their outcome will not count as one, so their permits are released now
        rather than when they end (they may never reach ``trial_ended``).
        """
        if not self._leases:
            return False
        self._releases.extend(self._leases)
        self._leases = []
        return True

    def _rejoin(self) -> None:
        """``reset()`` of a DISABLED breaker: take the fleet's state, do not impose ours.

        The breaker is CLOSED here until the next sync, which adopts whatever
        the fleet is in (an OPEN fleet stays OPEN).  Trips waiting to be
        published still are; a local transition made before ``disable()``
        no longer is.  ``reset()`` cleared the counts: flush from zero.
        """
        self._pubs = [pub for pub in self._pubs if pub.mode == "force"]
        self._version = None
        self._new_window()

    def trial_ended(self, success: bool) -> None:
        if self._leases:
            self._releases.append(self._leases.pop())
        if success and self._version is not None:
            if self._trial_version != self._version:
                self._trial_version = self._version
                self._trial_successes = 0
            self._trial_successes += 1
        self._store._wake_up()

    def accept_remote(self, remote: RemoteState) -> bool:
        if self._pubs:
            return False  # this breaker has news of its own to publish first
        known = self._version
        version = remote.version
        state = self.handle.state
        if known is not None and known[0] == version[0] and version[1] <= known[1]:
            # Nothing new; but OPEN periods run on the server's clock: realign ours.
            return version[1] == known[1] and remote.state is State.OPEN and state is State.OPEN
        self._version = version
        # A new version means a new period in Redis, where it already dropped the
        # leases; releasing them again is harmless and never leaves one behind.
        self._release_leases()
        self._trial_successes = 0
        if remote.state is State.CLOSED and known is not None:
            self._new_window()
        # At first contact with both CLOSED there is nothing to change: keep the local window.
        return not (known is None and remote.state is State.CLOSED and state is State.CLOSED)

    def _new_window(self) -> None:
        # A closed circuit starts a new window, here and in Redis: forget the
        # fleet's old counts, and the local ones not flushed yet (lock held).
        self._fleet = (0, 0, 0, 0)
        self._rebases += 1
        self._marks = self.handle.totals()[:3]

    def trial_settled(self, verdict: TrialVerdict, taken: bool) -> None:
        if taken:
            self._leases.append(verdict.lease)
        else:
            self._releases.append(verdict.lease)
            self._store._wake_up()

    # -- trial permits (caller's thread, no lock) -----------------------------------

    def request_trial(self) -> Optional[TrialVerdict]:
        store = self._store
        if not store._usable():
            return None
        handle = self.handle
        if self.refusing or (
            handle.state is State.HALF_OPEN and handle.trial_calls >= self._max_calls
        ):
            return TrialVerdict(False, None, "")
        lease = store._new_lease()
        try:
            reply = store._acquire(self, lease)
            parsed = _parse(reply, store._origin)
        except _ERRORS as exc:
            if _per_breaker(exc):
                self._failed(exc)
            else:
                store._outage(exc)
            return None
        except Exception as exc:  # a reply it cannot read: this breaker's keys
            self._failed(exc)
            return None
        granted = bool(parsed.extra and parsed.extra[0])
        if not granted and parsed.remote.state is State.HALF_OPEN:
            self.refusing = True
        return TrialVerdict(granted, parsed.remote, lease)

    # -- rounds (flusher thread; these run under the breaker's lock) -----------------

    def collect(self) -> _Work:
        """Take what this breaker has to send (lock held)."""
        handle = self.handle
        calls, failures, slow, consecutive = handle.totals()
        if self._rebase:
            self._rebase = False
            self._marks = (calls, failures, slow)
        mark_calls, mark_failures, mark_slow = self._marks
        new_calls = max(0, calls - mark_calls)
        new_failures = max(0, failures - mark_failures)
        new_slow = max(0, slow - mark_slow)
        store = self._store
        pub = self._pubs[0] if self._pubs else None
        pub_args: List[object] = []
        if pub is not None:
            known = self._version
            remaining = 0.0
            if pub.until is not None:
                remaining = max(0.0, pub.until - handle.now())
            pub_args = [
                self.escaped,
                store._origin,
                pub.mode,
                known[0] if known is not None else "",
                known[1] if known is not None else -1,
                pub.from_state.value,
                pub.new.value,
                pub.reason.kind,
                _encode(pub.reason.value),
                pub.cause.kind,
                _encode(pub.cause.value),
                int(remaining * 1000),
                pub.reopen,
                self._key_ttl_ms,
            ]
        releases, self._releases = self._releases, []
        trial_successes, self._trial_successes = self._trial_successes, 0
        trial_version = self._trial_version
        self.refusing = False
        sync_args: List[object] = [
            self.escaped,
            store._origin,
            new_calls,
            new_failures,
            new_slow,
            1 if new_calls > new_failures else 0,
            consecutive,
            self._bucket_ms,
            TIME_BUCKETS,
            self._cap,
            *self._judge_args,
            int(handle.open_period() * 1000),
            self._success_threshold,
            trial_successes,
            trial_version[0] if trial_version is not None else "",
            trial_version[1] if trial_version is not None else -1,
            store._lease_ttl_ms,
            self._key_ttl_ms,
            len(releases),
            *releases,
            *self._leases,
        ]
        return _Work(
            self,
            (calls, failures, slow),
            self._rebases,
            pub,
            pub_args,
            sync_args,
            releases,
            trial_successes,
            trial_version,
        )

    def restore(self, work: _Work) -> None:
        """The round failed: keep what it would have sent (lock held)."""
        self._releases[:0] = work.releases
        if work.trial_successes and work.trial_version == self._trial_version:
            self._trial_successes += work.trial_successes
        self.shared = False

    def apply(
        self, work: _Work, pub_reply: Optional[Sequence[Any]], sync_reply: Sequence[Any]
    ) -> Optional[RemoteState]:
        """Take in a round's answers; return the fleet state to adopt (lock held)."""
        store = self._store
        # Read the replies first: one this breaker cannot read changes nothing.
        synced = _parse(sync_reply, store._origin)
        published = _parse(pub_reply, store._origin) if pub_reply is not None else None
        if work.rebases == self._rebases:
            self._marks = work.totals
        self.shared = not store._closed
        remote = self._settle(work, published, synced)
        if work.rebases == self._rebases:
            # Counts of the window this breaker is in (not one a close ended).
            self._fleet = (synced.extra[0], synced.extra[1], synced.extra[2], synced.extra[3])
        return remote

    def _settle(
        self, work: _Work, published: Optional[_Reply], synced: _Reply
    ) -> Optional[RemoteState]:
        store = self._store
        if work.pub is not None and published is not None:
            if self._pubs and self._pubs[0] is work.pub:
                del self._pubs[0]
            if published.extra and published.extra[0]:
                self._version = published.remote.version
            else:
                # Another process moved first: our later local changes are moot.
                self._pubs = [pub for pub in self._pubs if pub.mode == "force"]
        if self._pubs:
            store._wake_up()
            return None
        remote = synced.remote
        if remote.version[1] == 0:
            # A state no process ever moved: new, or Redis lost its data.
            self._version = remote.version
            handle = self.handle
            if handle.state not in (State.CLOSED, State.DISABLED):
                reason = handle.reason() or TransitionReason("remote")
                self._pubs.append(_Pub(handle.describe(State.CLOSED, reason)))
                store._wake_up()
            return None
        if self.accept_remote(remote):
            return remote
        return None

    def _failed(self, exc: BaseException) -> None:
        """Redis refused this breaker's keys (not the server): log it, rate-limited.

        Any thread; the breaker decides on local state meanwhile, and the other
        breakers of the store are not affected.
        """
        now = time.monotonic()
        if now - self._error_logged < ERROR_LOG_INTERVAL:
            logger.debug("cbsync: breaker %r: Redis error again: %r", self.name, exc)
            return
        self._error_logged = now
        logger.warning(
            "cbsync: breaker %r cannot use its Redis keys %s (%s: %s); it decides on "
            "local state until they work again (is something else writing under the "
            "prefix?); the store's other breakers are not affected",
            self.name,
            ", ".join(self.keys),
            type(exc).__name__,
            exc,
        )


class RedisStore:
    """Shares the state of circuit breakers across processes through Redis.

    ``client_or_url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL (the
    store then builds its own client: no retries, :data:`SOCKET_TIMEOUT`
    second timeouts) or a ``redis.Redis`` client, used as it is.
    ``prefix`` starts every key; ``sync_interval`` (seconds, or a duration
    string such as ``"250ms"``) is how often counts are flushed and the
    fleet's state read back.  Nothing connects until a bound breaker is used:
    the constructor, ``bind()`` and the breaker's constructor do no I/O.

    >>> import cbsync
    >>> from cbsync.integrations.redis import RedisStore
    >>> store = RedisStore("redis://127.0.0.1:6379/0", prefix="shop:cb:")
    >>> payments = cbsync.CircuitBreaker("payments", failure_threshold=5, store=store)
    >>> store.close()

    See the module documentation for the protocol and the outage policy.
    """

    def __init__(
        self,
        client_or_url: Any,
        *,
        prefix: str = "cbsync:",
        sync_interval: Union[float, str, datetime.timedelta] = 0.25,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError("prefix={!r} must be a non-empty string".format(prefix))
        interval = parse_duration("sync_interval", sync_interval)
        if not MIN_SYNC_INTERVAL <= interval <= MAX_SYNC_INTERVAL:
            raise ConfigError(
                "sync_interval={!r} must be between {}s and {}s".format(
                    sync_interval, MIN_SYNC_INTERVAL, MAX_SYNC_INTERVAL
                )
            )
        self._client = _client(client_or_url)
        self._own_client = isinstance(client_or_url, str)
        self.prefix = prefix
        self.sync_interval = interval
        self._where = _where(self._client)
        self._index = prefix + "idx"
        self._sync_script = self._client.register_script(_SYNC)
        self._transition_script = self._client.register_script(_TRANSITION)
        self._acquire_script = self._client.register_script(_ACQUIRE)
        self._status_script = self._client.register_script(_STATUS)
        self._lease_ttl_ms = int(max(LEASE_FLOOR, 8 * interval) * 1000)
        self._bindings: List[_Binding] = []
        self._closed = False
        self._fork = ForkGuard(self._after_fork)
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        # Everything that belongs to one process (rebuilt in a forked child).
        self._lock = threading.Lock()
        self._round_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        #: The thread could not be started: failures in a row, and when to try again.
        self._start_failures = 0
        self._start_retry_at = -math.inf
        self._origin = "{}:{}:{:06x}".format(
            socket.gethostname(), os.getpid(), random.getrandbits(24)
        )
        self._leases = itertools.count()
        self._connected = False
        self._in_outage = False
        self._scripts_loaded = False
        self._backoff = self.sync_interval
        self._retry_at = 0.0
        # Long ago: the first round runs as soon as the thread starts, so a
        # process learns the fleet's state right after its first call.
        self._round_started = -math.inf

    def _after_fork(self) -> None:
        had_thread = self._thread is not None
        self._reset_process_state()
        for binding in list(self._bindings):
            binding._mark_fork()
        if had_thread and not self._closed:
            self._start()

    # -- public API -------------------------------------------------------------------

    def bind(self, breaker: BreakerHandle) -> StoreBinding:
        """Link a breaker to this store (called by the breaker with its
        handle; no I/O)."""
        self._fork.check()
        if self._closed:
            raise ConfigError("{!r} is closed; create a new store".format(self))
        binding = _Binding(self, breaker)
        with self._lock:
            self._bindings.append(binding)
        return binding

    def sync(self) -> bool:
        """Flush counts and exchange states now, in this thread; ``True`` if Redis answered.

        The background thread does this every ``sync_interval``; call it to
        flush before a short-lived process exits, or in tests.  Never raises
        for a Redis error.
        """
        self._fork.check()
        try:
            answered = self._round(force=True)
            for _ in range(3):
                if not answered or not any(binding._pubs for binding in self._live()):
                    break
                answered = self._round(force=True)
        except Exception:
            logger.exception("cbsync: Redis store %r failed a sync round", self)
            return False
        return answered

    def close(self) -> None:
        """Stop the background thread and, if the store built its client, disconnect it.

        Bound breakers go on working on local state.
        """
        self._closed = True
        # In a child forked without at-fork hooks this forgets the parent's
        # thread (it would look alive here, and never end).
        self._fork.check()
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            # (A thread that failed to start is not alive: nothing to wait for.)
            thread.join(timeout=2 * SOCKET_TIMEOUT + 1.0)
        for binding in self._live():
            binding.shared = False
        if self._own_client:
            self._client.connection_pool.disconnect()

    def fleet_status(self) -> List[FleetStatus]:
        """Every breaker in use under the prefix, as Redis holds it, sorted by name.

        One round trip for the names and one pipelined for the states; raises
        ``redis.RedisError`` when Redis cannot answer (this is an operator's
        call, not a breaker's).
        """
        names = sorted(_text(name) for name in self._client.zrange(self._index, 0, -1))
        if not names:
            return []
        pipe = self._client.pipeline(transaction=False)
        for escaped in names:
            self._status_script(keys=self._keys(escaped), args=[], client=pipe)
        result: List[FleetStatus] = []
        for escaped, reply in zip(names, pipe.execute()):
            if reply:
                result.append(self._fleet_breaker(urllib.parse.unquote(escaped), reply))
        return result

    def trip(self, name: str, reason: str = "manual") -> FleetStatus:
        """Force breaker ``name`` open in every process (FORCED_OPEN, reason kind "manual")."""
        return self._force(name, State.FORCED_OPEN, TransitionReason("manual", reason))

    def reset(self, name: str) -> FleetStatus:
        """Close breaker ``name`` in every process and clear its fleet window and backoff."""
        return self._force(name, State.CLOSED, TransitionReason("reset"))

    @property
    def server(self) -> str:
        """The Redis server, for people: ``redis://host:port/db`` (never a password)."""
        return self._where

    def __repr__(self) -> str:
        return "<RedisStore {} prefix={!r}>".format(self._where, self.prefix)

    # -- operator helpers -------------------------------------------------------------

    def _keys(self, escaped: str) -> List[str]:
        prefix = self.prefix
        return [
            prefix + "s:" + escaped,
            prefix + "w:" + escaped,
            prefix + "l:" + escaped,
            self._index,
        ]

    def _force(self, name: str, state: State, reason: TransitionReason) -> FleetStatus:
        if not isinstance(name, str) or not name:
            raise ConfigError("name={!r} must be a non-empty string".format(name))
        escaped = _escape(name)
        origin = "cli:{}:{}".format(socket.gethostname(), os.getpid())
        args: List[object] = [
            escaped, origin, "force", "", -1, "", state.value, reason.kind,
            _encode(reason.value), reason.kind, _encode(reason.value), 0,
            0 if state is State.CLOSED else -1, int(KEY_TTL * 1000),
        ]  # fmt: skip
        self._transition_script(keys=self._keys(escaped), args=args, client=self._client)
        reply = self._status_script(keys=self._keys(escaped), args=[], client=self._client)
        return self._fleet_breaker(name, reply)

    def _fleet_breaker(self, name: str, reply: Sequence[Any]) -> FleetStatus:
        parsed = _parse(reply, "")
        calls, failures, slow, consecutive, leases, _, _, cap = parsed.extra[:8]
        calls, failures, slow = _capped(calls, failures, slow, cap)
        remote = parsed.remote
        return FleetStatus(
            name=name,
            state=remote.state,
            reason=remote.reason,
            retry_after=remote.remaining,
            window_calls=calls,
            window_failure_rate=failures / calls if calls else None,
            window_slow_call_rate=slow / calls if calls else None,
            consecutive_failures=consecutive,
            trial_calls=leases,
            changed_at=(
                datetime.datetime.fromtimestamp(parsed.changed_at / 1000.0, datetime.timezone.utc)
                if parsed.changed_at
                else None
            ),
            changed_by=parsed.origin,
        )

    # -- the background thread and rounds ----------------------------------------------

    def _ensure_thread(self) -> None:
        """Start the background thread unless it runs in this process (never raises).

        Called on a breaker's locked paths, so it must stay cheap: one
        ``os.getpid()`` (a child forked without at-fork hooks, as under uWSGI,
        still holds its parent's thread object: the fork check replaces it)
        and, while no thread runs, one clock reading.
        """
        self._fork.check()
        if self._thread is None and not self._closed and time.monotonic() >= self._start_retry_at:
            self._start()

    def _start(self) -> None:
        """Start the background thread; if the system refuses, log it and retry later.

        Runs in a caller's thread, maybe under a breaker's lock: it never
        raises (a "can't start new thread" must not fail the user's call).
        Until a thread runs, counts stay local and ``sync()`` still works.
        """
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(
                target=_flusher,
                args=(weakref.ref(self), self._wake, self._stop),
                name="cbsync-redis-sync",
                daemon=True,
            )
            # Claimed before it starts, so that two callers never start two threads.
            self._thread = thread
        try:
            thread.start()
        except Exception as exc:  # RuntimeError: can't start new thread
            with self._lock:
                if self._thread is thread:
                    self._thread = None
                self._start_failures += 1
                failures = self._start_failures
                delay = min(self.sync_interval * 2 ** min(failures - 1, 16), MAX_BACKOFF)
                self._start_retry_at = time.monotonic() + delay
            if failures == 1:
                logger.warning(
                    "cbsync: Redis store %r could not start its background sync thread "
                    "(%s: %s); nothing is synced in the background until it starts "
                    "(retrying with backoff)",
                    self,
                    type(exc).__name__,
                    exc,
                )
            else:
                logger.debug("cbsync: Redis store %r still cannot start its thread: %s", self, exc)
            return
        if self._start_failures:
            self._start_failures = 0
            logger.info("cbsync: Redis store %r started its background sync thread", self)

    def _wake_up(self) -> None:
        self._ensure_thread()
        self._wake.set()

    def _next_wait(self) -> float:
        now = time.monotonic()
        if self._in_outage:
            return max(0.0, self._retry_at - now)
        # Fixed rate: a round's own duration does not delay the next one.
        return min(self.sync_interval, max(0.0, self._round_started + self.sync_interval - now))

    def _usable(self) -> bool:
        self._fork.check()
        return self._connected and not self._closed

    def _new_lease(self) -> str:
        return "{}:{}".format(self._origin, next(self._leases))

    def _live(self) -> List[_Binding]:
        with self._lock:
            live = [binding for binding in self._bindings if binding.alive]
            self._bindings = live
        return list(live)

    def _acquire(self, binding: _Binding, lease: str) -> Sequence[Any]:
        keys = [*binding.keys, self._index]
        args = [
            binding.escaped, self._origin, lease, binding._max_calls, self._lease_ttl_ms,
            binding._key_ttl_ms,
        ]  # fmt: skip
        reply: Sequence[Any] = self._acquire_script(keys=keys, args=args, client=self._client)
        return reply

    def _round(self, force: bool = False) -> bool:
        """One exchange with Redis for every bound breaker; whether Redis answered."""
        if self._closed and not force:
            return False
        with self._round_lock:
            if self._in_outage and not force and time.monotonic() < self._retry_at:
                return False
            self._round_started = time.monotonic()
            works: List[_Work] = []
            for binding in self._live():
                holder: List[_Work] = []

                def collect(
                    binding: _Binding = binding, holder: List[_Work] = holder
                ) -> Optional[RemoteState]:
                    holder.append(binding.collect())
                    return None

                try:
                    binding.handle.synchronise(collect)
                except Exception as exc:  # one breaker's trouble: the others still sync
                    binding._failed(exc)
                    continue
                works.extend(holder)
            if not works:
                return self._connected
            try:
                replies = self._exchange(works)
            except _ERRORS as exc:
                self._outage(exc)
                for work in works:
                    self._restore(work)
                return False
            self._recovered()
            for work, (pub_reply, sync_reply) in zip(works, replies):
                binding = work.binding
                error = next(
                    (r for r in (pub_reply, sync_reply) if isinstance(r, BaseException)), None
                )
                if error is not None:
                    binding._failed(error)
                    self._restore(work, partly_sent=True)
                    continue

                def apply(
                    work: _Work = work, pub_reply: Any = pub_reply, sync_reply: Any = sync_reply
                ) -> Optional[RemoteState]:
                    return work.binding.apply(work, pub_reply, sync_reply)

                try:
                    binding.handle.synchronise(apply)
                except Exception as exc:  # a reply it cannot read: its keys are bad
                    binding._failed(exc)
                    self._restore(work, partly_sent=True)
            return True

    @staticmethod
    def _restore(work: _Work, partly_sent: bool = False) -> None:
        """A round did not go through for ``work``: keep what it would have sent.

        ``partly_sent``: Redis ran the scripts but a reply was an error or could
        not be read (a Lua script's writes before an error stay), so the
        round's counts and trial successes may be in Redis already: they are
        not sent again (lost rather than counted twice); releases are.
        """
        binding = work.binding

        def update() -> Optional[RemoteState]:
            if partly_sent:
                binding._releases[:0] = work.releases
                binding._rebase = True
                binding.shared = False
            else:
                binding.restore(work)
            return None

        binding.handle.synchronise(update)

    def _exchange(self, works: List[_Work]) -> List[Tuple[Any, Any]]:
        """Send every work in one pipelined round trip: ``(pub reply, sync reply)`` each.

        Raises on an error that concerns the server (an outage); an error reply
        that concerns one breaker's keys (see :func:`_per_breaker`) is returned
        in place of that reply, for that breaker alone.
        """
        client = self._client
        if not self._scripts_loaded:
            pipe = client.pipeline(transaction=False)
            for source in _PIPELINED:
                pipe.script_load(source)
            pipe.execute()
            self._scripts_loaded = True
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for work in works:
                keys = [*work.binding.keys, self._index]
                if work.pub is not None:
                    pipe.evalsha(_SHA[_TRANSITION], 4, *keys, *work.pub_args)
                pipe.evalsha(_SHA[_SYNC], 4, *keys, *work.sync_args)
            results = pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                # The server forgot the scripts (SCRIPT FLUSH, or a restart we missed).
                self._scripts_loaded = False
                for source in _PIPELINED:
                    client.script_load(source)
                self._scripts_loaded = True
                continue
            break
        for result in results:
            if isinstance(result, Exception) and not _per_breaker(result):
                raise result
        replies: List[Tuple[Any, Any]] = []
        position = 0
        for work in works:
            pub_reply = None
            if work.pub is not None:
                pub_reply = results[position]
                position += 1
            replies.append((pub_reply, results[position]))
            position += 1
        return replies

    def _outage(self, exc: BaseException) -> None:
        with self._lock:
            first = not self._in_outage
            if first:
                self._in_outage = True
                self._backoff = self.sync_interval
            else:
                self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            self._connected = False
            self._scripts_loaded = False
            self._retry_at = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
        for binding in self._live():
            binding.shared = False
            binding._rebase = True
        if first:
            logger.warning(
                "cbsync: Redis at %s is unreachable or failing (%s: %s); breakers decide "
                "on local state until it answers again (retrying with backoff)",
                self._where,
                type(exc).__name__,
                exc,
            )
        else:
            logger.debug("cbsync: Redis at %s still unreachable: %s", self._where, exc)

    def _recovered(self) -> None:
        with self._lock:
            was_out = self._in_outage
            self._in_outage = False
            self._connected = True
            self._backoff = self.sync_interval
        if was_out:
            logger.info("cbsync: Redis at %s answers again; breakers resynchronised", self._where)


def _flusher(
    store_ref: "weakref.ReferenceType[RedisStore]", wake: threading.Event, stop: threading.Event
) -> None:
    """The store's background thread: one round every ``sync_interval``, or when woken.

    Holds the store only weakly between rounds, so a store nobody uses any
    more is collected and its thread ends.
    """
    last_error = -math.inf
    while not stop.is_set():
        store = store_ref()
        if store is None or store._closed:
            return
        timeout = store._next_wait()
        del store
        wake.wait(timeout)
        wake.clear()
        if stop.is_set():
            return
        store = store_ref()
        if store is None:
            return
        try:
            store._round()
        except Exception:
            # A bug, not an outage: say so, at most once a minute, and go on.
            if time.monotonic() - last_error > 60.0:
                last_error = time.monotonic()
                logger.exception("cbsync: Redis store %r failed a sync round", store)
        del store


def _client(client_or_url: object) -> Any:
    if isinstance(client_or_url, str):
        scheme = urllib.parse.urlsplit(client_or_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                "client_or_url={!r}: expected a redis://, rediss:// or unix:// URL".format(
                    _hide_password(client_or_url)
                )
            )
        options: Dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT,
            "retry_on_timeout": False,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        if scheme != "unix":
            options["socket_connect_timeout"] = SOCKET_TIMEOUT
        try:
            return redis.Redis.from_url(client_or_url, **options)
        except ValueError as exc:
            raise ConfigError(
                "client_or_url={!r}: {}".format(_hide_password(client_or_url), exc)
            ) from exc
    if isinstance(client_or_url, redis.Redis):
        return client_or_url
    raise ConfigError(
        "client_or_url={!r} must be a redis:// URL or a redis.Redis client (Redis "
        "Cluster is not supported)".format(client_or_url)
    )


def _hide_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
