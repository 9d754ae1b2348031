"""Prometheus: every breaker's metrics on a ``prometheus_client`` registry.

:func:`register` adds a :class:`BreakerCollector` -- a custom collector --
to a ``CollectorRegistry`` (``prometheus_client.REGISTRY`` by default), and
whatever serves that registry (``start_http_server``, ``make_wsgi_app``, a
Django or Flask view) exports cbsync's metrics with the rest::

    import prometheus_client
    from cbsync.integrations.prometheus import register

    register()                             # every breaker of cbsync.registry, present and future
    prometheus_client.start_http_server(9100)  # or your framework's /metrics view

The collector reads the breakers when it is scraped, in the scraping thread:
a call does nothing for it and pays nothing (no listener is added), and a
scrape takes each breaker's lock only as long as ``snapshot()`` does.

What a scrape exports, per breaker (label ``breaker``: the name, escaped by
the client like any label value, so any name is safe):

=======================================  =========  =========================================
``cbsync_calls_total{outcome}``          counter    calls that ended: ``success``, ``failure``,
                                                    ``ignored``
``cbsync_slow_calls_total``              counter    calls at least ``slow_call_duration`` long
                                                    (also counted above as a success or failure)
``cbsync_rejected_total``                counter    calls rejected without running
``cbsync_transitions_total{from,to}``    counter    state changes, e.g. ``from="closed",to="open"``
``cbsync_state{state}``                  gauge      1 for the breaker's state, 0 for the four
                                                    others (one-hot, as kube-state-metrics does)
``cbsync_call_duration_seconds``         histogram  latency of successes and failures
``cbsync_window_failure_rate``           gauge      failure rate in the window, 0 to 1 (absent
                                                    while the window is empty)
=======================================  =========  =========================================

Counters only go up: a ``breaker.reset()`` does not reset them (they are
the snapshot's lifetime totals, and nothing is lost across a reset).  The histogram's
buckets are a fixed subset of the core's bounds, so every bucket count is
exact; see :mod:`cbsync.integrations._cumulative` and ``docs/metrics.md``.

Prefork servers (gunicorn, uWSGI, Celery prefork): a process exports the
breakers it has.  ``prometheus_client``'s multiprocess mode aggregates only
its own metric objects through files, never custom collectors, so this
collector cannot take part in it; scrape each worker, or report with StatsD,
whose server adds up the workers' counters (``docs/metrics.md``).
"""

from typing import Iterable, List, Optional, Sequence, Tuple

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    Sample,
)

from cbsync import State
from cbsync.reporting import STATE_CODES

from ._cumulative import DEFAULT_BUCKETS, Buckets, CumulativeReader, Source

__all__ = ["DEFAULT_BUCKETS", "BreakerCollector", "register"]

_DURATION = "cbsync_call_duration_seconds"
#: Every state, in the order of their gauge codes: each breaker gets all five.
_STATES = sorted(STATE_CODES, key=STATE_CODES.__getitem__)


