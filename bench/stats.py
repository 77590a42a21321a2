"""Percentiles and the small numeric helpers the phases share."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values. ``inf`` (no answer) sorts last."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "p999_ms": percentile(ms, 99.9),
        "max_ms": max(ms) if ms else math.nan,
        "count": len(ms),
    }


def perf_to_wall() -> float:
    """What to add to a ``time.perf_counter()`` reading to put it on ``time.time()``'s
    scale, read now: latencies are timed with the perf counter, and compared with wall-clock
    stamps other processes write (``$EPOCHREALTIME``, Postgres's ``recorded_at``) through it."""
    return time.time() - time.perf_counter()
