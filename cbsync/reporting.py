"""Reporting by reading breakers: snapshots in, per-interval deltas out.

A breaker keeps exact totals and a latency histogram (``snapshot()``).
Reporters read them instead of being told about every call, so a call pays
nothing for being reported:

* :class:`Reader` reads the snapshots of a :class:`~cbsync.Registry`'s
  breakers (present and future) or of breakers given explicitly.
  :meth:`Reader.snapshots` gives the cumulative view (what Prometheus and
  OpenTelemetry export); :meth:`Reader.read` gives what each breaker did
  since the previous read, as a :class:`Delta` (what StatsD sends).
* :class:`Reporter` calls ``read()`` every ``interval`` on a background
  thread and hands the deltas to a ``send`` function: the push loop of a
  StatsD-style exporter, which never runs on a caller's thread.

A read takes each breaker's lock only for as long as ``snapshot()`` does.
Counts are exact: a delta is the difference of two lifetime totals
(``snapshot().lifetime``, which ``reset()`` never clears), so nothing
happening between two reads is missed -- resets and state changes
included, these counted per ``(old, new)`` in
``snapshot().transition_counts``.

>>> import cbsync
>>> from cbsync.reporting import Reader
>>> registry = cbsync.Registry()
>>> reader = Reader(registry)
>>> breaker = registry.get("payments")
>>> for _ in range(3):
...     _ = breaker.call(lambda: "ok")
>>> [(delta.name, delta.successes) for delta in reader.read()]
[('payments', 3)]
>>> _ = breaker.call(lambda: "ok")
>>> [(delta.name, delta.successes) for delta in reader.read()]
[('payments', 1)]
"""