class BreakerCollector:
    """A ``prometheus_client`` collector of every breaker of ``source``.

    ``source`` is a :class:`cbsync.Registry` (its breakers, present and
    future), a breaker, or a list of breakers; ``None`` means
    ``cbsync.registry``.  ``buckets`` are latencies in seconds, each turned
    into the core's bound at or just above it (see :data:`DEFAULT_BUCKETS`);
    they stay the same for the collector's life, so ``histogram_quantile``
    works across scrapes.  Register it yourself
    (``registry.register(collector)``) or with :func:`register`.

    >>> import cbsync, prometheus_client
    >>> registry = prometheus_client.CollectorRegistry()
    >>> breakers = cbsync.Registry()
    >>> _ = register(registry, breakers)
    >>> _ = breakers.get("payments").call(lambda: "ok")
    >>> registry.get_sample_value(
    ...     "cbsync_calls_total", {"breaker": "payments", "outcome": "success"}
    ... )
    1
    """

    def __init__(
        self, source: Optional[Source] = None, *, buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        self.buckets = Buckets(buckets)
        self._reader = CumulativeReader(source, self.buckets)
        self._les = [repr(bound) for bound in self.buckets.bounds] + ["+Inf"]

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples: what ``register()`` checks
        for name clashes, so that registering does not read the breakers."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """Read every breaker and yield its metrics (called on each scrape)."""
        families = self._families()
        calls, slow, rejected, transitions, state, duration, failure_rate = (
            family.samples for family in families
        )
        les = self._les
        # Samples are built here rather than with add_metric(), which costs
        # three times as much: a scrape of 1,000 breakers makes 33,000 of
        # them.  Each gets its own labels dict, as add_metric() would give it.
        for totals in self._reader.read():
            name = totals.name
            breaker = {"breaker": name}
            for outcome, count in (
                ("success", totals.successes),
                ("failure", totals.failures),
                ("ignored", totals.ignored),
            ):
                calls.append(Sample("cbsync_calls_total", {**breaker, "outcome": outcome}, count))
            slow.append(Sample("cbsync_slow_calls_total", {**breaker}, totals.slow_calls))
            rejected.append(Sample("cbsync_rejected_total", {**breaker}, totals.rejected))
            for (old, new), count in sorted(totals.transitions.items(), key=_move_order):
                labels = {**breaker, "from": old.value, "to": new.value}
                transitions.append(Sample("cbsync_transitions_total", labels, count))
            for each in _STATES:
                labels = {**breaker, "state": each.value}
                state.append(Sample("cbsync_state", labels, 1 if each is totals.state else 0))
            seen = 0
            for le, count in zip(les, totals.buckets):
                seen += count
                duration.append(Sample(_DURATION + "_bucket", {**breaker, "le": le}, seen))
            duration.append(Sample(_DURATION + "_count", {**breaker}, seen))
            duration.append(Sample(_DURATION + "_sum", {**breaker}, totals.latency_sum))
            if totals.window_failure_rate is not None:
                rate = totals.window_failure_rate
                failure_rate.append(Sample("cbsync_window_failure_rate", breaker, rate))
        return families

    @staticmethod
    def _families() -> List[Metric]:
        return [
            CounterMetricFamily(
                "cbsync_calls",
                "Calls that ended, by outcome (success, failure, ignored).",
                labels=["breaker", "outcome"],
            ),
            CounterMetricFamily(
                "cbsync_slow_calls",
                "Calls at least slow_call_duration long (also counted in cbsync_calls_total).",
                labels=["breaker"],
            ),
            CounterMetricFamily(
                "cbsync_rejected",
                "Calls rejected without running (circuit open, or half-open and full).",
                labels=["breaker"],
            ),
            CounterMetricFamily(
                "cbsync_transitions",
                "State changes of the breaker, from one state to another.",
                labels=["breaker", "from", "to"],
            ),
            GaugeMetricFamily(
                "cbsync_state",
                "1 for the breaker's current state, 0 for the others.",
                labels=["breaker", "state"],
            ),
            HistogramMetricFamily(
                _DURATION,
                "Duration of the calls that succeeded or failed.",
                labels=["breaker"],
            ),
            GaugeMetricFamily(
                "cbsync_window_failure_rate",
                "Failure rate in the breaker's window, 0 to 1 (absent while it is empty).",
                labels=["breaker"],
            ),
        ]

    def __repr__(self) -> str:
        return "<cbsync BreakerCollector of {!r}>".format(self._reader.reader)


def _move_order(item: Tuple[Tuple[State, State], int]) -> Tuple[int, int]:
    (old, new), _ = item
    return STATE_CODES[old], STATE_CODES[new]


def register(
    registry: Optional[prometheus_client.CollectorRegistry] = None,
    source: Optional[Source] = None,
    *,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> BreakerCollector:
    """Register a :class:`BreakerCollector` of ``source`` on ``registry``
    (default ``prometheus_client.REGISTRY``) and return it.

    A second cbsync collector on the same registry is refused by
    ``prometheus_client`` (duplicated time series: a ``ValueError``);
    ``registry.unregister(collector)`` removes one.
    """
    collector = BreakerCollector(source, buckets=buckets)
    (prometheus_client.REGISTRY if registry is None else registry).register(collector)
    return collector
