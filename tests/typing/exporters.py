"""Uses of the Prometheus and OpenTelemetry exporters that mypy --strict must accept."""

from typing import Iterable, Optional

import prometheus_client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from prometheus_client.core import Metric

import cbsync
from cbsync.integrations.opentelemetry import Instrumentation, instrument
from cbsync.integrations.prometheus import DEFAULT_BUCKETS, BreakerCollector, register

registry = prometheus_client.CollectorRegistry()
collector: BreakerCollector = register(registry, cbsync.Registry(), buckets=DEFAULT_BUCKETS)
families: Iterable[Metric] = collector.collect()
registry.register(BreakerCollector(cbsync.CircuitBreaker("typed"), buckets=[0.01, 0.1, 1.0]))
value: Optional[float] = registry.get_sample_value("cbsync_rejected_total", {"breaker": "typed"})

reader = InMemoryMetricReader()
metrics: Instrumentation = instrument(meter_provider=MeterProvider(metric_readers=[reader]))
metrics.bridge(reader, temporality=AggregationTemporality.CUMULATIVE)
metrics.close()
