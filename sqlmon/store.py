"""The scheduler's reads and writes: worker rows in, runs, snapshots, events and the idle row out.

Each write is one short transaction (db.write takes the write lock first), so a SIGKILL at any
instant leaves either the whole cycle or none of it.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Connection

from . import db as dbmod
from . import identity, liveness, stretches
from .db import Prepared
from .dialects import db_now, greatest, insert, least
from .errors import LeaseLost
from .judge import Backends, Close, Cycle, Event, Judged, WorkerRow
from .schema import (
    runs,
    scheduler_state,
    snapshot_counts,
    snapshots,
    stretch_totals,
    worker_events,
    worker_states,
    worker_status,
    worker_stretches,
)
from .states import Outcome

FOLD_BATCH = 5000  # stretches folded into the totals per cycle, at most
NO_BOUND = 2**62  # an id above every id
_WORKERS = Prepared(sa.select(*(worker_status.c[f] for f in WorkerRow._fields)))
_ws = worker_stretches.c
_NEW_STRETCHES = Prepared(
    sa.select(*(_ws[f] for f in stretches.Stretch._fields))
    .where(_ws.id > sa.bindparam("after"), _ws.id <= sa.bindparam("upto"))
    .order_by(_ws.id)
    .limit(sa.literal_column(str(FOLD_BATCH)))
    .offset(sa.literal_column("0")),  # SQLite would bind an OFFSET of its own
    ("after", "upto"),
)
_LAST_STRETCH = Prepared(sa.select(sa.func.coalesce(sa.func.max(_ws.id), sa.literal_column("0"))))


_CLOCK = Prepared(sa.select(db_now()))


class Read(NamedTuple):
    """What one scheduler cycle reads, from one snapshot."""

    now: float | None  # the database's clock, when asked for
    workers: list[WorkerRow]
    stretches: list[stretches.Stretch]  # recorded after `after`, up to `upto`
    last_stretch: int | None  # the highest stretch id visible, when asked for
    backlog: list[tuple[Any, ...]] | None  # the task table's rows, when asked for


def read_cycle(
    conn: Connection,
    *,
    clock: bool,
    after: int,
    upto: int,
    last_stretch: bool,
    backlog: Prepared | None,
) -> Read:
    """Inside db.read(): what a cycle reads, in one round trip on PostgreSQL. The clock comes
    first: on PostgreSQL the snapshot is taken with it."""
    here = clock and conn.dialect.name == "sqlite"  # SQLite's clock is this host's: no statement
    now = dbmod.clock(conn) if here else None
    asked: list[tuple[Prepared, tuple[Any, ...]] | None] = [
        (_CLOCK, ()) if clock and not here else None,
        (_WORKERS, ()),
        (_NEW_STRETCHES, (after, upto)),  # plain tuples, in Stretch's order: fold unpacks them
        (_LAST_STRETCH, ()) if last_stretch else None,
        (backlog, ()) if backlog is not None else None,
    ]
    got = iter(dbmod.together(conn, [a for a in asked if a is not None]))
    return Read(
        float(next(got)[0][0]) if clock and not here else now,
        list(map(WorkerRow._make, next(got))),
        next(got),  # type: ignore[arg-type]
        int(next(got)[0][0]) if last_stretch else None,
        next(got) if backlog is not None else None,
    )


# pg_stat_get_activity(pid) builds a row for that backend alone; pg_stat_activity builds one
# for every connection first (a thousand workers, a thousand connections), then filters.
_CONNECTIONS = (
    "SELECT extract(epoch FROM pg_postmaster_start_time())::float8, array(SELECT a.pid"
    " FROM unnest(%(pids)s::integer[]) AS p(pid), LATERAL pg_stat_get_activity(p.pid) AS a)"
)


def read_backends(conn: Connection, pids: list[int]) -> Backends:
    """Which of the server pids `pids` are connected now, and the server's start as workers
    write it: one round trip."""
    postmaster, alive = conn.exec_driver_sql(_CONNECTIONS, {"pids": pids}).one()
    return Backends(repr(postmaster), frozenset(alive), frozenset(pids))


class FoldHorizon:
    """How far the fold may go without passing a stretch that is yet to commit.

    On SQLite ids commit in order (one writer at a time), so every id seen is final. On
    PostgreSQL an insert takes its id before it commits, so id 11 can be visible while id 10
    is still on its way; a cursor moved past 11 would skip 10 for good. So the fold only goes
    up to the highest id that was already visible `settle` s ago: every id below it was taken
    before then, by an insert that has committed or failed since, since no worker statement
    runs that long (statement_timeout). The totals lag by `settle`; the report adds the
    stretches past the cursor, so it does not.
    """

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._seen: deque[tuple[float, int]] = deque()  # (monotonic s, highest id visible)
        self._upto = 0

    @property
    def watching(self) -> bool:
        """Whether it needs the highest stretch id visible at each cycle (`saw`)."""
        return self.settle > 0

    def upto(self, mono: float) -> int:
        """The id the fold may go up to at `mono`."""
        if self.settle <= 0:
            return NO_BOUND
        while self._seen and mono - self._seen[0][0] >= self.settle:
            self._upto = max(self._upto, self._seen.popleft()[1])
        return self._upto

    def saw(self, mono: float, last_stretch: int) -> None:
        """The highest stretch id visible at `mono`."""
        self._seen.append((mono, last_stretch))


def windows(conn: Connection, limit: int = 20) -> list[stretches.Window]:
    """The latest runs' windows, for folding stretches that began before the current run."""
    q = sa.text(
        "SELECT run_id, started_at, ended_at FROM run_windows ORDER BY run_id DESC LIMIT :n"
    )
    return [stretches.Window(r, a, b) for r, a, b in conn.execute(q, {"n": limit})]


