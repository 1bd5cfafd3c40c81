"""Post-run analysis as plain data: queries over the history tables and views."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from .db import Prepared
from .schema import runs, snapshot_counts, snapshots, tasks, worker_events


@dataclass(frozen=True)
class WorkerReport:
    worker_id: str
    busy_seconds: float
    seen_seconds: float  # from its first event in the run to its exit or the run's end
    stale_episodes: int
    longest_gap: float | None  # s without a beat, at least; None: never past stale_after

    @property
    def utilisation(self) -> float:
        return self.busy_seconds / self.seen_seconds if self.seen_seconds > 0 else 0.0


@dataclass(frozen=True)
class CategoryReport:
    category: str
    busy_seconds: float  # worker-seconds
    tasks_done: int | None  # None when the run's task table is not the bundled one
    per_second: float | None  # tasks finished per second until the drain (or the run's end)


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


def run_report(conn: Connection, run_id: int, *, state: str, end: float) -> Report:
    """The post-run analysis of one run; `end` is the run's end or the last moment it lived."""
    run = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).one()
    settings = json.loads(run.config or "{}")
    stale_after = settings.get("stale_after")
    s = snapshots.c
    last_busy = conn.execute(
        sa.select(sa.func.max(s.ts)).where(s.run_id == run_id, s.idle == 0)
    ).scalar()
    drained_q = sa.select(sa.func.min(s.ts)).where(s.run_id == run_id, s.idle == 1)
    if last_busy is not None:
        drained_q = drained_q.where(s.ts > last_busy)
    drained = conn.execute(drained_q).scalar()
    stale, dead = troubles(conn, run_id, end)
    gaps: dict[str, float] = {}
    for ep in stale:
        # Stale means no beat for stale_after s; the episode's length comes on top of that.
        gap = ep.seconds + (stale_after or 0.0)
        gaps[ep.worker_id] = max(gap, gaps.get(ep.worker_id, 0.0))
    episodes = Counter(ep.worker_id for ep in stale)
    use, per_category = _busy(conn, run_id, end)
    workers = [
        WorkerReport(w, busy, seen, episodes.get(w, 0), gaps.get(w)) for w, busy, seen in use
    ]
    done = _tasks_done(conn, settings, run.started_at, end)
    span = (drained if drained is not None else end) - run.started_at
    categories = []
    for category in sorted(set(per_category) | set(done or {})):
        n = None if done is None else done.get(category, 0)
        categories.append(
            CategoryReport(
                category,
                per_category.get(category, 0.0),
                n,
                None if n is None or span <= 0 else n / span,
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
        .where(e.run_id == run_id, e.event.in_(("stale", "recovered", "dead", "exited")))
        .order_by(e.id)
    ):
        if event == "dead":
            dead.append(DeadWorker(worker, ts, detail))
        if event == "stale":
            open_[worker] = ts
        elif worker in open_:
            started = open_.pop(worker)
            episodes.append(StaleEpisode(worker, started, ts - started, event))
    for worker, started in open_.items():
        episodes.append(StaleEpisode(worker, started, max(0.0, end - started), "not recovered"))
    episodes.sort(key=lambda ep: (ep.started, ep.worker_id))
    return episodes, dead


def _busy(
    conn: Connection, run_id: int, end: float
) -> tuple[list[tuple[str, float, float]], dict[str, float]]:
    """Per worker (busy s, seen s) and per category busy worker-seconds, from the run's own
    events: each change of state lasts until the worker's next one, the last until the run's
    end (the scheduler keeps a run's events in order and inside the run: it clamps worker
    clocks); after an exit or a death nothing counts.

    One read of the run's events in the order of the covering (run_id, worker_id, id, ...)
    index, walked here: a lead() window per worker cost more (0.44-0.54 s against 0.25-0.39 s
    for a day's 136,617 events), and the worker_intervals view numbers every run's events.
    """
    seen: dict[str, float] = {}
    busy: dict[str, float] = {}
    per_category: dict[str, float] = {}

    def close(worker: str, category: str | None, started: float, until: float) -> None:
        seconds = until - started
        seen[worker] = seen.get(worker, 0.0) + seconds
        busy.setdefault(worker, 0.0)
        if category is not None:
            busy[worker] += seconds
            per_category[category] = per_category.get(category, 0.0) + seconds

    last: tuple[str, str, str | None, float] | None = None  # worker, event, category, ts
    for worker, event, category, ts in _RUN_EVENTS.rows(conn, (run_id,)):
        if event not in _CHANGES:
            continue  # stale / recovered change nothing the worker holds
        if last is not None and last[1] not in _ENDS:
            close(last[0], last[2], last[3], ts if worker == last[0] else end)
        last = (worker, event, category, ts)
    if last is not None and last[1] not in _ENDS:
        close(last[0], last[2], last[3], end)
    use = [(w, busy[w], seen[w]) for w in sorted(seen)]
    return use, per_category


_CHANGES = frozenset(("joined", "busy", "idle", "category", "exited", "dead"))
_ENDS = frozenset(("exited", "dead"))
_RUN_EVENTS = Prepared(
    sa.select(
        worker_events.c.worker_id,
        worker_events.c.event,
        worker_events.c.category,
        worker_events.c.ts,
    )
    .where(worker_events.c.run_id == sa.bindparam("run_id"))
    .order_by(worker_events.c.worker_id, worker_events.c.id),
    ("run_id",),
)


def _tasks_done(
    conn: Connection, settings: dict[str, object], started: float, end: float
) -> dict[str, int] | None:
    # Only the bundled task table can be counted from here: a pipeline's own table may live
    # elsewhere, under other names.
    if settings.get("task_table", "tasks") != "tasks" or settings.get("task_database"):
        return None
    return dict(
        conn.execute(  # type: ignore[arg-type]
            sa.select(tasks.c.category, sa.func.count())
            .where(tasks.c.status == "done", tasks.c.finished_at.between(started, end))
            .group_by(tasks.c.category)
        ).all()
    )


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
