"""Latency histogram and counters for cymqtt-bench.

The histogram is log-linear over microseconds (HdrHistogram's idea, much simplified): values
below 32 us are exact, above that each power of two is split in 16 buckets, so any percentile
read back is within about 3 % of the true value. It is a plain list of ints, so a worker can
send it over a pipe and the coordinator can add them up.
"""
from __future__ import annotations

SMALL = 32                    # values below this (us) get one bucket each
MAX_BITS = 40                 # 2**40 us = 12.7 days: anything above is clamped
SIZE = (MAX_BITS << 4) + 16   # number of buckets


def bucket(us: int) -> int:
    """The bucket index for a latency of `us` microseconds (negative counts as 0)."""
    if us < SMALL:
        return us if us > 0 else 0
    b = us.bit_length()
    if b > MAX_BITS:
        return SIZE - 1
    return (b << 4) | ((us >> (b - 5)) & 15)


def bucket_value(index: int) -> float:
    """The midpoint (us) of bucket `index`."""
    if index < SMALL:
        return float(index)
    b, m = index >> 4, index & 15
    lo = (16 + m) << (b - 5)
    hi = (17 + m) << (b - 5)
    return (lo + hi - 1) / 2.0


def new_histogram() -> list[int]:
    return [0] * SIZE


def merge(into: list[int], other: list[int]) -> None:
    for i, n in enumerate(other):
        if n:
            into[i] += n


def percentile(hist: list[int], q: float) -> float | None:
    """The q-th percentile (0..100) of `hist` in microseconds, or None when it is empty."""
    total = sum(hist)
    if not total:
        return None
    rank = max(1, int(total * q / 100.0 + 0.999999))
    seen = 0
    for i, n in enumerate(hist):
        if n:
            seen += n
            if seen >= rank:
                return bucket_value(i)
    return bucket_value(SIZE - 1)  # pragma: no cover - rank <= total


def mean(hist: list[int]) -> float | None:
    total = sum(hist)
    if not total:
        return None
    return sum(bucket_value(i) * n for i, n in enumerate(hist) if n) / total


def summary_ms(hist: list[int], max_us: int | None) -> dict | None:
    """{p50, p90, p99, p999, max, mean} in milliseconds (3 decimals), or None without samples."""
    if not sum(hist):
        return None

    def ms(us: float | None) -> float | None:
        if us is None:
            return None
        if max_us is not None:          # a bucket's midpoint may lie above the true maximum
            us = min(us, max_us)
        return round(us / 1000.0, 3)

    return {"p50": ms(percentile(hist, 50)), "p90": ms(percentile(hist, 90)),
            "p99": ms(percentile(hist, 99)), "p999": ms(percentile(hist, 99.9)),
            "max": ms(max_us), "mean": ms(mean(hist))}