def last_events(conn: Connection) -> list[tuple[str, str]]:
    """Each worker's latest event: (worker_id, event)."""
    latest = (
        sa.select(sa.func.max(worker_events.c.id)).group_by(worker_events.c.worker_id).subquery()
    )
    q = sa.select(worker_events.c.worker_id, worker_events.c.event).where(
        worker_events.c.id.in_(sa.select(latest))
    )
    return [(w, e) for w, e in conn.execute(q)]


@dataclass(frozen=True)
class Me:
    """A scheduler process, as the lease knows it."""

    pid: int
    pid_start: float | None
    host: str


def acquire(
    conn: Connection, *, now: float | None, me: Me, settings: dict[str, Any], ttl: float
) -> tuple[int, int, list[int], float] | liveness.SchedulerRow:
    """Inside a write transaction: take the lease when no live scheduler holds it, open a run
    and say not idle. Returns (run id, term, ids of earlier runs found unended, now ended as
    vanished, the run's start), or the row of the scheduler that holds the lease. `now`
    defaults to the database's clock, read after the row (a lease renewed meanwhile must not
    look expired)."""
    row = liveness.read(conn)
    if now is None:
        now = dbmod.clock(conn)
    if row is not None and not _lease_free(row, now, me):
        return row
    term = (row.term if row is not None else 0) + 1
    unended = list(
        conn.execute(sa.select(runs.c.run_id).where(runs.c.ended_at.is_(None))).scalars()
    )
    if unended:
        # Their scheduler is gone (the lease was free): each ends where it was last seen.
        last = (
            sa.select(sa.func.max(snapshots.c.ts))
            .where(snapshots.c.run_id == runs.c.run_id)
            .scalar_subquery()
        )
        seen: Any = sa.func.coalesce(last, runs.c.started_at)
        if row is not None and row.run_id in unended:
            seen = sa.case((runs.c.run_id == row.run_id, row.heartbeat), else_=seen)
        conn.execute(
            sa.update(runs)
            .where(runs.c.ended_at.is_(None))
            .values(ended_at=seen, end_reason=VANISHED)
        )
    run_id = conn.execute(
        sa.insert(runs).values(
            started_at=now, pid=me.pid, host=me.host, config=json.dumps(settings, sort_keys=True)
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    values = dict(
        run_id=run_id,
        pid=me.pid,
        pid_start=me.pid_start,
        host=me.host,
        interval=settings["interval"],
        heartbeat=now,
        cycle=0,
        idle=0,
        idle_since=None,
        verdict_since=None,
        not_idle_reason="scheduler starting",
        stop_seen=0,
        term=term,
        expires_at=now + ttl,
    )
    if row is None:
        conn.execute(sa.insert(scheduler_state).values(id=1, folded_id=0, **values))
    else:
        # Conditional on the term read above, so that two schedulers can never both win
        # (on SQLite the write lock already orders them; elsewhere this does).
        took = conn.execute(
            sa.update(scheduler_state)
            .where(scheduler_state.c.id == 1, scheduler_state.c.term == row.term)
            .values(**values)
        ).rowcount
        if took != 1:
            raise LeaseLost("another scheduler took the lease at the same moment")
    return int(run_id), term, unended, now


def _lease_free(row: liveness.SchedulerRow, now: float, me: Me) -> bool:
    """Whether the lease in `row` may be taken at `now`: its run ended (a clean stop hands it
    over), it expired, or its holder's process is gone on this host."""
    if row.ended_at is not None:
        return True
    if row.expires_at is None:  # a row written before leases: the liveness rule decides
        return not liveness.judge(row, now, host=me.host).alive
    if row.expires_at <= now:
        return True
    return row.host == me.host and not identity.is_alive(row.pid, row.pid_start)


VANISHED = "vanished: its scheduler stopped without ending it"


def record(
    conn: Connection,
    run_id: int,
    cycle: Cycle,
    *,
    term: int,
    expires_at: float,
    cycle_seconds: float,
    writes_skipped: int,
    stop_seen: bool,
    heartbeat: float,
    events: Sequence[Event] | None = None,
    judged: Sequence[Judged] = (),
    closes: Sequence[Close] = (),
    folded: tuple[int, dict[stretches.TotalKey, stretches.Total]],
) -> None:
    """The idle row (fenced: LeaseLost unless this scheduler still holds `term`, and then
    nothing of the cycle is written), the snapshot, its counts, the cycle's events and
    judgements (or `events` and `judged`: with those of cycles whose write was skipped), the
    stretches deaths closed, and the totals `folded` up to a stretch id."""
    events = cycle.events if events is None else events
    fenced = _UPDATE_STATE.run(
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
            expires_at,
            folded[0],
            term,
        ),
    )
    if fenced != 1:
        raise LeaseLost(f"another scheduler holds the lease (this one held term {term})")
    if folded[1]:
        _ADD_TOTALS.many(conn, [(*k, *t) for k, t in folded[1].items()])
    if closes:
        _CLOSE.many(conn, [(*c, str(Outcome.DEAD)) for c in closes])
    _judge(conn, run_id, judged)
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


def add_pending(
    conn: Connection,
    run_id: int,
    events: Sequence[Event],
    judged: Sequence[Judged],
    closes: Sequence[Close],
) -> None:
    """What cycles whose write was skipped left to write, at the run's end."""
    add_events(conn, run_id, events)
    _judge(conn, run_id, judged)
    if closes:
        _CLOSE.many(conn, [(*c, str(Outcome.DEAD)) for c in closes])


def _judge(conn: Connection, run_id: int, judged: Sequence[Judged]) -> None:
    """Each worker's latest judgement, once: a worker judged twice (joined and exited in one
    cycle, or over cycles whose write was skipped) keeps the later."""
    if judged:
        latest = {j.worker_id: j for j in judged}
        _JUDGE.many(conn, [(*j, run_id) for j in latest.values()])


def folded_id(conn: Connection) -> int:
    """The last stretch id the totals include."""
    got = conn.execute(sa.select(scheduler_state.c.folded_id)).scalar()
    return int(got or 0)


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
    "expires_at",
    "folded_id",
)
# The fence: the idle row is written only by the holder of the lease's current term.
_UPDATE_STATE = Prepared(
    sa.update(scheduler_state)
    .where(scheduler_state.c.id == sa.literal_column("1"))
    .where(scheduler_state.c.term == sa.bindparam("held_term"))
    .values(run_id=sa.bindparam("run_id"), **{n: sa.bindparam(n) for n in _STATE}),
    ("run_id", *_STATE, "held_term"),
)


