"""Deleting the history of old runs, in small batches so that a running pipeline never waits
long for the write lock. The current run is never touched, nor the task table.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from . import db as dbmod
from .schema import runs, scheduler_state, snapshot_counts, snapshots, worker_events

BATCH = 2000  # rows per write transaction: each holds the write lock for milliseconds


@dataclass(frozen=True)
class Pruned:
    runs: list[int]
    snapshots: int = 0
    counts: int = 0
    events: int = 0

    @property
    def rows(self) -> int:
        return len(self.runs) + self.snapshots + self.counts + self.events


def old_runs(conn: Connection, before: float) -> list[int]:
    """Runs whose last sign of life came before `before` (unix s), except the current run."""
    last = (
        sa.select(snapshots.c.run_id, sa.func.max(snapshots.c.ts).label("last"))
        .group_by(snapshots.c.run_id)
        .subquery()
    )
    seen = sa.func.coalesce(runs.c.ended_at, last.c.last, runs.c.started_at)
    current = sa.select(scheduler_state.c.run_id).scalar_subquery()
    q = (
        sa.select(runs.c.run_id)
        .join_from(runs, last, last.c.run_id == runs.c.run_id, isouter=True)
        .where(seen < before, runs.c.run_id != sa.func.coalesce(current, -1))
        .order_by(runs.c.run_id)
    )
    return list(conn.execute(q).scalars())


def prune(conn: Connection, before: float, batch: int = BATCH) -> Pruned:
    """Delete the snapshots, counts, events and run rows of runs older than `before`.

    `conn` must not be in a transaction: each batch is its own db.write transaction.
    """
    # A run that is not current now never becomes current again: a new scheduler starts a
    # new run, so the list cannot go stale while the batches run.
    with dbmod.read(conn):
        targets = old_runs(conn, before)
    n_snap = n_counts = n_events = 0
    for run_id in targets:
        while True:
            with dbmod.write(conn):
                ids = list(
                    conn.execute(
                        sa.select(snapshots.c.id).where(snapshots.c.run_id == run_id).limit(batch)
                    ).scalars()
                )
                if ids:
                    n_counts += conn.execute(
                        sa.delete(snapshot_counts).where(snapshot_counts.c.snapshot_id.in_(ids))
                    ).rowcount
                    n_snap += conn.execute(
                        sa.delete(snapshots).where(snapshots.c.id.in_(ids))
                    ).rowcount
            if not ids:
                break
        while True:
            with dbmod.write(conn):
                ids = list(
                    conn.execute(
                        sa.select(worker_events.c.id)
                        .where(worker_events.c.run_id == run_id)
                        .limit(batch)
                    ).scalars()
                )
                if ids:
                    n_events += conn.execute(
                        sa.delete(worker_events).where(worker_events.c.id.in_(ids))
                    ).rowcount
            if not ids:
                break
        with dbmod.write(conn):
            conn.execute(sa.delete(runs).where(runs.c.run_id == run_id))
    return Pruned(targets, n_snap, n_counts, n_events)
