"""What the pull exporters (Prometheus, OpenTelemetry) read: monotonic totals.

A scrape wants, for every breaker, counters that only go up and a histogram
with the same buckets every time.  A breaker's snapshot almost gives that;
two things are added here, once for both exporters:

* **Fixed buckets.**  The core keeps latencies in 380 buckets, 5 % apart
  (:data:`cbsync.reporting.LATENCY_BOUNDS`): too many series for a
  Prometheus histogram.  :class:`Buckets` keeps a few of the core's own
  bounds -- by default the ones at or just above 0.1 ms, 0.25 ms, 0.5 ms,
  1 ms ... 100 s (:data:`DEFAULT_BUCKETS`) -- and adds each core bucket's
  count to the first kept bound at or above it.  As every kept bound *is* a
  core bound, each exported bucket counts exactly the calls at or below its
  bound: nothing is estimated.
* **Totals that only go up.**  A counter that goes down tells Prometheus
  "the process restarted", and ``rate()`` then adds the new value as the
  increase -- right only if the counter did not pass its old value before
  the next scrape, silently wrong otherwise.  ``breaker.reset()`` clears a
  breaker's totals, but not its lifetime totals (``snapshot().lifetime``),
  which are what is exported: exact across resets.  One more case is
  handled here: another breaker object under a known name (the default
  registry swapped for a fresh one) starts from zero, so the totals last
  read for that name become an offset the new breaker's add to.  Exported
  counters then only restart with the process, as Prometheus expects.

Reads are serialised (a lock): a collector may be scraped from several
threads.  Memory: a few dozen numbers per breaker name present at the last
read; names gone from the source are forgotten.
"""

import bisect
import logging
import math
import threading
import time
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import cbsync
from cbsync import CircuitBreaker, ConfigError, State
from cbsync.reporting import LATENCY_BOUNDS, Reader, Source
from cbsync.toolkit import ForkGuard

__all__ = ["DEFAULT_BUCKETS", "Buckets", "CumulativeReader", "Source", "Totals", "label_value"]

logger = logging.getLogger("cbsync")

#: The latencies, in seconds, that the exported buckets stand for: each is
#: replaced by the core's bound at or just above it (0.1 ms becomes
#: 0.000104..., 1 s becomes 1.0016...).
DEFAULT_BUCKETS: Tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
)

#: The core's largest finite bound: a bucket cannot be asked for above it.
_LARGEST = LATENCY_BOUNDS[-2]


