"""Post-run analysis as plain data: each worker's and category's figures from the stretches
the workers recorded (usage.py), the backlog, stale episodes, deaths and cycles from the
scheduler's history."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from .queries import natural
from .schema import runs, snapshot_counts, snapshots, tasks, worker_events
from .states import Event
from .stretches import Window
from .usage import CategoryUse, run_use


@dataclass(frozen=True)
class WorkerReport:
    worker_id: str
    busy_seconds: float  # in its busy stretches, outside stale episodes
    seen_seconds: float  # covered by its stretches in the run: busy + idle + stale
    stale_episodes: int
    longest_gap: float | None  # s without a beat, at least; None: never past stale_after
    idle_seconds: float = 0.0
    stale_seconds: float = 0.0  # of its stretches, inside its stale episodes
    dead_seconds: float = 0.0  # from a death to its next join, or the run's end
    tasks_done: int = 0  # busy stretches that ended in the run without an exception
    failed: int = 0  # ... that ended by an exception
    died_in_task: int = 0  # ... that its death cut short

    @property
    def utilisation(self) -> float:
        return self.busy_seconds / self.seen_seconds if self.seen_seconds > 0 else 0.0


@dataclass(frozen=True)
class CategoryReport:
    category: str
    busy_seconds: float  # worker-seconds, outside stale episodes
    tasks_done: int | None  # busy stretches that ended in the run without an exception
    per_second: float | None  # tasks done per second of the category's own active window
    failed: int = 0
    active_seconds: float = 0.0  # from its first stretch's start to its last one's end
    task_table_done: int | None = None  # the bundled task table's count; None: another table
    task_table_failed: int | None = None


@dataclass(frozen=True)
class BacklogPeak:
    pool: str
    category: str
    pending: int
    at: float  # unix s: the first snapshot that saw the peak


@dataclass(frozen=True)
class StaleEpisode:
    worker_id: str
    started: float
    seconds: float
    outcome: str  # recovered, dead, exited, or "not recovered" (still stale at the run's end)

    @property
    def recovered(self) -> bool:
        return self.outcome == "recovered"


@dataclass(frozen=True)
class DeadWorker:
    worker_id: str
    at: float
    detail: str | None


@dataclass(frozen=True)
class CycleStats:
    cycles: int
    mean: float | None
    p95: float | None
    max: float | None
    writes_skipped: int
    late: int


@dataclass(frozen=True)
class Report:
    run_id: int
    state: str  # ended, running, vanished
    started_at: float
    end: float  # its end, or the last snapshot while it runs or after it vanished
    end_reason: str | None
    drained_at: float | None  # the idle verdict that held to the end; None: never drained
    stale_after: float | None
    workers: list[WorkerReport]
    categories: list[CategoryReport]
    peaks: list[BacklogPeak]
    stale: list[StaleEpisode]
    dead: list[DeadWorker]
    cycles: CycleStats

    @property
    def length(self) -> float:
        return self.end - self.started_at

    @property
    def time_to_drain(self) -> float | None:
        return None if self.drained_at is None else self.drained_at - self.started_at


def drained_at(conn: Connection, run_id: int) -> float | None:
    """When the run's idle verdict began that held to its end (the drain), or None."""
    s = snapshots.c
    last_busy = conn.execute(
        sa.select(sa.func.max(s.ts)).where(s.run_id == run_id, s.idle == 0)
    ).scalar()
    q = sa.select(sa.func.min(s.ts)).where(s.run_id == run_id, s.idle == 1)
    if last_busy is not None:
        q = q.where(s.ts > last_busy)
    got = conn.execute(q).scalar()
    return None if got is None else float(got)


def run_report(conn: Connection, run_id: int, *, state: str, end: float) -> Report:
    """The post-run analysis of one run; `end` is the run's end or the last moment it lived."""
    run = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).one()
    settings = json.loads(run.config or "{}")
    stale_after = settings.get("stale_after")
    drained = drained_at(conn, run_id)
    stale, dead = troubles(conn, run_id, end)
    gaps: dict[str, float] = {}
    for ep in stale:
        # Stale means no beat for stale_after s; the episode's length comes on top of that.
        gap = ep.seconds + (stale_after or 0.0)
        gaps[ep.worker_id] = max(gap, gaps.get(ep.worker_id, 0.0))
    episodes = Counter(ep.worker_id for ep in stale)
    window = Window(run_id, run.started_at, end)
    use = run_use(conn, window, [(e.worker_id, e.started, e.started + e.seconds) for e in stale])
    workers = [
        WorkerReport(
            w,
            u.busy,
            u.seen,
            episodes.get(w, 0),
            gaps.get(w),
            u.idle,
            u.stale,
            u.dead,
            u.done,
            u.failed,
            u.died,
        )
        for w, u in sorted(use.workers.items(), key=lambda kv: natural(kv[0]))
    ]
    table = _task_table(conn, settings, run.started_at, end)
    categories = []
    for category in sorted(set(use.categories) | set(table or {})):
        k = use.categories.get(category, CategoryUse())
        done, failed = (None, None) if table is None else table.get(category, (0, 0))
        categories.append(
            CategoryReport(
                category,
                k.busy,
                k.done,
                k.done / k.active if k.active > 0 else None,
                k.failed,
                k.active,
                done,
                failed,
            )
        )
    return Report(
        run_id=run_id,
        state=state,
        started_at=run.started_at,
        end=end,
        end_reason=run.end_reason,
        drained_at=drained,
        stale_after=stale_after,
        workers=workers,
        categories=categories,
        peaks=_peaks(conn, run_id),
        stale=stale,
        dead=dead,
        cycles=_cycles(conn, run_id),
    )


