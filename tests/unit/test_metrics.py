"""The lag histogram moved a chunk at a time reads exactly as one observe() per message."""

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from etl.model import latency
from etl.worker import metrics


def _samples(histogram: Histogram) -> dict[str, float]:
    return {
        f"{s.name}{sorted(s.labels.items())}": round(s.value, 6)
        for family in histogram.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _histogram() -> Histogram:
    return Histogram("lag", "lag", buckets=latency.BUCKETS, registry=CollectorRegistry())


@given(st.lists(st.floats(min_value=0, max_value=10_000) | st.sampled_from(latency.BUCKETS), max_size=200))
def test_a_chunk_of_latencies_reads_as_one_observe_each(lags: list[float]) -> None:
    one_by_one, at_once = _histogram(), _histogram()
    for lag in lags:
        one_by_one.observe(lag)
    metrics.observe_latencies(at_once, lags, latency.bucket_counts(lags))
    assert _samples(at_once) == _samples(one_by_one)


def test_without_prometheus_clients_bucket_values_each_latency_is_observed() -> None:
    class Plain:  # a histogram that keeps its buckets elsewhere
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    metrics.observe_latencies(plain, [0.2, 7.0], latency.bucket_counts([0.2, 7.0]))  # type: ignore[arg-type]
    assert plain.seen == [0.2, 7.0]
