"""End-to-end latency (a message's send time to its row's commit) in histogram buckets (pure).

The workers count every committed message's latency twice, in the same buckets: in the
``etl_end_to_end_lag_seconds`` histogram (Prometheus, the dashboard and EtlLagHigh) and in
per-minute counts in Redis (what ``etl stats`` reads without a Prometheus). ``quantile`` reads a
percentile from bucket counts the way PromQL's ``histogram_quantile`` does, so both agree.
"""

import bisect
from collections.abc import Iterable, Mapping

# Upper bounds in seconds; a last, unbounded bucket ("+Inf") holds the rest. 1.5 and 2.0 so that the
# latency bound (p99 <= 2 s at everyday load, docs/performance.md) is read at its value: between 1.0
# and 2.5 an interpolated p99 of 1.1 s read as 2.4 s.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
INF = "+Inf"
LABELS = tuple(str(bound) for bound in BUCKETS)


def bucket_of(seconds: float) -> str:
    """The bucket a latency falls in: its upper bound as the client library writes ``le``."""
    i = bisect.bisect_left(BUCKETS, seconds)
    return LABELS[i] if i < len(BUCKETS) else INF


def bucket_counts(latencies: Iterable[float]) -> dict[str, int]:
    """How many of ``latencies`` (seconds) fall in each bucket (buckets with none left out)."""
    counts: dict[str, int] = {}
    for seconds in latencies:
        key = bucket_of(seconds)
        counts[key] = counts.get(key, 0) + 1
    return counts


def merge(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The sum of several bucket counts (e.g. one per minute)."""
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + int(n)
    return total


def quantile(q: float, counts: Mapping[str, int]) -> float | None:
    """The ``q``-quantile (0..1) of bucketed latencies, or None without any.

    As PromQL's histogram_quantile: linear interpolation inside the bucket that holds the rank,
    from 0 for the first bucket; a rank in the unbounded bucket reads as the highest bound.
    """
    total = sum(counts.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for bound in BUCKETS:
        n = counts.get(str(bound), 0)
        if n and seen + n >= rank:
            return lower + (bound - lower) * (rank - seen) / n
        seen += n
        lower = bound
    return BUCKETS[-1]


def summary(parts: Iterable[Mapping[str, int]], minutes: int) -> dict[str, float | int | None]:
    """p50 and p99 (seconds, rounded to ms) over per-minute counts of the last ``minutes``."""
    counts = merge(parts)
    p50, p99 = quantile(0.5, counts), quantile(0.99, counts)
    return {
        "window_minutes": minutes,
        "messages": sum(counts.values()),
        "p50_s": None if p50 is None else round(p50, 3),
        "p99_s": None if p99 is None else round(p99, 3),
    }
