"""One list of what happened to workers, in time order: the liveness events the scheduler wrote
(worker_events) merged with the starts of the stretches the workers recorded (busy, idle) and
the end of each busy stretch that raised (failed).

A long run holds millions of stretches: each worker's are read by seeks on the
(worker_id, started) index, newest first, at most `limit` of them, and merged here.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from .schema import runs, worker_events
from .states import Event, Outcome

# What the stretches give; every other event is read from worker_events.
STRETCH_EVENTS = frozenset({Event.BUSY, Event.IDLE, Event.FAILED})


@dataclass(frozen=True)
class EventLine:
    run_id: int | None  # None: outside every run (a stretch begun before any scheduler ran)
    ts: float
    worker_id: str
    event: str  # a states.Event
    category: str | None
    pid: int | None
    detail: str | None  # for failed: the exception's type name


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
    """Worker events oldest first (by time, then as recorded); with `limit`, the latest that
    many. `run_id` keeps the run's own liveness events and the stretch events in its window."""
    lo = -float("inf") if since is None else since
    hi = float("inf") if until is None else until
    if run_id is not None:
        started, ended = conn.execute(
            sa.select(runs.c.started_at, runs.c.ended_at).where(runs.c.run_id == run_id)
        ).one()
        lo, hi = max(lo, started), hi if ended is None else min(hi, ended)
    keyed: list[tuple[tuple[float, int, int], EventLine]] = []
    if event is None or event not in STRETCH_EVENTS:
        keyed += _liveness(conn, run_id, worker, event, category, lo, hi, limit)
    if event is None or event in STRETCH_EVENTS:
        windows = _windows(conn)
        workers = [worker] if worker is not None else stretch_workers(conn)
        for w in workers:
            keyed += _from_stretches(conn, w, event, category, lo, hi, limit, run_id, windows)
    keyed.sort(key=lambda k: k[0])
    if limit:
        keyed = keyed[-limit:]
    return [line for _, line in keyed]


def _liveness(
    conn: Connection,
    run_id: int | None,
    worker: str | None,
    event: str | None,
    category: str | None,
    lo: float,
    hi: float,
    limit: int | None,
) -> list[tuple[tuple[float, int, int], EventLine]]:
    e = worker_events.c
    q = sa.select(e.id, *(e[f] for f in EventLine.__dataclass_fields__))
    for column, value in (
        (e.run_id, run_id),
        (e.worker_id, worker),
        (e.event, event),
        (e.category, category),
    ):
        if value is not None:
            q = q.where(column == value)
    if lo > -float("inf"):
        q = q.where(e.ts >= lo)
    if hi < float("inf"):
        q = q.where(e.ts <= hi)
    q = q.order_by(e.ts.desc(), e.id.desc())
    if limit:
        q = q.limit(limit)
    # At one instant, what the workers recorded comes before what the scheduler saw of it.
    return [((r[2], 2, r[0]), EventLine(*r[1:])) for r in conn.execute(q)]


def _from_stretches(
    conn: Connection,
    worker: str,
    event: str | None,
    category: str | None,
    lo: float,
    hi: float,
    limit: int | None,
    run_id: int | None,
    windows: list[tuple[float, float, int]],
) -> list[tuple[tuple[float, int, int], EventLine]]:
    """The events of `worker`'s stretches inside [lo, hi]: each start, and each failed end."""
    where = ["worker_id = :w", "started <= :hi"]
    values: dict[str, object] = {"w": worker, "hi": hi, "lo": lo}
    # A failed end inside the range may close the stretch begun last before it.
    where.append(
        "started >= COALESCE((SELECT started FROM worker_stretches WHERE worker_id = :w "
        "AND started < :lo ORDER BY started DESC LIMIT 1), :lo)"
    )
    if category is not None:
        where.append("category = :c")
        values["c"] = category
    if event == Event.IDLE:
        where.append("category IS NULL")
    elif event == Event.BUSY:
        where.append("category IS NOT NULL")
    elif event == Event.FAILED:
        where.append(f"outcome = '{Outcome.FAILED}'")
    sql = (
        "SELECT id, pid, category, started, ended, outcome, error FROM worker_stretches "
        f"WHERE {' AND '.join(where)} ORDER BY started DESC"
    )
    if limit:
        sql += f" LIMIT {int(limit) + 1}"
    out: list[tuple[tuple[float, int, int], EventLine]] = []
    for id_, pid, cat, started, ended, outcome, error in conn.execute(sa.text(sql), values):
        start_event = Event.IDLE if cat is None else Event.BUSY
        if event in (None, start_event) and lo <= started <= hi:
            run = run_id if run_id is not None else _run_at(windows, started)
            line = EventLine(run, started, worker, start_event, cat, pid, None)
            out.append(((started, 1, id_), line))
        if outcome == Outcome.FAILED and event in (None, Event.FAILED) and lo <= ended <= hi:
            run = run_id if run_id is not None else _run_at(windows, ended)
            line = EventLine(run, ended, worker, Event.FAILED, cat, pid, error)
            out.append(((ended, 0, id_), line))
    return out


def stretch_workers(conn: Connection) -> list[str]:
    """Every worker id in worker_stretches, by seeks in its index (a loose index scan)."""
    q = sa.text(
        "SELECT worker_id FROM worker_stretches WHERE worker_id > :w ORDER BY worker_id LIMIT 1"
    )
    out: list[str] = []
    w = conn.execute(sa.text("SELECT min(worker_id) FROM worker_stretches")).scalar()
    while w is not None:
        out.append(w)
        w = conn.execute(q, {"w": w}).scalar()
    return out


def _windows(conn: Connection) -> list[tuple[float, float, int]]:
    """(start, end, run id) of every run, by start; a run not ended yet runs on."""
    q = sa.select(runs.c.started_at, runs.c.ended_at, runs.c.run_id).order_by(runs.c.started_at)
    return [(a, float("inf") if b is None else b, r) for a, b, r in conn.execute(q)]


def _run_at(windows: list[tuple[float, float, int]], ts: float) -> int | None:
    """The run whose window holds `ts`: the latest begun at or before it, if not ended."""
    i = bisect.bisect_right(windows, (ts, float("inf"), 1 << 62)) - 1
    if i >= 0 and ts <= windows[i][1]:
        return windows[i][2]
    return None
