"""The scheduler's reads and writes: worker rows in, runs, snapshots, events and the idle row out.

Each write is one short transaction (db.write takes the write lock first), so a SIGKILL at any
instant leaves either the whole cycle or none of it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from .db import Prepared
from .monitor import Cycle, Event, WorkerRow
from .schema import runs, scheduler_state, snapshot_counts, snapshots, worker_events, worker_status

_WORKERS = Prepared(sa.select(*(worker_status.c[f] for f in WorkerRow._fields)))


def read_workers(conn: Connection) -> list[WorkerRow]:
    return list(map(WorkerRow._make, _WORKERS.rows(conn)))


def last_events(conn: Connection) -> list[tuple[str, str]]:
    """Each worker's latest event: (worker_id, event)."""
    latest = (
        sa.select(sa.func.max(worker_events.c.id)).group_by(worker_events.c.worker_id).subquery()
    )
    q = sa.select(worker_events.c.worker_id, worker_events.c.event).where(
        worker_events.c.id.in_(sa.select(latest))
    )
    return [(w, e) for w, e in conn.execute(q)]


def start_run(
    conn: Connection, *, now: float, pid: int, host: str, settings: dict[str, Any]
) -> tuple[int, list[int]]:
    """Open a run row and say not idle at once; return the run id and the ids of earlier runs
    that never ended (their scheduler was killed)."""
    unended = list(
        conn.execute(sa.select(runs.c.run_id).where(runs.c.ended_at.is_(None))).scalars()
    )
    run_id = conn.execute(
        sa.insert(runs).values(
            started_at=now, pid=pid, host=host, config=json.dumps(settings, sort_keys=True)
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    _set_state(
        conn,
        run_id=run_id,
        pid=pid,
        host=host,
        interval=settings["interval"],
        heartbeat=now,
        cycle=0,
        idle=0,
        idle_since=None,
        verdict_since=None,
        not_idle_reason="scheduler starting",
        stop_seen=0,
    )
    return int(run_id), unended


def record(
    conn: Connection,
    run_id: int,
    cycle: Cycle,
    *,
    cycle_seconds: float,
    writes_skipped: int,
    stop_seen: bool,
    heartbeat: float,
    events: Sequence[Event] | None = None,
) -> None:
    """The snapshot, its counts, the cycle's events (or `events`: with those of cycles whose
    write was skipped) and the idle row."""
    events = cycle.events if events is None else events
    states = Counter(w.state for w in cycle.workers)
    snapshot_id = _INSERT_SNAPSHOT.insert(
        conn,
        (
            run_id,
            cycle.ts,
            cycle.cycle,
            states["busy"],
            states["idle"],
            states["stale"],
            states["dead"],
            cycle.pending,
            cycle.running,
            int(cycle.idle),
            cycle_seconds,
            writes_skipped,
            int(cycle.late),
        ),
    )
    if cycle.counts:
        _INSERT_COUNTS.many(
            conn,
            [
                (snapshot_id, pool, category, c.busy, c.pending, c.running)
                for (pool, category), c in cycle.counts.items()
            ],
        )
    add_events(conn, run_id, events)
    _UPDATE_STATE.run(
        conn,
        (
            run_id,
            heartbeat,
            cycle.cycle,
            int(cycle.idle),
            cycle.idle_since,
            cycle.verdict_since,
            cycle.not_idle_reason,
            int(stop_seen),
        ),
    )


def add_events(conn: Connection, run_id: int, events: Sequence[Event]) -> None:
    if events:
        _INSERT_EVENTS.many(
            conn,
            [(run_id, e.ts, e.worker_id, e.event, e.category, e.pid, e.detail) for e in events],
        )


def _insert(table: sa.Table, *names: str) -> Prepared:
    return Prepared(sa.insert(table).values({n: sa.bindparam(n) for n in names}), names)


# Prepared once: a statement built with .values() each cycle spends more on SQLAlchemy's cache
# key than on the write, and one run through Connection.execute more on its bookkeeping.
_INSERT_SNAPSHOT = _insert(
    snapshots,
    "run_id",
    "ts",
    "cycle",
    "workers_busy",
    "workers_idle",
    "workers_stale",
    "workers_dead",
    "backlog_pending",
    "backlog_running",
    "idle",
    "cycle_seconds",
    "writes_skipped",
    "late",
)
_INSERT_COUNTS = _insert(
    snapshot_counts, "snapshot_id", "pool", "category", "busy", "pending", "running"
)
_INSERT_EVENTS = _insert(
    worker_events, "run_id", "ts", "worker_id", "event", "category", "pid", "detail"
)
_STATE = (
    "heartbeat",
    "cycle",
    "idle",
    "idle_since",
    "verdict_since",
    "not_idle_reason",
    "stop_seen",
)
_UPDATE_STATE = Prepared(
    sa.update(scheduler_state)
    .where(scheduler_state.c.id == sa.literal_column("1"))
    .values(run_id=sa.bindparam("run_id"), **{n: sa.bindparam(n) for n in _STATE}),
    ("run_id", *_STATE),
)


def end_run(conn: Connection, run_id: int, *, now: float, reason: str) -> None:
    conn.execute(
        sa.update(runs).where(runs.c.run_id == run_id).values(ended_at=now, end_reason=reason)
    )
    conn.execute(
        sa.update(scheduler_state)
        .where(scheduler_state.c.run_id == run_id)
        .values(
            idle=0,
            idle_since=None,
            verdict_since=None,
            not_idle_reason=f"scheduler stopped ({reason})",
        )
    )


def _set_state(conn: Connection, **values: Any) -> None:
    # UPDATE, then INSERT when there was no row: portable, and safe under the write lock.
    if (
        conn.execute(
            sa.update(scheduler_state).where(scheduler_state.c.id == 1).values(**values)
        ).rowcount
        == 0
    ):
        conn.execute(sa.insert(scheduler_state).values(id=1, **values))
