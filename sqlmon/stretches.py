"""What a stretch is worth to a run: the one rule that clips a worker's stretch to a run's
window, used by the scheduler's running totals, the report and the timeline alike (the
worker_intervals view applies the same rule in SQL; a test holds the two together).

A stretch counts, in seconds, inside every run whose window it overlaps, for the overlap only,
so adding runs never counts a second twice; as a task it counts once, in the run where it
ended.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from .states import State

IDLE_KEY = ""  # stretch_totals' category for idle stretches (a primary key has no NULL)


class Window(NamedTuple):
    run_id: int
    start: float
    end: float  # float("inf") for the run still being recorded


class Stretch(NamedTuple):
    id: int
    worker_id: str
    category: str | None  # None: idle
    started: float
    ended: float
    outcome: str


class Total(NamedTuple):
    n: int
    seconds: float
    first_started: float
    last_ended: float


TotalKey = tuple[int, str, str, str, str]  # run_id, worker_id, category ('' idle), state, outcome


def clip(started: float, ended: float, window: Window) -> tuple[float, float] | None:
    """The part of [started, ended] inside `window`, or None when they do not overlap."""
    a, b = max(started, window.start), min(ended, window.end)
    if b < a or (b == a and not window.start <= started < window.end):
        return None
    return a, b


def ends_in(ended: float, window: Window) -> bool:
    """Whether a stretch that ended at `ended` counts as a task of `window`'s run."""
    return window.start < ended <= window.end


def fold(
    stretches: Iterable[Stretch], windows: list[Window], into: dict[TotalKey, Total] | None = None
) -> dict[TotalKey, Total]:
    """Add each stretch's share of each window to the totals `into` (a new dict by default).

    Runs once a cycle over every stretch recorded since the last: windows are walked from the
    latest back only as far as the stretch reaches, and sums are kept in lists until the end,
    so that the common case (a stretch wholly inside the current run) costs a few comparisons
    and one dict update.
    """
    sums: dict[TotalKey, list[Any]] = {k: list(t) for k, t in (into or {}).items()}
    latest_first = sorted(((w.start, w.end, w.run_id) for w in windows), reverse=True)
    busy, idle = str(State.BUSY), str(State.IDLE)
    for _id, worker, category, started, ended, outcome in stretches:
        state, key_category = (idle, IDLE_KEY) if category is None else (busy, category)
        for start, end, run_id in latest_first:
            if end < started:
                break  # this window and all before it ended before the stretch began
            if start <= started and ended <= end:
                a, b = started, ended  # wholly inside: the common case, no clipping
            else:
                part = clip(started, ended, Window(run_id, start, end))
                if part is None:
                    continue
                a, b = part
            n = 1 if start < ended <= end else 0
            key = (run_id, worker, key_category, state, outcome)
            acc = sums.get(key)
            if acc is None:
                sums[key] = [n, b - a, a, b]
            else:
                acc[0] += n
                acc[1] += b - a
                if a < acc[2]:
                    acc[2] = a
                if b > acc[3]:
                    acc[3] = b
    out: dict[TotalKey, Total] = {} if into is None else into
    for key, (n, seconds, first, last) in sums.items():
        out[key] = Total(n, seconds, first, last)
    return out
