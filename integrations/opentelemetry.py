"""OpenTelemetry: every breaker's metrics as OpenTelemetry instruments.

:func:`instrument` creates observable instruments on the meter ``cbsync``
of a meter provider (the global one by default); whatever reader and
exporter the application configured (OTLP, Prometheus, the console) then
collects them.  :meth:`Instrumentation.bridge` adds the latency histogram
to what a reader collects (below: why it takes a reader)::

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from cbsync.integrations.opentelemetry import instrument

    reader = PeriodicExportingMetricReader(exporter)   # e.g. an OTLPMetricExporter()
    provider = MeterProvider(metric_readers=[reader])
    metrics = instrument(meter_provider=provider)      # every breaker of cbsync.registry
    metrics.bridge(reader)                             # + cbsync.call.duration

Instruments (attribute ``cbsync.breaker.name`` on every one):

=============================  ======================  =====================================
``cbsync.calls``               counter ``{call}``      calls that ended, by ``cbsync.outcome``:
                                                       ``success``, ``failure``, ``ignored``
``cbsync.slow_calls``          counter ``{call}``      calls at least ``slow_call_duration`` long
                                                       (also counted in ``cbsync.calls``)
``cbsync.rejections``          counter ``{call}``      calls rejected without running
``cbsync.transitions``         counter                 state changes, by
                               ``{transition}``        ``cbsync.transition.from`` and ``.to``
``cbsync.state``               up-down counter ``1``   1 for the breaker's state (attribute
                                                       ``cbsync.breaker.state``), 0 for the
                                                       others; summed over breakers: how many
                                                       are in each state
``cbsync.window.failure_rate`` gauge ``1``             failure rate in the window (none while it
                                                       is empty)
``cbsync.call.duration``       histogram ``s``         latency of successes and failures
                                                       (with :meth:`~Instrumentation.bridge`)
=============================  ======================  =====================================

Counters are cumulative and only go up (a ``breaker.reset()`` does not
reset them); a reader asking for delta temporality gets deltas from the SDK
as for any observable counter.  Everything is read from the breakers when a
reader collects, never on a caller's thread: calls pay nothing.  One
collection reads each breaker once, whatever the number of instruments.

Why the histogram needs :meth:`~Instrumentation.bridge`
-------------------------------------------------------
The breaker already has the histogram (exact counts per bucket); the
OpenTelemetry API has no *observable* histogram to report one, and a
synchronous ``Histogram`` could only be fed by recording one made-up value
per call -- millions of calls a minute replayed at each collection, and a
wrong sum.  The specification's answer for metrics aggregated elsewhere is a
``MetricProducer`` given to the reader; the Python SDK has none (as of
1.45).  So :meth:`~Instrumentation.bridge` does what a producer would: it
wraps the reader's ``_receive_metrics`` -- the hook every SDK reader
(in-memory, periodic exporting, Prometheus) implements to receive a
collection -- and adds a ``cbsync.call.duration`` metric with one exact
explicit-bucket histogram point per breaker to the ``cbsync`` scope of what
was collected.  Bucket bounds are a fixed subset of the core's, as for
Prometheus (:data:`DEFAULT_BUCKETS`), so each bucket count is exact;
``min``/``max`` are not known (reported as ``inf``/``-inf``, as the SDK
does with ``record_min_max=False``).  Temporality follows the reader's
preference for histograms (cumulative unless it asked for delta).  Views do
not apply to the bridged metric.
"""

import logging
import math
import threading
import time
import weakref
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Observation

import cbsync
from cbsync import ConfigError
from cbsync.reporting import STATE_CODES
from cbsync.toolkit import ForkGuard

from ._cumulative import DEFAULT_BUCKETS, Buckets, CumulativeReader, Source, Totals

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        HistogramDataPoint,
        MetricReader,
        MetricsData,
    )

__all__ = ["DEFAULT_BUCKETS", "SCOPE", "Instrumentation", "instrument"]

logger = logging.getLogger("cbsync")

#: The instrumentation scope (meter name) of every cbsync instrument.
SCOPE = "cbsync"

