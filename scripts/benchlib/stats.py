"""Order statistics over samples in nanoseconds or seconds: no numpy needed."""

from __future__ import annotations

import math
from collections.abc import Sequence


def quantile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method: a real sample, never interpolated."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])


def median(samples: Sequence[float]) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    n = len(ordered)
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def cores(share: float) -> str:
    """Another process's CPU share, as measured from the whole machine's /proc/stat less the
    processes' own /proc/PID/stat. The two are sampled separately and differ by a few % of a
    core over a minute: below zero means none."""
    return f"{share:.0%}" if share >= 0 else f"none ({share:.0%}, the accounts' own error)"