def troubles(
    conn: Connection, run_id: int, end: float
) -> tuple[list[StaleEpisode], list[DeadWorker]]:
    e = worker_events.c
    open_: dict[str, float] = {}
    episodes: list[StaleEpisode] = []
    dead: list[DeadWorker] = []
    for worker, event, ts, detail in conn.execute(
        sa.select(e.worker_id, e.event, e.ts, e.detail)
        .where(
            e.run_id == run_id,
            e.event.in_((Event.STALE, Event.RECOVERED, Event.DEAD, Event.EXITED)),
        )
        .order_by(e.ts, e.id)
    ):
        if event == Event.DEAD:
            dead.append(DeadWorker(worker, ts, detail))
        if event == Event.STALE:
            open_[worker] = ts
        elif worker in open_:
            started = open_.pop(worker)
            episodes.append(StaleEpisode(worker, started, ts - started, event))
    for worker, started in open_.items():
        episodes.append(StaleEpisode(worker, started, max(0.0, end - started), "not recovered"))
    episodes.sort(key=lambda ep: (ep.started, ep.worker_id))
    return episodes, dead


def _task_table(
    conn: Connection, settings: dict[str, object], started: float, end: float
) -> dict[str, tuple[int, int]] | None:
    """Per category, the bundled task table's (done, failed) finished in the window."""
    # Only the bundled task table can be counted from here: a pipeline's own table may live
    # elsewhere, under other names.
    if settings.get("task_table", "tasks") != "tasks" or settings.get("task_database"):
        return None
    out: dict[str, tuple[int, int]] = {}
    for category, done, failed in conn.execute(
        sa.select(
            tasks.c.category,
            sa.func.sum(sa.case((tasks.c.status == "done", 1), else_=0)),
            sa.func.sum(sa.case((tasks.c.status == "failed", 1), else_=0)),
        )
        .where(tasks.c.status.in_(("done", "failed")), tasks.c.finished_at.between(started, end))
        .group_by(tasks.c.category)
    ):
        out[category] = (int(done), int(failed))
    return out


def _peaks(conn: Connection, run_id: int) -> list[BacklogPeak]:
    c, s = snapshot_counts.c, snapshots.c
    lo, hi = conn.execute(
        sa.select(sa.func.min(s.id), sa.func.max(s.id)).where(s.run_id == run_id)
    ).one()
    if lo is None:
        return []
    # Each peak and its first snapshot are two seeks in the (pool, category, pending,
    # snapshot_id) index; grouping the run's counts instead sorts every one of them (86,400
    # cycles x the categories for a day). A run's snapshot ids are one range between its first
    # and last: another run's ids inside it (two schedulers at once) could only raise a peak.
    keys = _keys(conn)
    in_run = c.snapshot_id.between(lo, hi)
    peak_q = sa.select(sa.func.max(c.pending)).where(
        c.pool == sa.bindparam("p"), c.category == sa.bindparam("k"), in_run
    )
    first_q = (
        sa.select(s.ts)
        .select_from(sa.join(snapshot_counts, snapshots, s.id == c.snapshot_id))
        .where(
            c.pool == sa.bindparam("p"),
            c.category == sa.bindparam("k"),
            in_run,
            c.pending == sa.bindparam("peak"),
        )
        .order_by(c.snapshot_id)
        .limit(1)
    )
    out = []
    for pool, category in sorted(keys):
        peak = conn.execute(peak_q, {"p": pool, "k": category}).scalar()
        if peak is None:
            continue  # a key of another run only
        first = conn.execute(first_q, {"p": pool, "k": category, "peak": peak}).scalar_one()
        out.append(BacklogPeak(pool, category, int(peak), float(first)))
    return out


def _keys(conn: Connection) -> list[tuple[str, str]]:
    """Every (pool, category) of snapshot_counts, by seeks in the peak index (a loose index
    scan): DISTINCT would read every row of it, 864,000 for a day (1.2 s here). The next key is
    the next category of the same pool, else the first of the next pool: two plain seeks (a
    row-value `(pool, category) > (?, ?)` makes SQLite seek on pool alone, then scan)."""
    c = snapshot_counts.c
    first = sa.select(c.pool, c.category).order_by(c.pool, c.category).limit(1)
    same_pool = first.where(c.pool == sa.bindparam("p"), c.category > sa.bindparam("k"))
    next_pool = first.where(c.pool > sa.bindparam("p"))
    keys: list[tuple[str, str]] = []
    row = conn.execute(first).first()
    while row is not None:
        keys.append((row[0], row[1]))
        row = (
            conn.execute(same_pool, {"p": row[0], "k": row[1]}).first()
            or conn.execute(next_pool, {"p": row[0]}).first()
        )
    return keys


def _cycles(conn: Connection, run_id: int) -> CycleStats:
    s = snapshots.c
    n, mean, top, skipped, late = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.avg(s.cycle_seconds),
            sa.func.max(s.cycle_seconds),
            sa.func.sum(s.writes_skipped),
            sa.func.sum(s.late),
        ).where(s.run_id == run_id)
    ).one()
    p95 = None
    if n:
        # The nearest-rank 95th percentile: one sorted read of a single column.
        p95 = conn.execute(
            sa.select(s.cycle_seconds)
            .where(s.run_id == run_id)
            .order_by(s.cycle_seconds)
            .limit(1)
            .offset(max(0, math.ceil(0.95 * n) - 1))
        ).scalar()
    return CycleStats(int(n), mean, p95, top, int(skipped or 0), int(late or 0))
