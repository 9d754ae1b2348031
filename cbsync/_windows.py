"""Sliding windows of call outcomes, each O(1) per call and fixed in memory.

A window counts *calls* (successes and failures; ignored calls never enter
it), *failures* and *slow calls*.  Deciding whether those counts open a circuit
is the breaker's business, not the window's.  ``bucket_end`` tells until
when calls land in the current bucket: successes ending before it can be
added in a batch (``record_successes``) without moving the window.
"""

import math
from typing import Tuple

#: Buckets of a time-based window.
TIME_BUCKETS = 20

_FAILURE = 1
_SLOW = 2
_PRESENT = 4


class CountWindow:
    """The last ``size`` calls, kept in a ring of outcome codes.

    Cost: O(1) per recorded call (the evicted outcome is subtracted from the
    running totals), O(1) to read; memory is ``size`` bytes.
    """

    __slots__ = ("_next", "_ring", "bucket_end", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(size)
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        #: A call ending before this clock reading may be recorded without
        #: rotating the window first; a count window never needs rotating.
        self.bucket_end = math.inf

    def record(self, now: float, failed: bool, slow: bool) -> None:
        code = _PRESENT | (_FAILURE if failed else 0) | (_SLOW if slow else 0)
        ring = self._ring
        i = self._next
        old = ring[i]
        if old:
            self.calls -= 1
            self.failures -= old & _FAILURE
            self.slow -= (old & _SLOW) >> 1
        ring[i] = code
        self._next = (i + 1) % len(ring)
        self.calls += 1
        self.failures += code & _FAILURE
        self.slow += (code & _SLOW) >> 1

    def record_successes(self, count: int) -> None:
        """Record ``count`` successes that ended before ``bucket_end``."""
        for _ in range(min(count, len(self._ring))):
            self.record(0.0, False, False)

    def counts(self, now: float) -> Tuple[int, int, int]:
        """Return ``(calls, failures, slow)`` held by the window."""
        return self.calls, self.failures, self.slow

    def clear(self) -> None:
        self._ring = bytearray(len(self._ring))
        self._next = 0
        self.calls = self.failures = self.slow = 0


class TimeWindow:
    """The calls of the last ``span`` seconds, in a ring of time buckets.

    The span is cut into :data:`TIME_BUCKETS` buckets, each holding the counts
    of its slice of time; running totals cover the whole ring.  Cost: O(1) per
    recorded call (a float comparison against the current bucket's end edge;
    rotating past stale buckets is amortised over the calls that follow, and
    never more than the number of buckets), O(1) to read; memory is three
    counters per bucket whatever the call rate.  Calls are placed in buckets,
    so the span is honoured to within one bucket (``span / TIME_BUCKETS``).
    """

    __slots__ = (
        "_calls",
        "_current",
        "_failures",
        "_slow",
        "_width",
        "bucket_end",
        "calls",
        "failures",
        "slow",
    )

    def __init__(self, span: float, buckets: int = TIME_BUCKETS) -> None:
        self._width = span / buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._slow = [0] * buckets
        self._current = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        #: End edge of the current bucket; ``-inf`` until the first call.
        self.bucket_end = -math.inf

    def _advance(self, now: float) -> None:
        if now < self.bucket_end:
            return
        n = len(self._calls)
        if self.bucket_end == -math.inf:
            steps = n
        else:
            steps = int((now - self.bucket_end) // self._width) + 1
        if steps >= n:
            self._clear_buckets()
            # Align the edge to the clock so a long idle gap costs O(buckets).
            self.bucket_end = now + self._width
            return
        i = self._current
        for _ in range(steps):
            i = (i + 1) % n
            self.calls -= self._calls[i]
            self.failures -= self._failures[i]
            self.slow -= self._slow[i]
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._current = i
        self.bucket_end += steps * self._width

    def record(self, now: float, failed: bool, slow: bool) -> None:
        self._advance(now)
        i = self._current
        self._calls[i] += 1
        self.calls += 1
        if failed:
            self._failures[i] += 1
            self.failures += 1
        if slow:
            self._slow[i] += 1
            self.slow += 1

    def record_successes(self, count: int) -> None:
        """Record ``count`` successes that ended before ``bucket_end``.

        They belong to the current bucket, so the window is not advanced.
        """
        self._calls[self._current] += count
        self.calls += count

    def counts(self, now: float) -> Tuple[int, int, int]:
        """Return ``(calls, failures, slow)`` of the last ``span`` seconds."""
        self._advance(now)
        return self.calls, self.failures, self.slow

    def _clear_buckets(self) -> None:
        n = len(self._calls)
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._current = 0
        self.calls = self.failures = self.slow = 0

    def clear(self) -> None:
        self._clear_buckets()
        self.bucket_end = -math.inf
