"""Read-only questions people ask of a database: the picture now, the runs, a run's snapshots
and events. Each function takes a connection inside `db.read` and returns plain dataclasses;
filters reach SQL only as bound parameters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from . import config
from . import db as dbmod
from .errors import DatabaseError, SqlmonError
from .migrate import check, describe
from .schema import runs, scheduler_state, snapshot_counts, snapshots, worker_events, worker_status


class UnknownRun(SqlmonError, LookupError):
    """No such run, or no run at all yet."""


@contextmanager
def connect(db: str | os.PathLike[str] | sa.URL) -> Iterator[Connection]:
    """A read-only connection to a checked sqlmon database; it never creates or writes the file.

    Use it inside `db.read(conn)`: each read transaction is one consistent picture.
    """
    url = dbmod.to_url(db)
    with dbmod.as_found(url):
        engine = dbmod.read_only_engine(url)
        try:
            with engine.connect() as conn:
                try:
                    with dbmod.read(conn):
                        check(conn, url)
                except sa.exc.DatabaseError as exc:
                    where = dbmod.sqlite_path(url) or url
                    raise DatabaseError(f"{where}: {describe(exc)}") from exc
                yield conn
        finally:
            engine.dispose()


# -- the picture now ----------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerView:
    run_id: int
    pid: int
    host: str
    interval: float
    heartbeat: float  # unix s: end of the last completed cycle
    cycle: int
    idle: bool
    idle_since: float | None
    not_idle_reason: str | None
    stop_seen: bool
    ended_at: float | None  # the run's end: its scheduler stopped
    end_reason: str | None

    def age(self, now: float) -> float:
        return now - self.heartbeat

    def alive(self, now: float) -> bool:
        """The run is open and its heartbeat fresh (the rule is_idle applies)."""
        return self.ended_at is None and 0 <= self.age(now) < config.fresh_for(self.interval)


@dataclass(frozen=True)
class WorkerLine:
    worker_id: str
    pool: str
    pid: int
    host: str
    category: str | None
    last_heartbeat: float
    state: str  # busy, idle, stale, dead, exited
    beats: int


@dataclass(frozen=True)
class BacklogLine:
    pool: str
    category: str
    pending: int
    running: int
    busy: int  # workers


@dataclass(frozen=True)
class Status:
    now: float
    scheduler: SchedulerView | None  # None until a scheduler has run
    workers: list[WorkerLine]
    backlog: list[BacklogLine]  # as the latest snapshot saw it
    backlog_ts: float | None
    backlog_cycle: int | None


def status(conn: Connection, now: float) -> Status:
    """The scheduler's row, the workers as last judged, and the latest snapshot's backlog."""
    row = conn.execute(
        sa.select(scheduler_state, runs.c.ended_at, runs.c.end_reason).join_from(
            scheduler_state, runs, runs.c.run_id == scheduler_state.c.run_id, isouter=True
        )
    ).first()
    sched = None
    if row is not None:
        sched = SchedulerView(
            run_id=row.run_id,
            pid=row.pid,
            host=row.host,
            interval=row.interval,
            heartbeat=row.heartbeat,
            cycle=row.cycle,
            idle=bool(row.idle),
            idle_since=row.idle_since,
            not_idle_reason=row.not_idle_reason,
            stop_seen=bool(row.stop_seen),
            ended_at=row.ended_at,
            end_reason=row.end_reason,
        )
    snap = conn.execute(
        sa.select(
            snapshots.c.id,
            snapshots.c.run_id,
            snapshots.c.ts,
            snapshots.c.cycle,
            snapshots.c.workers_stale,
            snapshots.c.workers_dead,
        )
        .order_by(snapshots.c.id.desc())
        .limit(1)
    ).first()
    rows = conn.execute(
        sa.select(worker_status).order_by(worker_status.c.pool, worker_status.c.worker_id)
    ).all()
    # Stale and dead are the scheduler's findings, kept only as events (a restarted scheduler
    # does not repeat them, so look past the run); look only when the latest snapshot counted
    # some, so that status stays cheap on a long history.
    finding: dict[str, str] = {}
    if snap is not None and (snap.workers_stale or snap.workers_dead):
        e = worker_events.c
        for w in rows:
            if w.exited_at is None:
                finding[w.worker_id] = (
                    conn.execute(
                        sa.select(e.event)
                        .where(
                            e.worker_id == w.worker_id,
                            e.event.in_(("joined", "stale", "recovered", "dead", "exited")),
                        )
                        .order_by(e.id.desc())
                        .limit(1)
                    ).scalar()
                    or ""
                )
    workers = []
    for w in rows:
        seen = finding.get(w.worker_id)
        state = (
            "exited"
            if w.exited_at is not None
            else seen
            if seen in ("stale", "dead")
            else "busy"
            if w.category is not None
            else "idle"
        )
        workers.append(
            WorkerLine(
                w.worker_id, w.pool, w.pid, w.host, w.category, w.last_heartbeat, state, w.beats
            )
        )
    backlog = []
    if snap is not None:
        backlog = [
            BacklogLine(*r)
            for r in conn.execute(
                sa.select(
                    snapshot_counts.c.pool,
                    snapshot_counts.c.category,
                    snapshot_counts.c.pending,
                    snapshot_counts.c.running,
                    snapshot_counts.c.busy,
                )
                .where(snapshot_counts.c.snapshot_id == snap.id)
                .order_by(snapshot_counts.c.pool, snapshot_counts.c.category)
            )
        ]
    return Status(
        now, sched, workers, backlog, snap.ts if snap else None, snap.cycle if snap else None
    )


def health(st: Status) -> tuple[bool, str]:
    """For `sqlmon check`: healthy when the scheduler's heartbeat is fresh and no worker is
    stale or dead; the one line says why not."""
    s = st.scheduler
    if s is None:
        return False, "no scheduler has run on this database"
    if s.ended_at is not None:
        return False, f"the scheduler stopped: run {s.run_id} ended ({s.end_reason})"
    age = s.age(st.now)
    if not s.alive(st.now):
        return False, (
            f"the scheduler's heartbeat is {age:.1f} s old "
            f"(fresh means under {config.fresh_for(s.interval):.1f} s): run {s.run_id}"
        )
    troubled = [w for w in st.workers if w.state in ("stale", "dead")]
    if troubled:
        return False, "; ".join(f"{w.worker_id} is {w.state}" for w in troubled)
    return True, (
        f"ok: run {s.run_id} cycle {s.cycle}, heartbeat {age:.1f} s ago, "
        f"{len([w for w in st.workers if w.state != 'exited'])} worker(s) alive"
    )


# -- runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLine:
    run_id: int
    started_at: float
    ended_at: float | None
    end_reason: str | None
    last_snapshot: float | None
    snapshots: int
    pid: int
    host: str
    state: str  # ended, running, or vanished (its scheduler went without ending it)

    @property
    def end(self) -> float:
        """The run's end, or the last moment it is known to have been alive."""
        if self.ended_at is not None:
            return self.ended_at
        return self.last_snapshot if self.last_snapshot is not None else self.started_at

    @property
    def length(self) -> float:
        return self.end - self.started_at