_BREAKER = "cbsync.breaker.name"
_STATES = sorted(STATE_CODES, key=STATE_CODES.__getitem__)


def instrument(
    source: Optional[Source] = None,
    *,
    meter_provider: Optional[otel_metrics.MeterProvider] = None,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> "Instrumentation":
    """Create cbsync's instruments for the breakers of ``source`` and return them.

    ``source`` is a :class:`cbsync.Registry` (its breakers, present and
    future), a breaker or a list of breakers; ``None`` means
    ``cbsync.registry``.  ``meter_provider`` defaults to the global one
    (``opentelemetry.metrics.get_meter_provider()``).  ``buckets`` are the
    latencies, in seconds, of the histogram's bounds (each turned into the
    core's bound at or just above it).
    """
    return Instrumentation(source, meter_provider=meter_provider, buckets=buckets)


class Instrumentation:
    """cbsync's observable instruments on one meter provider (see :func:`instrument`).

    >>> import cbsync
    >>> from opentelemetry.sdk.metrics import MeterProvider
    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    >>> reader = InMemoryMetricReader()
    >>> breakers = cbsync.Registry()
    >>> metrics = instrument(breakers, meter_provider=MeterProvider(metric_readers=[reader]))
    >>> metrics.bridge(reader)
    >>> _ = breakers.get("payments").call(lambda: "ok")
    >>> data = reader.get_metrics_data()
    >>> sorted(m.name for m in data.resource_metrics[0].scope_metrics[0].metrics)[:3]
    ['cbsync.call.duration', 'cbsync.calls', 'cbsync.rejections']
    """

    def __init__(
        self,
        source: Optional[Source] = None,
        *,
        meter_provider: Optional[otel_metrics.MeterProvider] = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.buckets = Buckets(buckets)
        self._reader = CumulativeReader(source, self.buckets)
        self._lock = threading.Lock()
        self._totals: List[Totals] = []
        #: Who has used ``_totals`` since it was read (see _read_for).
        self._consumers: Set[object] = set()
        self._closed = False
        self._bridges: List[Tuple[weakref.ReferenceType[MetricReader], Callable[..., None]]] = []
        self._bridged: List[_Bridge] = []
        self._fork = ForkGuard(self._after_fork)
        provider = meter_provider or otel_metrics.get_meter_provider()
        meter = provider.get_meter(SCOPE, cbsync.__version__)
        self._instruments = [
            meter.create_observable_counter(
                "cbsync.calls",
                callbacks=[self._calls],
                unit="{call}",
                description="Calls that ended, by outcome (success, failure, ignored).",
            ),
            meter.create_observable_counter(
                "cbsync.slow_calls",
                callbacks=[self._slow_calls],
                unit="{call}",
                description="Calls at least slow_call_duration long (also in cbsync.calls).",
            ),
            meter.create_observable_counter(
                "cbsync.rejections",
                callbacks=[self._rejections],
                unit="{call}",
                description="Calls rejected without running.",
            ),
            meter.create_observable_counter(
                "cbsync.transitions",
                callbacks=[self._transitions],
                unit="{transition}",
                description="State changes, by the state left and the state entered.",
            ),
            meter.create_observable_up_down_counter(
                "cbsync.state",
                callbacks=[self._state],
                unit="1",
                description="1 for the breaker's current state, 0 for the others.",
            ),
            meter.create_observable_gauge(
                "cbsync.window.failure_rate",
                callbacks=[self._failure_rate],
                unit="1",
                description="Failure rate in the breaker's window (none while it is empty).",
            ),
        ]

    def _after_fork(self) -> None:
        # A collection running in another thread of the parent never ends here.
        self._lock = threading.Lock()
        for bridge in self._bridged:
            bridge.after_fork()

    # -- one read per collection -----------------------------------------------

    def _read_for(self, consumer: object) -> List[Totals]:
        """The breakers' totals for ``consumer`` (an instrument or a bridge).

        A collection calls every instrument's callback once; the first
        callback of a collection reads the breakers and the others reuse that
        read: a consumer asking again has seen the current read already, so
        its new collection has begun.
        """
        if self._closed:
            return []
        self._fork.check()
        with self._lock:
            if consumer in self._consumers or not self._consumers:
                self._totals = self._reader.read()
                self._consumers = set()
            self._consumers.add(consumer)
            return self._totals

    # -- callbacks ---------------------------------------------------------------

    def _calls(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for totals in self._read_for("calls"):
            for outcome, count in (
                ("success", totals.successes),
                ("failure", totals.failures),
                ("ignored", totals.ignored),
            ):
                observations.append(
                    Observation(count, {_BREAKER: totals.name, "cbsync.outcome": outcome})
                )
        return observations

    def _slow_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(totals.slow_calls, {_BREAKER: totals.name})
            for totals in self._read_for("slow_calls")
        ]

    def _rejections(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(totals.rejected, {_BREAKER: totals.name})
            for totals in self._read_for("rejections")
        ]

    def _transitions(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                count,
                {
                    _BREAKER: totals.name,
                    "cbsync.transition.from": old.value,
                    "cbsync.transition.to": new.value,
                },
            )
            for totals in self._read_for("transitions")
            for (old, new), count in totals.transitions.items()
        ]

    def _state(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                1 if state is totals.state else 0,
                {_BREAKER: totals.name, "cbsync.breaker.state": state.value},
            )
            for totals in self._read_for("state")
            for state in _STATES
        ]

    def _failure_rate(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(totals.window_failure_rate, {_BREAKER: totals.name})
            for totals in self._read_for("failure_rate")
            if totals.window_failure_rate is not None
        ]

    # -- the histogram -------------------------------------------------------------

    def bridge(
        self, reader: "MetricReader", *, temporality: "Optional[AggregationTemporality]" = None
    ) -> None:
        """Add ``cbsync.call.duration`` to every collection of ``reader``.

        ``reader`` is an SDK ``MetricReader`` of the meter provider the
        instruments were created on.  ``temporality`` defaults to the
        reader's preference for histograms.  A reader is bridged once.
        """
        from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricReader

        if not isinstance(reader, MetricReader):
            raise ConfigError(
                "reader={!r} must be an opentelemetry.sdk.metrics.export.MetricReader".format(
                    reader
                )
            )
        receive = reader._receive_metrics
        if getattr(receive, "_cbsync_bridge", False):
            raise ConfigError("{!r} is bridged to cbsync already".format(reader))
        if temporality is None:
            temporality = _histogram_temporality(reader)
        if temporality not in (AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA):
            raise ConfigError(
                "temporality={!r} must be an AggregationTemporality".format(temporality)
            )
        bridge = _Bridge(self, reader, temporality)
        self._bridged.append(bridge)

        def receive_with_duration(
            metrics_data: "MetricsData", timeout_millis: float = 10_000, **kwargs: Any
        ) -> None:
            try:
                metrics_data = bridge.add_to(metrics_data)
            except Exception:
                bridge.log("cbsync: adding cbsync.call.duration to a collection failed")
            receive(metrics_data, timeout_millis=timeout_millis, **kwargs)

        receive_with_duration._cbsync_bridge = True  # type: ignore[attr-defined]
        # The instance attribute shadows the class's method: collect() calls it.
        setattr(reader, "_receive_metrics", receive_with_duration)  # noqa: B010
        self._bridges.append((weakref.ref(reader), receive_with_duration))

    def close(self) -> None:
        """Stop reporting: the callbacks observe nothing from now on and the
        bridged readers get their own ``_receive_metrics`` back.  (The
        OpenTelemetry API cannot remove an instrument from its meter.)"""
        self._closed = True
        for ref, wrapper in self._bridges:
            reader = ref()
            if reader is not None and reader.__dict__.get("_receive_metrics") is wrapper:
                del reader.__dict__["_receive_metrics"]
        del self._bridges[:]
        del self._bridged[:]

    def __repr__(self) -> str:
        return "<cbsync OpenTelemetry instrumentation of {!r}>".format(self._reader.reader)