import logging
import math
import threading
import time
from typing import (
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

from ._breaker import CircuitBreaker
from ._config import Duration, parse_duration
from ._errors import ConfigError
from ._fork import ForkGuard
from ._metrics import LATENCY_BOUNDS, Lifetime, MetricsSnapshot
from ._registry import Registry
from ._state import State

__all__ = ["LATENCY_BOUNDS", "Delta", "Reader", "Reporter", "STATE_CODES"]

logger = logging.getLogger("cbsync")

#: A number for each state, for gauges: closed 0, half_open 1, open 2,
#: forced_open 3, disabled 4.
STATE_CODES: Mapping[State, int] = {
    State.CLOSED: 0,
    State.HALF_OPEN: 1,
    State.OPEN: 2,
    State.FORCED_OPEN: 3,
    State.DISABLED: 4,
}

#: Default seconds between two reads of a :class:`Reporter`.
DEFAULT_INTERVAL = 10.0

Source = Union[Registry, CircuitBreaker, Iterable[CircuitBreaker]]


class Delta(NamedTuple):
    """What one breaker did between two reads (see :meth:`Reader.read`).

    Counts are of calls that ended (or were rejected) in the interval, a
    ``reset()`` in it changing nothing;
    ``transitions`` maps ``(old, new)`` to how many times the breaker moved
    so; ``latency`` holds the histogram buckets the interval's successes and
    failures fell in, as ``(upper bound in seconds, calls)`` (the bounds of
    :data:`LATENCY_BOUNDS`), and ``latency_sum`` their total seconds.
    ``snapshot`` is the snapshot read (state, rates and totals now).
    """

    name: str
    successes: int
    failures: int
    ignored: int
    slow_calls: int
    rejected: int
    transitions: Mapping[Tuple[State, State], int]
    latency: Tuple[Tuple[float, int], ...]
    latency_sum: float
    snapshot: MetricsSnapshot

    @property
    def state(self) -> State:
        """The breaker's state at the read."""
        return self.snapshot.state

    @property
    def calls(self) -> int:
        """Successes and failures: the calls whose latency is in ``latency``."""
        return self.successes + self.failures


def _delta(snapshot: MetricsSnapshot, previous: Optional[MetricsSnapshot]) -> Delta:
    # Lifetime totals: a reset in between clears nothing they hold.
    now = snapshot.lifetime
    before = previous.lifetime if previous is not None else Lifetime()
    # A breaker keeps these two until they change: the same objects, nothing new.
    moves = snapshot.transition_counts
    moves_before = previous.transition_counts if previous is not None else {}
    transitions = (
        {}
        if moves is moves_before
        else {
            m: n - moves_before.get(m, 0) for m, n in moves.items() if n != moves_before.get(m, 0)
        }
    )
    if now.latency_histogram is before.latency_histogram:
        latency: Tuple[Tuple[float, int], ...] = ()
    else:
        earlier = dict(before.latency_histogram)
        latency = tuple(
            (bound, count - earlier.get(bound, 0))
            for bound, count in now.latency_histogram
            if count != earlier.get(bound, 0)
        )
    return Delta(
        snapshot.name,
        now.successes - before.successes,
        now.failures - before.failures,
        now.ignored - before.ignored,
        now.slow_calls - before.slow_calls,
        now.calls_rejected - before.calls_rejected,
        transitions,
        latency,
        max(0.0, now.latency_sum - before.latency_sum),
        snapshot,
    )


class Reader:
    """Reads the snapshots of some breakers, and what changed since the last read.

    ``source`` is a :class:`~cbsync.Registry` -- its breakers, present and
    future, found at each read (``cbsync.registry`` follows the current
    default) -- or a breaker, or an iterable of breakers.  Safe to use from
    several threads; each :meth:`read` sees each breaker once.  Memory: the
    last snapshot of each breaker read, nothing more.
    """

    def __init__(self, source: Source) -> None:
        self._registry: Optional[Registry] = None
        self._fixed: Tuple[CircuitBreaker, ...] = ()
        if isinstance(source, Registry):
            self._registry = source
        elif isinstance(source, CircuitBreaker):
            self._fixed = (source,)
        else:
            try:
                fixed = tuple(source)
            except TypeError:
                raise ConfigError(
                    "source={!r} must be a cbsync.Registry, a CircuitBreaker or an iterable "
                    "of them".format(source)
                ) from None
            for breaker in fixed:
                if not isinstance(breaker, CircuitBreaker):
                    raise ConfigError(
                        "source: {!r} is not a cbsync.CircuitBreaker".format(breaker)
                    )
            self._fixed = fixed
        self._last: Dict[CircuitBreaker, MetricsSnapshot] = {}
        self._lock = threading.Lock()
        self._fork = ForkGuard(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock, and every breaker read now, so that
        the child's first deltas are its own calls -- what the parent counted
        before the fork is the parent's to report."""
        # A read running in another thread of the parent never ends here.
        self._lock = threading.Lock()
        self._last = {breaker: breaker.snapshot() for breaker in self.breakers()}

    def breakers(self) -> List[CircuitBreaker]:
        """The breakers read now, in their registry's order."""
        registry = self._registry
        if registry is None:
            return list(self._fixed)
        found = []
        for name in registry:
            try:
                found.append(registry[name])
            except KeyError:  # the default registry was swapped meanwhile
                continue
        return found

    def snapshots(self) -> List[MetricsSnapshot]:
        """Every breaker's snapshot now: the cumulative view."""
        return [breaker.snapshot() for breaker in self.breakers()]

    def read(self) -> List[Delta]:
        """What each breaker did since the previous :meth:`read` (since its
        creation, at the first)."""
        self._fork.check()
        with self._lock:
            last = self._last
            current: Dict[CircuitBreaker, MetricsSnapshot] = {}
            deltas = []
            for breaker in self.breakers():
                if breaker in current:
                    continue  # given twice
                snapshot = breaker.snapshot()
                deltas.append(_delta(snapshot, last.get(breaker)))
                current[breaker] = snapshot
            # Breakers gone from the source (a swapped registry) are forgotten.
            self._last = current
        return deltas

    def __repr__(self) -> str:
        if self._registry is not None:
            return "<cbsync Reader of {!r}>".format(self._registry)
        return "<cbsync Reader of {} breaker{}>".format(
            len(self._fixed), "" if len(self._fixed) == 1 else "s"
        )


class Reporter:
    """Calls ``send(deltas)`` every ``interval`` seconds from a background thread.

    ``source`` is what a :class:`Reader` takes, or a Reader; ``send`` gets the list of
    :class:`Delta` of each read (every breaker, even an idle one, so that
    gauges stay fresh).  An exception raised by ``send`` is logged (at most
    once a minute) and never stops the reporter.  The thread is a daemon
    started at construction; after ``os.fork()`` it is started again in the
    child (by the at-fork hook; under uWSGI enable ``py-call-osafterfork``
    or ``lazy-apps``).  :meth:`flush` reads and sends at once, in the
    calling thread; :meth:`close` stops the thread after a last flush.
    """

    def __init__(
        self,
        source: Union[Source, Reader],
        send: Callable[[List[Delta]], None],
        *,
        interval: Duration = DEFAULT_INTERVAL,
    ) -> None:
        if not callable(send):
            raise ConfigError("send={!r} must be a callable taking a list of deltas".format(send))
        self.interval = parse_duration("interval", interval)
        self.reader = source if isinstance(source, Reader) else Reader(source)
        self._send = send
        self._closed = False
        self._last_error = -math.inf
        self._send_lock = threading.Lock()
        self._fork = ForkGuard(self._after_fork)
        self._start()

    def _start(self) -> None:
        self._wake = threading.Event()
        thread = threading.Thread(target=self._run, name="cbsync-reporter", daemon=True)
        self._thread: Optional[threading.Thread] = thread
        try:
            thread.start()
        except RuntimeError:
            # No thread at interpreter shutdown, or none left: flush() still works.
            self._thread = None
            logger.warning("cbsync: %r could not start its thread", self, exc_info=True)

    def _after_fork(self) -> None:
        self._send_lock = threading.Lock()
        if not self._closed:
            self._start()

    def _run(self) -> None:
        me = threading.current_thread()
        wake = self._wake
        next_read = time.monotonic() + self.interval
        while not self._closed and self._thread is me:
            # Real time: the reporting period.
            wake.wait(max(0.0, next_read - time.monotonic()))
            if self._closed or self._thread is not me:
                return
            next_read += self.interval
            self.flush()

    def flush(self) -> None:
        """Read every breaker and send the deltas now (never raises)."""
        self._fork.check()
        with self._send_lock:
            try:
                self._send(self.reader.read())
            except Exception:
                now = time.monotonic()
                if now - self._last_error >= 60.0:
                    self._last_error = now
                    logger.exception("cbsync: %r failed to report; it goes on", self)

    def close(self, flush: bool = True) -> None:
        """Stop the thread, after a last :meth:`flush` unless ``flush=False``.

        Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        if flush:
            self.flush()

    def __repr__(self) -> str:
        return "<cbsync Reporter every {:g}s of {!r}>".format(self.interval, self.reader)
