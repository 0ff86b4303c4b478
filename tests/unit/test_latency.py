"""End-to-end latency buckets and percentiles, read as PromQL's histogram_quantile reads them."""

import pytest

from etl.model import latency


def test_a_latency_falls_in_the_first_bucket_whose_bound_holds_it() -> None:
    assert latency.bucket_of(0.0) == "0.1"
    assert latency.bucket_of(0.1) == "0.1"
    assert latency.bucket_of(0.11) == "0.25"
    assert latency.bucket_of(3600) == "3600.0"
    assert latency.bucket_of(3600.5) == latency.INF
    assert latency.bucket_counts([0.05, 0.07, 0.3, 9999]) == {"0.1": 2, "0.5": 1, "+Inf": 1}


def test_quantiles_interpolate_inside_the_bucket_like_histogram_quantile() -> None:
    assert latency.quantile(0.5, {}) is None
    # 10 in (0.25, 0.5]: the median is halfway through that bucket
    assert latency.quantile(0.5, {"0.5": 10}) == pytest.approx(0.375)
    # 90 in (0, 0.1], 10 in (5, 10]: p50 in the first bucket, p99 nine tenths into the last
    counts = {"0.1": 90, "10.0": 10}
    assert latency.quantile(0.5, counts) == pytest.approx(0.1 * 50 / 90)
    assert latency.quantile(0.99, counts) == pytest.approx(5 + 5 * 9 / 10)
    # a rank in the unbounded bucket reads as the highest bound, as Prometheus does
    assert latency.quantile(0.99, {"0.1": 1, "+Inf": 99}) == 3600.0


def test_a_summary_merges_minutes() -> None:
    minutes = [{"0.5": 4}, {}, {"0.5": 6}]
    assert latency.summary(minutes, 15) == {"window_minutes": 15, "messages": 10, "p50_s": 0.375, "p99_s": 0.497}
    assert latency.summary([], 15) == {"window_minutes": 15, "messages": 0, "p50_s": None, "p99_s": None}
