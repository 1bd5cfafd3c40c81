"""The scheduler's reads and writes: worker rows in, runs, snapshots, events and the idle row out.

Each write is one short transaction (db.write takes the write lock first), so a SIGKILL at any
instant leaves either the whole cycle or none of it.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from .monitor import Cycle, WorkerRow
from .schema import runs, scheduler_state, snapshot_counts, snapshots, worker_events, worker_status

_WORKERS = sa.select(*(worker_status.c[f] for f in WorkerRow.__dataclass_fields__))


def read_workers(conn: Connection) -> list[WorkerRow]:
    return [WorkerRow(*row) for row in conn.execute(_WORKERS)]


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
) -> None:
    """The snapshot, its counts, the cycle's events and the idle row."""
    snapshot_id = conn.execute(
        _INSERT_SNAPSHOT,
        {
            "run_id": run_id,
            "ts": cycle.ts,
            "cycle": cycle.cycle,
            "workers_busy": cycle.total("busy"),
            "workers_idle": cycle.total("idle"),
            "workers_stale": cycle.total("stale"),
            "workers_dead": cycle.total("dead"),
            "backlog_pending": cycle.pending,
            "backlog_running": cycle.running,
            "idle": int(cycle.idle),
            "cycle_seconds": cycle_seconds,
            "writes_skipped": writes_skipped,
            "late": int(cycle.late),
        },
    ).inserted_primary_key[0]  # type: ignore[index]
    if cycle.counts:
        conn.execute(
            _INSERT_COUNTS,
            [
                {
                    "snapshot_id": snapshot_id,
                    "pool": pool,
                    "category": category,
                    "busy": c.busy,
                    "pending": c.pending,
                    "running": c.running,
                }
                for (pool, category), c in cycle.counts.items()
            ],
        )
    if cycle.events:
        conn.execute(
            _INSERT_EVENTS,
            [
                {
                    "run_id": run_id,
                    "ts": e.ts,
                    "worker_id": e.worker_id,
                    "event": e.event,
                    "category": e.category,
                    "pid": e.pid,
                    "detail": e.detail,
                }
                for e in cycle.events
            ],
        )
    conn.execute(
        _UPDATE_STATE,
        {
            "run_id": run_id,
            "heartbeat": heartbeat,
            "cycle": cycle.cycle,
            "idle": int(cycle.idle),
            "idle_since": cycle.idle_since,
            "verdict_since": cycle.verdict_since,
            "not_idle_reason": cycle.not_idle_reason,
            "stop_seen": int(stop_seen),
        },
    )


# Built once, values bound at execute: a statement built with .values() each cycle spends more
# on SQLAlchemy's cache key than on the write (measured in scripts/bench.py).
_INSERT_SNAPSHOT = sa.insert(snapshots)
_INSERT_COUNTS = sa.insert(snapshot_counts)
_INSERT_EVENTS = sa.insert(worker_events)
_UPDATE_STATE = sa.update(scheduler_state).where(scheduler_state.c.id == 1)


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
