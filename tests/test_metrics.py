"""The latency histogram and the lock-free counter."""

import random
import threading

import pytest

from cbsync._metrics import AtomicCounter, LatencyHistogram


def exact_percentile(values, fraction):
    ordered = sorted(values)
    return ordered[max(0, int(fraction * len(ordered)) - 1)]


def test_single_and_batch_records_agree():
    """A batch lands in the same buckets as one-by-one records."""
    rng = random.Random(7)
    values = [rng.expovariate(1000) for _ in range(2000)] + [0.0, 1e-9, 5000.0]
    one, batch = LatencyHistogram(), LatencyHistogram()
    for value in values:
        one.record(value)
    batch.record_many(list(values))
    assert one._buckets == batch._buckets
    assert (one.count, one.total) == (batch.count, pytest.approx(batch.total))


def test_batches_are_counted_exactly():
    """A large batch keeps exact count, total and percentiles (to the bucket)."""
    rng = random.Random(3)
    values = [rng.lognormvariate(-7, 0.5) for _ in range(10_001)]
    histogram = LatencyHistogram()
    histogram.record_many(list(values))
    assert sum(histogram._buckets) == histogram.count == len(values)
    assert histogram.average() == pytest.approx(sum(values) / len(values))
    for fraction in (0.5, 0.99):
        truth = exact_percentile(values, fraction)
        assert truth <= histogram.percentile(fraction) <= truth * 1.05


def test_percentile_is_the_bucket_upper_bound():
    """A percentile is at most 5 % above the true latency."""
    histogram = LatencyHistogram()
    for _ in range(100):
        histogram.record(0.010)
    assert 0.010 <= histogram.percentile(0.99) <= 0.0105
    assert LatencyHistogram().percentile(0.99) is None


def test_atomic_counter_is_exact_under_threads():
    """Increments from many threads are never lost; reading does not count."""
    counter = AtomicCounter()
    barrier = threading.Barrier(8)

    def work():
        barrier.wait(10)
        for _ in range(20_000):
            counter.increment()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert counter.value() == 160_000
    assert counter.value() == 160_000


def test_a_batch_of_calls_too_fast_to_resolve():
    """A batch all under the first bucket's bound lands there, with exact count and total."""
    values = [i * 1e-8 for i in range(1000)]
    one, batch = LatencyHistogram(), LatencyHistogram()
    for value in values:
        one.record(value)
    batch.record_many(list(values))
    assert one._buckets == batch._buckets
    assert batch._buckets[0] == batch.count == 1000
    assert batch.total == pytest.approx(sum(values))