def list_runs(conn: Connection, now: float) -> list[RunLine]:
    seen = (
        sa.select(
            snapshots.c.run_id,
            sa.func.max(snapshots.c.ts).label("last"),
            sa.func.count().label("n"),
        )
        .group_by(snapshots.c.run_id)
        .subquery()
    )
    live = conn.execute(
        sa.select(scheduler_state.c.run_id, scheduler_state.c.heartbeat, scheduler_state.c.interval)
    ).first()
    out = []
    for r in conn.execute(
        sa.select(runs, seen.c.last, seen.c.n)
        .join_from(runs, seen, seen.c.run_id == runs.c.run_id, isouter=True)
        .order_by(runs.c.run_id)
    ):
        if r.ended_at is not None:
            state = "ended"
        elif (
            live is not None
            and live.run_id == r.run_id
            and 0 <= now - live.heartbeat < config.fresh_for(live.interval)
        ):
            state = "running"
        else:
            state = "vanished"
        out.append(
            RunLine(
                r.run_id,
                r.started_at,
                r.ended_at,
                r.end_reason,
                r.last,
                r.n or 0,
                r.pid,
                r.host,
                state,
            )
        )
    return out


def find_run(conn: Connection, now: float, run_id: int | None = None) -> RunLine:
    """The run asked for, or the latest; UnknownRun when there is none."""
    all_runs = list_runs(conn, now)
    if not all_runs:
        raise UnknownRun("no runs yet (a scheduler starts one: `sqlmon run DB`)")
    if run_id is None:
        return all_runs[-1]
    for r in all_runs:
        if r.run_id == run_id:
            return r
    raise UnknownRun(f"no run {run_id} (runs here: {all_runs[0].run_id} to {all_runs[-1].run_id})")


# -- history and events ---------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotLine:
    ts: float
    cycle: int
    workers_busy: int
    workers_idle: int
    workers_stale: int
    workers_dead: int
    backlog_pending: int
    backlog_running: int
    idle: int
    cycle_seconds: float
    writes_skipped: int
    late: int


def history(
    conn: Connection,
    run_id: int,
    *,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
) -> list[SnapshotLine]:
    """A run's snapshots in time order; with `limit`, the latest that many."""
    q = sa.select(*(snapshots.c[f] for f in SnapshotLine.__dataclass_fields__)).where(
        snapshots.c.run_id == run_id
    )
    if since is not None:
        q = q.where(snapshots.c.ts >= since)
    if until is not None:
        q = q.where(snapshots.c.ts <= until)
    q = q.order_by(snapshots.c.ts.desc(), snapshots.c.id.desc())
    if limit:
        q = q.limit(limit)
    return [SnapshotLine(*r) for r in reversed(conn.execute(q).all())]


@dataclass(frozen=True)
class EventLine:
    run_id: int
    ts: float
    worker_id: str
    event: str
    category: str | None
    pid: int | None
    detail: str | None


def events(
    conn: Connection,
    *,
    run_id: int | None = None,
    worker: str | None = None,
    event: str | None = None,
    category: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
) -> list[EventLine]:
    """Worker events in the order the scheduler recorded them; with `limit`, the latest."""
    e = worker_events.c
    q = sa.select(*(e[f] for f in EventLine.__dataclass_fields__))
    for column, value in (
        (e.run_id, run_id),
        (e.worker_id, worker),
        (e.event, event),
        (e.category, category),
    ):
        if value is not None:
            q = q.where(column == value)
    if since is not None:
        q = q.where(e.ts >= since)
    if until is not None:
        q = q.where(e.ts <= until)
    q = q.order_by(e.id.desc())
    if limit:
        q = q.limit(limit)
    return [EventLine(*r) for r in reversed(conn.execute(q).all())]