class Buckets:
    """A fixed set of the core's latency bounds, and how to fold a histogram onto them.

    ``bounds`` are the upper bounds exported (each one of
    :data:`~cbsync.reporting.LATENCY_BOUNDS`, increasing, without ``inf``);
    :meth:`fold` gives a snapshot's latency counts per bucket, one more
    than ``bounds`` (the last counts the calls above the last bound).
    """

    __slots__ = ("bounds",)

    def __init__(self, seconds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        try:
            wanted = [float(value) for value in seconds]
        except (TypeError, ValueError):
            raise ConfigError(
                "buckets={!r} must be a sequence of latencies in seconds".format(seconds)
            ) from None
        if not wanted:
            raise ConfigError("buckets=[]: give at least one latency bound")
        bounds: List[float] = []
        for value in wanted:
            if not 0.0 < value <= _LARGEST:
                raise ConfigError(
                    "buckets: {!r} is not a latency between 0 and {:g} seconds (the "
                    "core's largest bound)".format(value, _LARGEST)
                )
            bound = LATENCY_BOUNDS[bisect.bisect_left(LATENCY_BOUNDS, value)]
            if bounds and bound <= bounds[-1]:
                raise ConfigError(
                    "buckets: {!r} must be above the bound before it, by more than the "
                    "core's 5 % resolution (both would be {!r})".format(value, bound)
                )
            bounds.append(bound)
        self.bounds: Tuple[float, ...] = tuple(bounds)

    def fold(self, histogram: Sequence[Tuple[float, int]]) -> Tuple[int, ...]:
        """Counts per bucket of a snapshot's ``latency_histogram`` (not cumulative)."""
        counts = [0] * (len(self.bounds) + 1)
        bounds = self.bounds
        for bound, count in histogram:
            counts[bisect.bisect_left(bounds, bound)] += count
        return tuple(counts)

    def __repr__(self) -> str:
        return "Buckets({})".format(", ".join("{:.3g}".format(b) for b in self.bounds))


class Totals(NamedTuple):
    """One breaker's metrics as exported: totals monotonic since ``since_ns``.

    ``buckets`` are calls per bucket of the reader's :class:`Buckets` (not
    cumulative; the last is above the last bound); ``transitions`` maps
    ``(old, new)`` to how many times the breaker moved so.  ``state`` and
    ``window_failure_rate`` are the snapshot's, as they are now.
    """

    name: str
    state: State
    successes: int
    failures: int
    ignored: int
    slow_calls: int
    rejected: int
    transitions: Mapping[Tuple[State, State], int]
    buckets: Tuple[int, ...]
    latency_sum: float
    window_failure_rate: Optional[float]
    #: Wall-clock time, in ns since the epoch, when this name was first read.
    since_ns: int

    @property
    def calls(self) -> int:
        """Calls with a latency (successes and failures): the histogram's count."""
        return sum(self.buckets)


# A breaker's cumulative numbers as one flat tuple, so that offsets are one
# loop: the five counts, the latency sum, then the bucket counts.
_Values = Tuple[float, ...]
_COUNTS = 5


class _Track:
    """What the reader remembers about one name between two reads."""

    __slots__ = ("breaker", "last", "moves", "moves_offset", "offset", "since_ns")

    def __init__(self, breaker: CircuitBreaker, size: int) -> None:
        self.breaker = breaker
        self.since_ns = time.time_ns()
        self.last: _Values = (0,) * size
        self.offset: _Values = (0,) * size
        self.moves: Mapping[Tuple[State, State], int] = {}
        self.moves_offset: Dict[Tuple[State, State], int] = {}


class CumulativeReader:
    """Every breaker of ``source``, as :class:`Totals`: what a scrape exports.

    ``source`` is what :class:`cbsync.reporting.Reader` takes (``None``:
    ``cbsync.registry``, which follows the current default registry).  A
    breaker whose snapshot fails is left out of that read and logged (at
    most once a minute); two breakers with the same name (possible in an
    explicit list) are exported once, the first, since their series would
    collide.
    """

    def __init__(
        self,
        source: Optional[Source] = None,
        buckets: Union[Buckets, Sequence[float]] = DEFAULT_BUCKETS,
    ) -> None:
        self.reader = Reader(cbsync.registry if source is None else source)
        self.buckets = buckets if isinstance(buckets, Buckets) else Buckets(buckets)
        self._tracks: Dict[str, _Track] = {}
        self._lock = threading.Lock()
        self._last_error = -math.inf
        self._fork = ForkGuard(self._after_fork)

    def _after_fork(self) -> None:
        # A read running in another thread of the parent never ends here.
        self._lock = threading.Lock()

    def read(self) -> List[Totals]:
        """Every breaker's totals now, in the source's order."""
        self._fork.check()
        with self._lock:
            tracks = self._tracks
            kept: Dict[str, _Track] = {}
            totals = []
            for breaker in self.reader.breakers():
                name = breaker.name
                if name in kept:
                    continue  # given twice, or two breakers of one name
                track = tracks.get(name)
                try:
                    total, track = self._advance(breaker, track)
                except Exception:
                    self._log("cbsync: reading breaker {!r} for export failed".format(name))
                    if track is None:
                        continue
                else:
                    totals.append(total)
                kept[name] = track
            self._tracks = kept
        return totals

    def _advance(self, breaker: CircuitBreaker, track: Optional[_Track]) -> Tuple[Totals, _Track]:
        snapshot = breaker.snapshot()
        lifetime = snapshot.lifetime  # what reset() never clears
        values: _Values = (
            lifetime.successes,
            lifetime.failures,
            lifetime.ignored,
            lifetime.slow_calls,
            lifetime.calls_rejected,
            lifetime.latency_sum,
            *self.buckets.fold(lifetime.latency_histogram),
        )
        moves = snapshot.transition_counts
        if track is None:
            track = _Track(breaker, len(values))
        elif track.breaker is not breaker:
            # Another breaker under this name, counting from zero: what was
            # exported so far becomes the base its totals add to.
            track.offset = tuple(o + v for o, v in zip(track.offset, track.last))
            for move, n in track.moves.items():
                track.moves_offset[move] = track.moves_offset.get(move, 0) + n
            track.breaker = breaker
        track.last = values
        track.moves = moves
        out = [o + v for o, v in zip(track.offset, values)]
        transitions = dict(track.moves_offset)
        for move, n in moves.items():
            transitions[move] = transitions.get(move, 0) + n
        totals = Totals(
            name=label_value(snapshot.name),
            state=snapshot.state,
            successes=int(out[0]),
            failures=int(out[1]),
            ignored=int(out[2]),
            slow_calls=int(out[3]),
            rejected=int(out[4]),
            transitions=transitions,
            buckets=tuple(int(n) for n in out[_COUNTS + 1 :]),
            latency_sum=out[_COUNTS],
            window_failure_rate=snapshot.window_failure_rate,
            since_ns=track.since_ns,
        )
        return totals, track

    def _log(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error >= 60.0:
            self._last_error = now
            logger.exception("%s; the other breakers are exported", message)

    def __repr__(self) -> str:
        return "<cbsync CumulativeReader of {!r}>".format(self.reader)


def label_value(name: str) -> str:
    """``name`` as valid UTF-8 text: a lone surrogate (a name decoded from
    undecodable bytes) would make the whole exposition fail to encode."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name
