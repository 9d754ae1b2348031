"""Totals, latency histogram and the frozen ``MetricsSnapshot``."""

import bisect
import itertools
import math
import types
from typing import List, Mapping, NamedTuple, Optional, Tuple

from ._state import State, StateTransition

#: Smallest latency the histogram tells apart, in seconds (10 µs).
_HIST_MIN = 1e-5
#: Ratio between neighbouring bucket bounds: a percentile is at most 5 % high.
_HIST_GROWTH = 1.05
#: Buckets from 10 µs to about 18 minutes; anything longer lands in the last.
_HIST_BUCKETS = 380
#: Upper bound of each bucket.
_BOUNDS = [_HIST_MIN * _HIST_GROWTH**i for i in range(_HIST_BUCKETS)]
#: The bounds as a snapshot shows them: the last bucket has no upper bound.
LATENCY_BOUNDS: Tuple[float, ...] = (*_BOUNDS[:-1], math.inf)


class LatencyHistogram:
    """Latencies in log-scaled buckets: fixed memory, percentiles at most 5 % high.

    Bucket ``i`` holds latencies up to ``_BOUNDS[i]`` (and above the bound
    before it).  Cost: O(log buckets) per recorded latency; a batch is sorted
    and cut at the bucket bounds it spans, so most of its cost is C code;
    O(buckets) per percentile.  Memory is :data:`_HIST_BUCKETS` counters
    however many calls are recorded.  :meth:`buckets` is kept until the next
    record: an idle breaker's snapshots reuse it.
    """

    __slots__ = ("_buckets", "_view", "count", "total")

    def __init__(self) -> None:
        self._buckets = [0] * _HIST_BUCKETS
        self._view: Optional[Tuple[Tuple[float, int], ...]] = None
        self.count = 0
        self.total = 0.0

    def record(self, seconds: float) -> None:
        self._buckets[min(bisect.bisect_left(_BOUNDS, seconds), _HIST_BUCKETS - 1)] += 1
        self.count += 1
        self.total += max(seconds, 0.0)
        self._view = None

    def record_many(self, latencies: List[float]) -> None:
        """Record a batch; ``latencies`` is sorted in place."""
        if not latencies:
            return
        self._view = None
        if max(latencies) <= _HIST_MIN:
            # All in the first bucket (calls faster than it resolves): no
            # need to sort them, which is most of the cost of a batch.
            self._buckets[0] += len(latencies)
            self.count += len(latencies)
            self.total += max(math.fsum(latencies), 0.0)
            return
        latencies.sort()
        last = _HIST_BUCKETS - 1
        first = min(bisect.bisect_left(_BOUNDS, latencies[0]), last)
        top = min(bisect.bisect_left(_BOUNDS, latencies[-1]), last)
        buckets = self._buckets
        start = 0
        for index in range(first, top):
            end = bisect.bisect_right(latencies, _BOUNDS[index], start)
            buckets[index] += end - start
            start = end
        buckets[top] += len(latencies) - start
        self.count += len(latencies)
        self.total += max(math.fsum(latencies), 0.0)

    def average(self) -> Optional[float]:
        return self.total / self.count if self.count else None

    def add(self, other: "LatencyHistogram") -> None:
        """Add ``other``'s latencies to this histogram."""
        self._buckets = [a + b for a, b in zip(self._buckets, other._buckets)]
        self.count += other.count
        self.total += other.total
        self._view = None

    def buckets(self) -> Tuple[Tuple[float, int], ...]:
        """The non-empty buckets: ``(upper bound in seconds, count)``, in
        increasing order; the last bucket's bound is ``inf``."""
        view = self._view
        if view is None:
            counts = self._buckets
            # C iterators all the way: this runs in every snapshot() of every reader.
            view = tuple(zip(itertools.compress(LATENCY_BOUNDS, counts), filter(None, counts)))
            self._view = view
        return view

    def percentile(self, fraction: float) -> Optional[float]:
        """Upper bound of the bucket holding the ``fraction`` quantile."""
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        # Over the non-empty buckets only: few, whatever the number of calls.
        for bound, n in self.buckets():
            seen += n
            if seen >= rank:
                return bound if bound != math.inf else _BOUNDS[-1]
        raise AssertionError("unreachable: bucket counts add up to count")


class AtomicCounter:
    """A counter that many threads increment without a lock.

    ``increment`` is ``next()`` on an ``itertools.count``, one C call that the
    GIL makes atomic, so no increment is ever lost.  ``value()`` consumes one
    step of the count to read it, and must be called under the owner's lock
    (reads are then serialised and their own steps subtracted exactly).
    Free-threaded CPython builds would need a lock around ``increment``.
    """

    __slots__ = ("_reads", "increment")

    def __init__(self) -> None:
        self.increment = itertools.count().__next__
        self._reads = 0

    def value(self) -> int:
        value = self.increment() - self._reads
        self._reads += 1
        return value


class Lifetime(NamedTuple):
    """A breaker's totals since its creation: what ``reset()`` never clears.

    The same counts as a snapshot's totals (and its latency histogram, as
    ``(upper bound in seconds, calls)`` pairs), summed over every reset: a
    reader of successive snapshots that uses these misses nothing, resets
    included.
    """

    calls_allowed: int = 0
    calls_rejected: int = 0
    successes: int = 0
    failures: int = 0
    ignored: int = 0
    slow_calls: int = 0
    latency_histogram: Tuple[Tuple[float, int], ...] = ()
    latency_sum: float = 0.0


class Retired:
    """What a breaker counted before its resets (kept from the first reset on)."""

    __slots__ = ("admitted", "failures", "histogram", "ignored", "rejected", "slow", "successes")

    def __init__(self) -> None:
        self.admitted = self.rejected = self.successes = self.failures = 0
        self.ignored = self.slow = 0
        self.histogram = LatencyHistogram()


class MetricsSnapshot(NamedTuple):
    """A frozen view of one breaker's metrics.

    Totals count since the breaker's creation or its last ``reset()``;
    latencies are in seconds; ``transitions`` holds the last 100 state changes.

    The fields after ``transitions`` are for reporters, which turn them into
    per-interval deltas (see :mod:`cbsync.reporting`):

    * ``dropped_permits`` -- permits (``breaker.acquire()``) garbage-collected
      without an outcome: a bug in the code that took them;
    * ``transition_counts`` -- state changes since creation (never reset),
      by ``(old, new)``;
    * ``latency_histogram`` -- the latency histogram behind ``p99_latency``:
      its non-empty buckets as ``(upper bound in seconds, calls)``, bounds
      growing by 5 % from 10 µs (the last one is ``inf``); with
      ``latency_sum``, the seconds they add up to;
    * ``resets`` -- how many times ``reset()`` cleared the totals;
    * ``lifetime`` -- the totals and the histogram since creation, which
      ``reset()`` does not clear (:class:`Lifetime`): what a reporter
      subtracts to be exact across resets.
    """

    name: str
    state: State
    calls_allowed: int
    calls_rejected: int
    successes: int
    failures: int
    ignored: int
    slow_calls: int
    consecutive_failures: int
    window_calls: int
    window_failure_rate: Optional[float]
    window_slow_call_rate: Optional[float]
    success_rate: Optional[float]
    average_latency: Optional[float]
    p99_latency: Optional[float]
    transitions: Tuple[StateTransition, ...]
    dropped_permits: int = 0
    transition_counts: Mapping[Tuple[State, State], int] = types.MappingProxyType({})
    latency_histogram: Tuple[Tuple[float, int], ...] = ()
    latency_sum: float = 0.0
    resets: int = 0
    lifetime: Lifetime = Lifetime()
