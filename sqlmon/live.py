"""The live picture for `sqlmon serve` and `sqlmon metrics`: what the scheduler last committed,
read in one short transaction and returned as plain data.

Nothing here recounts the task table: the backlog is the latest snapshot's, the workers are
worker_status as the scheduler last judged them (queries.status), and the counters are the
scheduler's own rows. The only task-table read is the oldest pending task per category, one
index probe each, and only on the bundled `tasks` table (another table has no known layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import Connection

from . import config, liveness, queries
from .schema import HEAD, runs, snapshots, stretch_totals, worker_events, worker_status
from .states import LIVENESS_EVENTS, Outcome, State

# The events a transition counter counts, in a fixed order: a bounded label set.
TRANSITIONS = tuple(e.value for e in sorted(LIVENESS_EVENTS))
STATES = tuple(s.value for s in State)
BUNDLED_TASKS = "tasks"


@dataclass(frozen=True)
class Cycle:
    """The latest committed snapshot of the scheduler's cycle."""

    run_id: int
    ts: float  # unix s
    cycle: int
    seconds: float  # how long that cycle took
    bundled_tasks: bool  # its run read sqlmon's own tasks table


@dataclass(frozen=True)
class Live:
    status: queries.Status  # scheduler row, liveness verdict, workers, latest backlog
    cycle: Cycle | None
    idle: liveness.Verdict
    transitions: dict[tuple[str, str], int]  # (pool, event) -> count, every run
    failed: dict[str, int]  # pool -> busy stretches that raised, every run
    oldest: dict[tuple[str, str], float] | None  # (pool, category) -> created_at; None: unknown
    schema_version: str = HEAD
    pools: dict[str, list[str]] = field(default_factory=dict)  # pool -> its categories

    @property
    def now(self) -> float:
        return self.status.now


_CYCLE = (
    sa.select(
        snapshots.c.run_id,
        snapshots.c.ts,
        snapshots.c.cycle,
        snapshots.c.cycle_seconds,
        runs.c.config,
    )
    .join_from(snapshots, runs, runs.c.run_id == snapshots.c.run_id, isouter=True)
    .order_by(snapshots.c.id.desc())
    .limit(1)
)
_TRANSITIONS = (
    sa.select(worker_status.c.pool, worker_events.c.event, sa.func.count())
    .join_from(worker_events, worker_status, worker_status.c.worker_id == worker_events.c.worker_id)
    .where(worker_events.c.event.in_(TRANSITIONS))
    .group_by(worker_status.c.pool, worker_events.c.event)
)
# The scheduler's running sums of the workers' stretches (stretch_totals), not the stretches
# themselves: a few rows per worker and run, where worker_stretches holds one per task.
_FAILED = (
    sa.select(worker_status.c.pool, sa.func.sum(stretch_totals.c.n))
    .join_from(
        stretch_totals, worker_status, worker_status.c.worker_id == stretch_totals.c.worker_id
    )
    .where(stretch_totals.c.outcome == Outcome.FAILED.value)
    .group_by(worker_status.c.pool)
)
# One probe of ix_tasks_active per category with a backlog: the IN term names the partial
# index's own condition, so SQLite may use it, and the lowest id of the prefix is the oldest.
_OLDEST = sa.text(
    "SELECT sc.pool, sc.category, (SELECT t.created_at FROM tasks t WHERE t.pool = sc.pool "
    "AND t.category = sc.category AND t.status IN ('pending', 'running') "
    "AND t.status = 'pending' ORDER BY t.id LIMIT 1) "
    "FROM snapshot_counts sc WHERE sc.snapshot_id = "
    "(SELECT max(id) FROM snapshots) AND sc.pending > 0"
)


def load(conn: Connection, now: float | None = None, host: str | None = None) -> Live:
    """Everything the live view shows, from the read transaction the caller holds (db.read)."""
    st = queries.status(conn, now, host)
    row = conn.execute(_CYCLE).first()
    cycle = None
    if row is not None:
        try:
            settings = json.loads(row.config or "{}")
        except ValueError:
            settings = {}
        bundled = (
            settings.get("task_table", BUNDLED_TASKS) == BUNDLED_TASKS
            and settings.get("task_database") is None
        )
        cycle = Cycle(row.run_id, row.ts, row.cycle, row.cycle_seconds, bundled)
    transitions = {(p, e): n for p, e, n in conn.execute(_TRANSITIONS)}
    failed = {p: int(n or 0) for p, n in conn.execute(_FAILED)}
    oldest = None
    if cycle is not None and cycle.bundled_tasks:
        oldest = {(p, c): ts for p, c, ts in conn.execute(_OLDEST) if ts is not None}
    pools: dict[str, set[str]] = {}
    for b in st.backlog:
        pools.setdefault(b.pool, set()).add(b.category)
    for w in st.workers:
        cats = pools.setdefault(w.pool, set())
        if w.category is not None and w.state == State.BUSY:
            cats.add(w.category)
    return Live(
        status=st,
        cycle=cycle,
        idle=liveness.idle_verdict(st.scheduler, st.now),
        transitions=transitions,
        failed=failed,
        oldest=oldest,
        pools={p: sorted(c) for p, c in sorted(pools.items())},
    )


def workers_by_state(live: Live) -> dict[str, dict[str, int]]:
    """pool -> state -> workers, every state of every pool present (zero-filled)."""
    out = {p: dict.fromkeys(STATES, 0) for p in live.pools}
    for w in live.status.workers:
        out.setdefault(w.pool, dict.fromkeys(STATES, 0))[str(w.state)] += 1
    return out


