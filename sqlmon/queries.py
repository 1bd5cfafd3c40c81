"""Read-only questions people ask of a database: the picture now, the runs, a run's snapshots
and events. Each function takes a connection inside `db.read` and returns plain dataclasses;
filters reach SQL only as bound parameters.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from . import db as dbmod
from . import liveness
from .errors import DatabaseError, SqlmonError
from .eventlog import EventLine as EventLine  # the events live in eventlog.py
from .eventlog import events as events
from .liveness import SchedulerRow, Verdict
from .migrate import check, describe
from .schema import (
    runs,
    snapshot_counts,
    snapshots,
    worker_states,
    worker_status,
)
from .states import Liveness, State


class UnknownRun(SqlmonError, LookupError):
    """No such run, or no run at all yet."""


class NoRuns(UnknownRun):
    """No run at all yet: an initialised database whose scheduler never started."""


NO_RUNS = "no runs yet (a scheduler starts one: `sqlmon run DB`)"


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
class WorkerLine:
    worker_id: str
    pool: str
    pid: int
    host: str
    category: str | None
    last_heartbeat: float
    state: str  # a states.State
    beats: int
    category_since: float | None = None  # when the open stretch began
    state_since: float | None = None  # when the scheduler judged it stale, dead or exited
    evidence: str | None = None  # why dead (a states.Evidence)
    detail: str | None = None  # the judgement in words
    missed: int = 0  # beats it dropped
    clock_skew: float | None = None  # its host's clock minus the database's (PostgreSQL)


@dataclass(frozen=True)
class HostLine:
    host: str
    workers: dict[str, int]  # by state
    clock_skew: float | None  # at the host's latest write: its clock minus the database's


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
    scheduler: SchedulerRow | None  # None until a scheduler has run
    workers: list[WorkerLine]
    backlog: list[BacklogLine]  # as the latest snapshot saw it
    backlog_ts: float | None
    backlog_cycle: int | None
    verdict: Verdict = Verdict(False, "no scheduler has run on this database")  # is it alive


def status(conn: Connection, now: float | None = None, host: str | None = None) -> Status:
    """The scheduler's row and whether it is alive, the workers as last judged, and the latest
    snapshot's backlog. Call inside db.read; `now` defaults to the clock, read after the first
    read of the transaction (so after its snapshot)."""
    sched = liveness.read(conn)
    now = dbmod.clock(conn) if now is None else now
    verdict = liveness.judge(sched, now, host=host)
    snap = conn.execute(
        sa.select(snapshots.c.id, snapshots.c.ts, snapshots.c.cycle)
        .order_by(snapshots.c.id.desc())
        .limit(1)
    ).first()
    w, j = worker_status.c, worker_states.c
    # The scheduler's judgement of this incarnation, when it has judged it.
    rows = conn.execute(
        sa.select(*w, j.state.label("judged"), j.since, j.evidence, j.detail).join_from(
            worker_status,
            worker_states,
            sa.and_(j.worker_id == w.worker_id, j.pid == w.pid, j.started_at == w.started_at),
            isouter=True,
        )
    ).all()
    workers = []
    for r in rows:
        if r.exited_at is not None:
            state = State.EXITED
        elif r.judged in (Liveness.STALE, Liveness.DEAD):
            state = State(r.judged)
        else:
            state = State.BUSY if r.category is not None else State.IDLE
        workers.append(
            WorkerLine(
                r.worker_id,
                r.pool,
                r.pid,
                r.host,
                r.category,
                r.last_heartbeat,
                state,
                r.beats,
                r.category_since,
                r.since if state in (State.STALE, State.DEAD, State.EXITED) else None,
                r.evidence if state == State.DEAD else None,
                r.detail if state in (State.STALE, State.DEAD) else None,
                r.missed,
                r.clock_skew,
            )
        )
    workers.sort(key=lambda x: (x.pool, natural(x.worker_id)))
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
        now,
        sched,
        workers,
        backlog,
        snap.ts if snap else None,
        snap.cycle if snap else None,
        verdict,
    )


def hosts(workers: list[WorkerLine]) -> list[HostLine]:
    """The workers' hosts: how many workers each has in each state, and how far its clock is
    from the database's as its latest write measured it. For people; never used to judge."""
    found: dict[str, tuple[dict[str, int], float, float | None]] = {}
    for w in workers:
        states, latest, skew = found.get(w.host, ({}, -float("inf"), None))
        states[w.state] = states.get(w.state, 0) + 1
        if w.clock_skew is not None and w.last_heartbeat > latest:
            latest, skew = w.last_heartbeat, w.clock_skew
        found[w.host] = (states, latest, skew)
    return [
        HostLine(host, states, skew)
        for host, (states, _latest, skew) in sorted(found.items(), key=lambda h: natural(h[0]))
    ]


def natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that puts cpu-2 before cpu-10."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part
    )


def health(st: Status) -> tuple[bool, str]:
    """For `sqlmon check`: healthy when the scheduler's heartbeat is fresh and no worker is
    stale or dead; the one line says why not."""
    s = st.scheduler
    if s is None or not st.verdict.alive:
        return False, st.verdict.reason
    age = s.age(st.now)
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


def list_runs(conn: Connection, now: float | None = None) -> list[RunLine]:
    """Every run, oldest first; call inside db.read (`now` as for status)."""
    seen = (
        sa.select(
            snapshots.c.run_id,
            sa.func.max(snapshots.c.ts).label("last"),
            sa.func.count().label("n"),
        )
        .group_by(snapshots.c.run_id)
        .subquery()
    )
    live = liveness.read(conn)
    now = dbmod.clock(conn) if now is None else now
    running = live.run_id if live is not None and liveness.judge(live, now).alive else None
    out = []
    for r in conn.execute(
        sa.select(runs, seen.c.last, seen.c.n)
        .join_from(runs, seen, seen.c.run_id == runs.c.run_id, isouter=True)
        .order_by(runs.c.run_id)
    ):
        if r.run_id == running:
            state = "running"
        elif r.ended_at is not None and not (r.end_reason or "").startswith("vanished"):
            state = "ended"
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


def find_run(conn: Connection, now: float | None = None, run_id: int | None = None) -> RunLine:
    """The run asked for, or the latest; UnknownRun when there is none."""
    all_runs = list_runs(conn, now)
    if not all_runs:
        raise NoRuns(NO_RUNS if run_id is None else f"no run {run_id}: no runs yet")
    if run_id is None:
        return all_runs[-1]
    for r in all_runs:
        if r.run_id == run_id:
            return r
    raise UnknownRun(f"no run {run_id} (runs here: {all_runs[0].run_id} to {all_runs[-1].run_id})")


# -- history (the merged events are eventlog.events) ----------------------------------------


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


def run_snapshots(
    conn: Connection,
    run_id: int,
    *,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
) -> list[SnapshotLine]:
    """A run's snapshots in time order; with `limit`, the latest that many."""
    columns = (snapshots.c[f] for f in SnapshotLine.__dataclass_fields__)
    q = _between(sa.select(*columns), run_id, since, until)
    q = q.order_by(snapshots.c.ts.desc(), snapshots.c.id.desc())
    if limit:
        q = q.limit(limit)
    return [SnapshotLine(*r) for r in reversed(conn.execute(q).all())]


def run_snapshot_count(
    conn: Connection, run_id: int, *, since: float | None = None, until: float | None = None
) -> int:
    """How many snapshots `history` would list without a limit."""
    q = _between(sa.select(sa.func.count()), run_id, since, until)
    return int(conn.execute(q).scalar_one())


def _between(q: sa.Select, run_id: int, since: float | None, until: float | None) -> sa.Select:
    q = q.select_from(snapshots).where(snapshots.c.run_id == run_id)
    if since is not None:
        q = q.where(snapshots.c.ts >= since)
    if until is not None:
        q = q.where(snapshots.c.ts <= until)
    return q