def _upsert(table: sa.Table, names: tuple[str, ...], key: tuple[str, ...], set_: Any) -> Prepared:
    def build(dialect: str) -> Any:
        stmt = insert(table, dialect).values({n: sa.bindparam(n) for n in names})
        return stmt.on_conflict_do_update(index_elements=list(key), set_=set_(stmt.excluded))

    return Prepared(build, names)


_TOTAL_KEY = ("run_id", "worker_id", "category", "state", "outcome")
_t = stretch_totals.c
_ADD_TOTALS = _upsert(
    stretch_totals,
    (*_TOTAL_KEY, "n", "seconds", "first_started", "last_ended"),
    _TOTAL_KEY,
    lambda ex: {
        "n": _t.n + ex.n,
        "seconds": _t.seconds + ex.seconds,
        "first_started": least(_t.first_started, ex.first_started),
        "last_ended": greatest(_t.last_ended, ex.last_ended),
    },
)
_JUDGED = ("worker_id", "pid", "started_at", "state", "since", "evidence", "detail", "run_id")
_JUDGE = _upsert(worker_states, _JUDGED, ("worker_id",), lambda ex: {n: ex[n] for n in _JUDGED[1:]})


def _close_stmt() -> Prepared:
    names = ("worker_id", "pid", "category", "started", "ended", "outcome")

    def build(dialect: str) -> Any:
        stmt = insert(worker_stretches, dialect).values({n: sa.bindparam(n) for n in names})
        # Closed once: a stretch the worker itself closed meanwhile keeps the worker's record.
        return stmt.on_conflict_do_nothing()

    return Prepared(build, names)


_CLOSE = _close_stmt()


def end_run(conn: Connection, run_id: int, *, now: float, reason: str, term: int) -> bool:
    """End the run and let go of the lease, so that a standby takes over at its next look;
    False (and nothing written) when this scheduler no longer holds `term`."""
    released = conn.execute(
        sa.update(scheduler_state)
        .where(scheduler_state.c.id == 1, scheduler_state.c.term == term)
        .values(
            idle=0,
            idle_since=None,
            verdict_since=None,
            not_idle_reason=f"scheduler stopped ({reason})",
            expires_at=now,
        )
    ).rowcount
    if released != 1:
        return False
    conn.execute(
        sa.update(runs).where(runs.c.run_id == run_id).values(ended_at=now, end_reason=reason)
    )
    return True
