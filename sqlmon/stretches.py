"""What a stretch is worth to a run: the one rule that clips a worker's stretch to a run's
window, used by the scheduler's running totals, the report and the timeline alike (the
worker_intervals view applies the same rule in SQL; a test holds the two together).

A stretch counts, in seconds, inside every run whose window it overlaps, for the overlap only,
so adding runs never counts a second twice; as a task it counts once, in the run where it
ended.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

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
    """Add each stretch's share of each window to the totals `into` (a new dict by default)."""
    out: dict[TotalKey, Total] = {} if into is None else into
    for s in stretches:
        state = State.IDLE if s.category is None else State.BUSY
        category = IDLE_KEY if s.category is None else s.category
        for w in windows:
            part = clip(s.started, s.ended, w)
            if part is None:
                continue
            a, b = part
            key = (w.run_id, s.worker_id, category, str(state), s.outcome)
            n = int(ends_in(s.ended, w))
            old = out.get(key)
            if old is None:
                out[key] = Total(n, b - a, a, b)
            else:
                out[key] = Total(
                    old.n + n,
                    old.seconds + (b - a),
                    min(old.first_started, a),
                    max(old.last_ended, b),
                )
    return out