def _histogram_temporality(reader: "MetricReader") -> "AggregationTemporality":
    """What ``reader`` asked for its histograms (the SDK keeps it by
    instrument class, in a private mapping); cumulative if it cannot be told."""
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    preferences = getattr(reader, "_instrument_class_temporality", None) or {}
    for kind, temporality in preferences.items():
        if getattr(kind, "__name__", "") in ("_Histogram", "Histogram"):
            return temporality  # type: ignore[no-any-return]
    return AggregationTemporality.CUMULATIVE


class _Bridge:
    """The histogram points one bridged reader gets at each collection."""

    def __init__(
        self, owner: Instrumentation, reader: "MetricReader", temporality: "AggregationTemporality"
    ) -> None:
        from opentelemetry.sdk.metrics.export import AggregationTemporality

        self._owner = owner
        self._reader_repr = repr(reader)
        self._temporality = temporality
        self._delta = temporality is AggregationTemporality.DELTA
        #: For delta temporality: per breaker, what the last collection reported.
        self._last: Dict[str, Tuple[int, Tuple[int, ...], float]] = {}
        self._lock = threading.Lock()
        self._warned = False
        self._last_error = -math.inf

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def add_to(self, metrics_data: "MetricsData") -> "MetricsData":
        from opentelemetry.sdk.metrics.export import (
            Histogram,
            Metric,
            MetricsData,
            ResourceMetrics,
            ScopeMetrics,
        )

        totals = self._owner._read_for(self)
        if not totals:
            return metrics_data
        resources = list(metrics_data.resource_metrics)
        for r, resource in enumerate(resources):
            for s, scope in enumerate(resource.scope_metrics):
                if scope.scope.name != SCOPE:
                    continue
                metric = Metric(
                    name="cbsync.call.duration",
                    description="Duration of the calls that succeeded or failed.",
                    unit="s",
                    data=Histogram(
                        data_points=self._points(totals),
                        aggregation_temporality=self._temporality,
                    ),
                )
                scopes = list(resource.scope_metrics)
                scopes[s] = ScopeMetrics(
                    scope=scope.scope,
                    metrics=[*scope.metrics, metric],
                    schema_url=scope.schema_url,
                )
                resources[r] = ResourceMetrics(
                    resource=resource.resource,
                    scope_metrics=scopes,
                    schema_url=resource.schema_url,
                )
                return MetricsData(resource_metrics=resources)
        if not self._warned:
            self._warned = True
            logger.warning(
                "cbsync: %s collected no cbsync instrument, so cbsync.call.duration has no "
                "scope to join: bridge a reader of the meter provider given to instrument()",
                self._reader_repr,
            )
        return metrics_data

    def _points(self, totals: List[Totals]) -> List["HistogramDataPoint"]:
        from opentelemetry.sdk.metrics.export import HistogramDataPoint

        now = time.time_ns()
        bounds = list(self._owner.buckets.bounds)
        points = []
        with self._lock:
            last = self._last
            seen: Dict[str, Tuple[int, Tuple[int, ...], float]] = {}
            for each in totals:
                start, buckets, total = each.since_ns, each.buckets, each.latency_sum
                if self._delta:
                    seen[each.name] = (now, buckets, total)
                    before = last.get(each.name)
                    if before is not None:
                        start = before[0]
                        buckets = tuple(n - b for n, b in zip(buckets, before[1]))
                        total = max(0.0, total - before[2])
                    if not any(buckets):
                        continue  # nothing new: no point, as the SDK does
                points.append(
                    HistogramDataPoint(
                        attributes={_BREAKER: each.name},
                        start_time_unix_nano=start,
                        time_unix_nano=now,
                        count=sum(buckets),
                        sum=total,
                        bucket_counts=list(buckets),
                        explicit_bounds=bounds,
                        min=math.inf,
                        max=-math.inf,
                    )
                )
            if self._delta:
                self._last = seen
        return points

    def log(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error >= 60.0:
            self._last_error = now
            logger.exception("%s; the collection goes on without it", message)