def starving(live: Live, pool: str) -> bool:
    """Backlog waits in `pool` while every one of its live workers sits idle."""
    alive = [w for w in live.status.workers if w.pool == pool and w.state != State.EXITED]
    alive = [w for w in alive if w.state != State.DEAD]
    pending = sum(b.pending for b in live.status.backlog if b.pool == pool)
    return pending > 0 and bool(alive) and all(w.state == State.IDLE for w in alive)


# -- the JSON documents -----------------------------------------------------------------------


def _age(now: float, ts: float | None) -> float | None:
    return None if ts is None else round(now - ts, 3)


def status_document(live: Live) -> dict[str, object]:
    """/api/v1/status: the one document the live page draws."""
    st, now = live.status, live.now
    s = st.scheduler
    by_state = workers_by_state(live)
    pools = []
    for pool, categories in live.pools.items():
        backlog = {b.category: b for b in st.backlog if b.pool == pool}
        starve = starving(live, pool)
        lines = []
        for cat in categories:
            b = backlog.get(cat)
            pending = b.pending if b else 0
            oldest = live.oldest.get((pool, cat)) if live.oldest is not None else None
            lines.append(
                {
                    "category": cat,
                    "pending": pending,
                    "running": b.running if b else 0,
                    "busy_workers": b.busy if b else 0,
                    "oldest_age_s": _age(now, oldest),
                    "starving": starve and pending > 0,
                }
            )
        pools.append(
            {"pool": pool, "workers": by_state.get(pool, {}), "backlog": lines, "starving": starve}
        )
    workers = [
        {
            "worker_id": w.worker_id,
            "pool": w.pool,
            "pid": w.pid,
            "host": w.host,
            "state": str(w.state),
            "category": w.category,
            "busy_for_s": _age(now, w.category_since) if w.state == State.BUSY else None,
            "beat_age_s": _age(now, w.last_heartbeat),
            "beats": w.beats,
            "missed": w.missed,
            "state_since": w.state_since,
            "evidence": w.evidence,
            "detail": w.detail,
            "clock_skew_s": w.clock_skew,
        }
        for w in st.workers
    ]
    return {
        "schema_version": live.schema_version,
        "generated_at": now,
        "scheduler": {
            "alive": st.verdict.alive,
            "reason": st.verdict.reason,
            "run_id": s.run_id if s else None,
            "pid": s.pid if s else None,
            "host": s.host if s else None,
            "interval_s": s.interval if s else None,
            # Older than this, the scheduler is not alive (liveness.judge): 3 intervals, and
            # at least interval + 2 s. The page greys out past it.
            "fresh_for_s": config.fresh_for(s.interval) if s else None,
            "cycle": s.cycle if s else None,
            "last_cycle_at": s.heartbeat if s else None,
            "cycle_age_s": _age(now, s.heartbeat) if s else None,
            "cycle_seconds": live.cycle.seconds if live.cycle else None,
            "snapshot_at": live.cycle.ts if live.cycle else None,
        },
        "idle": {
            "idle": live.idle.alive,
            "reason": live.idle.reason,
            "since": s.idle_since if s and live.idle.alive else None,
            "verdict_age_s": _age(now, s.heartbeat) if s else None,
        },
        "pools": pools,
        "workers": workers,
        "hosts": [
            {"host": h.host, "workers": h.workers, "clock_skew_s": h.clock_skew}
            for h in queries.hosts(st.workers)
        ],
    }


_EVENT_COLUMNS = (
    worker_events.c.id,
    worker_events.c.run_id,
    worker_events.c.ts,
    worker_events.c.worker_id,
    worker_events.c.event,
    worker_events.c.category,
    worker_events.c.pid,
    worker_events.c.detail,
)


def events_after(conn: Connection, after: int | None, limit: int) -> list[dict[str, object]]:
    """Worker events with an id above `after`, oldest first; without `after`, the latest
    `limit`. The id is the cursor: pass the last one seen to get only what is new."""
    q = sa.select(*_EVENT_COLUMNS)
    if after is None:
        q = q.order_by(worker_events.c.id.desc()).limit(limit)
        rows = list(reversed(conn.execute(q).all()))
    else:
        q = q.where(worker_events.c.id > after).order_by(worker_events.c.id).limit(limit)
        rows = list(conn.execute(q).all())
    return [dict(r._mapping) for r in rows]


def history_points(
    conn: Connection, run_id: int, points: int, since: float | None = None
) -> list[dict[str, object]]:
    """A run's snapshots cut into at most `points` equal time buckets, each with its last
    moment and its peaks (a peak never falls between two points)."""
    s = snapshots.c
    where = [s.run_id == run_id]
    if since is not None:
        where.append(s.ts >= since)
    lo, hi = conn.execute(sa.select(sa.func.min(s.ts), sa.func.max(s.ts)).where(*where)).one()
    if lo is None:
        return []
    step = max((hi - lo) / max(points, 1), 1e-9)
    bucket = sa.cast((s.ts - lo) / step, sa.Integer)
    q = (
        sa.select(
            sa.func.max(s.ts).label("ts"),
            sa.func.max(s.workers_busy).label("workers_busy"),
            sa.func.max(s.workers_idle).label("workers_idle"),
            sa.func.max(s.workers_stale + s.workers_dead).label("workers_troubled"),
            sa.func.max(s.backlog_pending).label("backlog_pending"),
            sa.func.max(s.backlog_running).label("backlog_running"),
            sa.func.min(s.idle).label("idle"),
        )
        .where(*where)
        .group_by(sa.func.min(bucket, points - 1))
        .order_by(sa.func.max(s.ts))
    )
    return [dict(r._mapping) for r in conn.execute(q)]
