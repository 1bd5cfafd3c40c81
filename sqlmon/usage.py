"""What each worker did in a run, from the stretches it recorded: busy, idle, stale and dead
seconds and its tasks, by the one rule of stretches.py.

A run's figures are the scheduler's running totals (stretch_totals), plus the stretches it has
not folded yet and the stretches still open, each clipped to the run's window: a few hundred
rows and a short range of the record, however long the run. Stale time is taken out of the
busy or idle stretch it fell in, by seeks on the (worker_id, started) index.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from . import stretches
from .states import Event, Outcome, State
from .stretches import IDLE_KEY, Stretch, Total, TotalKey, Window


@dataclass
class WorkerUse:
    busy: float = 0.0  # s, stale time taken out
    idle: float = 0.0
    stale: float = 0.0  # s of its stretches inside a stale episode
    dead: float = 0.0  # s from a death to its next join or the run's end
    done: int = 0  # busy stretches that ended in the run: ok
    failed: int = 0  # ... that raised
    died: int = 0  # ... cut short by its death

    @property
    def seen(self) -> float:
        return self.busy + self.idle + self.stale


@dataclass
class CategoryUse:
    busy: float = 0.0  # worker-seconds, stale time taken out
    done: int = 0
    failed: int = 0
    died: int = 0
    first: float = float("inf")  # the category's own active window inside the run
    last: float = -float("inf")

    @property
    def active(self) -> float:
        return max(0.0, self.last - self.first)


@dataclass
class RunUse:
    workers: dict[str, WorkerUse] = field(default_factory=lambda: defaultdict(WorkerUse))
    categories: dict[str, CategoryUse] = field(default_factory=lambda: defaultdict(CategoryUse))


def totals(conn: Connection, window: Window) -> dict[TotalKey, Total]:
    """The run's totals: folded, unfolded and open stretches, clipped to `window`."""
    out: dict[TotalKey, Total] = {
        (window.run_id, w, c, s, o): Total(n, secs, a, b)
        for w, c, s, o, n, secs, a, b in _q(conn, _TOTALS, run=window.run_id)
    }
    folded = conn.execute(sa.text("SELECT folded_id FROM scheduler_state")).scalar() or 0
    # Only the stretches recorded since the last fold: a range of the primary key.
    unfolded = map(
        Stretch._make, _q(conn, _UNFOLDED, after=folded, end=window.end, start=window.start)
    )
    stretches.fold(unfolded, [window], out)
    stretches.fold(open_stretches(conn, window), [window], out)
    return out


def open_stretches(conn: Connection, window: Window) -> list[Stretch]:
    """Each worker's open stretch, as if it ended at the window's end."""
    return [
        Stretch(0, w, c, since, window.end, str(Outcome.OPEN))
        for w, c, since in _q(conn, _OPEN, end=window.end)
    ]


def run_use(conn: Connection, window: Window, stale: list[tuple[str, float, float]]) -> RunUse:
    """Per worker and per category, the run's use; `stale` holds (worker, start, end) of the
    run's stale episodes."""
    use = RunUse()
    for (_, worker, category, state, outcome), t in totals(conn, window).items():
        w = use.workers[worker]
        if state == State.IDLE:
            w.idle += t.seconds
            continue
        w.busy += t.seconds
        k = use.categories[category]
        k.busy += t.seconds
        k.first, k.last = min(k.first, t.first_started), max(k.last, t.last_ended)
        if outcome == Outcome.OK:
            w.done += t.n
            k.done += t.n
        elif outcome == Outcome.FAILED:
            w.failed += t.n
            k.failed += t.n
        elif outcome == Outcome.DEAD:
            w.died += t.n
            k.died += t.n
    for worker, a, b in stale:
        part = stretches.clip(a, b, window)
        if part is None:
            continue
        for category, seconds in _stale_overlap(conn, worker, *part, window).items():
            w = use.workers[worker]
            w.stale += seconds
            if category == IDLE_KEY:
                w.idle -= seconds
            else:
                w.busy -= seconds
                use.categories[category].busy -= seconds
    for worker, seconds in _dead(conn, window).items():
        use.workers[worker].dead += seconds
    return use


def _stale_overlap(
    conn: Connection, worker: str, a: float, b: float, window: Window
) -> dict[str, float]:
    """Seconds of `worker`'s stretches inside [a, b], per category (IDLE_KEY for idle)."""
    out: dict[str, float] = defaultdict(float)
    found = [(c, s, e) for c, s, e in _q(conn, _AROUND, w=worker, a=a, b=b)]
    found += [
        (s.category, s.started, s.ended)
        for s in open_stretches(conn, window)
        if s.worker_id == worker
    ]
    for category, started, ended in found:
        lo, hi = max(started, a), min(ended, b)
        if hi > lo:
            out[IDLE_KEY if category is None else category] += hi - lo
    return out


def _dead(conn: Connection, window: Window) -> dict[str, float]:
    """Per worker, the seconds from each death to its next join (or the run's end)."""
    out: dict[str, float] = defaultdict(float)
    died: dict[str, float] = {}
    for worker, event, ts in _q(conn, _DEATHS, run=window.run_id):
        if event == Event.DEAD:
            died.setdefault(worker, ts)
        elif worker in died:
            out[worker] += max(0.0, ts - died.pop(worker))
    for worker, ts in died.items():
        out[worker] += max(0.0, window.end - ts)
    return out


def _q(conn: Connection, sql: str, **values: object) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sa.text(sql), values)]


_TOTALS = (
    "SELECT worker_id, category, state, outcome, n, seconds, first_started, last_ended "
    "FROM stretch_totals WHERE run_id = :run"
)
_UNFOLDED = (
    f"SELECT {', '.join(Stretch._fields)} FROM worker_stretches "
    "WHERE id > :after AND started <= :end AND ended >= :start"
)
# Open: not exited, and not closed already by the scheduler at a death it found.
_OPEN = (
    "SELECT w.worker_id, w.category, w.category_since FROM worker_status AS w "
    "WHERE w.exited_at IS NULL AND w.category_since IS NOT NULL AND w.category_since < :end "
    "AND NOT EXISTS (SELECT 1 FROM worker_stretches AS x "
    "WHERE x.worker_id = w.worker_id AND x.started = w.category_since)"
)
# The worker's stretches that overlap [a, b]: from the last one started by a, up to b.
_AROUND = (
    "SELECT category, started, ended FROM worker_stretches WHERE worker_id = :w "
    "AND started < :b AND started >= COALESCE((SELECT started FROM worker_stretches "
    "WHERE worker_id = :w AND started <= :a ORDER BY started DESC LIMIT 1), :a)"
)
_DEATHS = (
    "SELECT worker_id, event, ts FROM worker_events WHERE run_id = :run "
    f"AND event IN ('{Event.DEAD}', '{Event.JOINED}') ORDER BY ts, id"
)
