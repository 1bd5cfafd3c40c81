"""Deleting the history of old runs, in small batches so that a running pipeline never waits
long for the write lock. The current run is never touched, nor the task table.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from . import db as dbmod
from .schema import (
    runs,
    scheduler_state,
    snapshot_counts,
    snapshots,
    stretch_totals,
    worker_events,
    worker_status,
    worker_stretches,
)

BATCH = 2000  # rows per write transaction: each holds the write lock for milliseconds


@dataclass(frozen=True)
class Pruned:
    runs: list[int]
    snapshots: int = 0
    counts: int = 0
    events: int = 0
    totals: int = 0  # stretch_totals rows
    stretches: int = 0  # worker_stretches wholly before the oldest run left

    @property
    def rows(self) -> int:
        return (
            len(self.runs)
            + self.snapshots
            + self.counts
            + self.events
            + self.totals
            + self.stretches
        )


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
    """Delete the snapshots, counts, events, stretch totals and run rows of runs older than
    `before`, then the stretches that end before the oldest run left begins.

    `conn` must not be in a transaction: each batch is its own db.write transaction.
    """
    # A run that is not current now never becomes current again: a new scheduler starts a
    # new run, so the list cannot go stale while the batches run.
    with dbmod.read(conn):
        targets = old_runs(conn, before)
    n_snap = n_counts = n_events = n_totals = 0
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
            n_totals += conn.execute(
                sa.delete(stretch_totals).where(stretch_totals.c.run_id == run_id)
            ).rowcount
            conn.execute(sa.delete(runs).where(runs.c.run_id == run_id))
    n_stretches = _prune_stretches(conn, before, batch) if targets else 0
    return Pruned(targets, n_snap, n_counts, n_events, n_totals, n_stretches)


def _prune_stretches(conn: Connection, before: float, batch: int) -> int:
    """Delete the stretches that lie wholly before the oldest remaining run (or `before`,
    when none is left): no report, timeline or view can show them any more."""
    with dbmod.read(conn):
        oldest = conn.execute(sa.select(sa.func.min(runs.c.started_at))).scalar()
    cutoff = before if oldest is None else oldest
    w, x = worker_status.c, worker_stretches.c
    # A stretch the scheduler closed at a death stays while worker_status still names it as
    # the open one: without it the views would take that stretch for still open.
    named = sa.exists().where(w.worker_id == x.worker_id, w.category_since == x.started)
    page = sa.select(x.id, x.started, x.ended, named).where(x.id > sa.bindparam("after"))
    page = page.order_by(x.id).limit(batch)
    n, after = 0, 0
    while True:
        # Ids grow in the order stretches were closed: the old ones come first, and a page
        # that only began after the cutoff ends the walk (a stretch written that late, after
        # a long outage of its worker's writes, stays).
        with dbmod.read(conn):
            rows = conn.execute(page, {"after": after}).all()
        if not rows:
            return n
        after = rows[-1][0]
        ids = [i for i, _, ended, keep in rows if ended <= cutoff and not keep]
        if ids:
            with dbmod.write(conn):
                n += conn.execute(sa.delete(worker_stretches).where(x.id.in_(ids))).rowcount
        elif min(started for _, started, _, _ in rows) > cutoff:
            return n
