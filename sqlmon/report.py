"""Post-run analysis as plain data: queries over the history tables and views."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from .schema import runs, snapshots, tasks, worker_events


@dataclass(frozen=True)
class WorkerUse:
    worker_id: str
    busy_seconds: float
    seen_seconds: float

    @property
    def utilisation(self) -> float:
        return self.busy_seconds / self.seen_seconds if self.seen_seconds > 0 else 0.0


@dataclass(frozen=True)
class RunSummary:
    run_id: int
    started_at: float
    ended_at: float | None
    end_reason: str | None
    first_idle_at: float | None  # first snapshot with an idle verdict: the drain is done
    tasks_done: dict[str, int]  # per category, finished during the run
    workers: list[WorkerUse]
    stale_episodes: int
    dead_workers: int


def run_summary(conn: Connection, run_id: int) -> RunSummary:
    run = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).one()
    first_idle = conn.execute(
        sa.select(sa.func.min(snapshots.c.ts)).where(
            snapshots.c.run_id == run_id, snapshots.c.idle == 1
        )
    ).scalar()
    end = run.ended_at if run.ended_at is not None else conn.execute(
        sa.select(sa.func.max(snapshots.c.ts)).where(snapshots.c.run_id == run_id)
    ).scalar() or run.started_at
    done = conn.execute(
        sa.select(tasks.c.category, sa.func.count())
        .where(tasks.c.status == "done", tasks.c.finished_at.between(run.started_at, end))
        .group_by(tasks.c.category)
        .order_by(tasks.c.category)
    ).all()
    intervals = sa.table(
        "worker_intervals", sa.column("run_id"), sa.column("worker_id"), sa.column("state"),
        sa.column("started"), sa.column("ended"),
    )
    # An open stretch (no later event) runs to the end of the run.
    ended = sa.func.coalesce(intervals.c.ended, end)
    length = ended - intervals.c.started
    use = conn.execute(
        sa.select(
            intervals.c.worker_id,
            sa.func.sum(sa.case((intervals.c.state == "busy", length), else_=0.0)),
            sa.func.sum(length),
        )
        .where(intervals.c.run_id == run_id)
        .group_by(intervals.c.worker_id)
        .order_by(intervals.c.worker_id)
    ).all()
    events = dict(
        conn.execute(
            sa.select(worker_events.c.event, sa.func.count())
            .where(worker_events.c.run_id == run_id, worker_events.c.event.in_(("stale", "dead")))
            .group_by(worker_events.c.event)
        ).all()
    )
    return RunSummary(
        run_id=run_id,
        started_at=run.started_at,
        ended_at=run.ended_at,
        end_reason=run.end_reason,
        first_idle_at=first_idle,
        tasks_done={c: n for c, n in done},
        workers=[WorkerUse(w, float(b or 0), float(s or 0)) for w, b, s in use],
        stale_episodes=events.get("stale", 0),
        dead_workers=events.get("dead", 0),
    )
