"""Whether the scheduler is alive: one rule, read by everyone who asks (status, check, idle,
runs, is_idle, wait_idle and the live view).

The scheduler is alive when its run has not ended, its heartbeat is fresh, and, on its own
host, its process still runs with the start time it recorded. Freshness is judged on a clock
read after the read transaction, so a row written meanwhile can never look as if it came from
the future.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from . import config, identity
from . import db as dbmod
from .schema import runs, scheduler_state


@dataclass(frozen=True)
class SchedulerRow:
    """The idle row, with its lease and its run's end."""

    run_id: int
    pid: int
    pid_start: float | None
    host: str
    interval: float
    heartbeat: float  # unix s: end of the last completed cycle
    cycle: int
    idle: bool
    idle_since: float | None
    verdict_since: float | None
    not_idle_reason: str | None
    stop_seen: bool
    term: int
    expires_at: float | None
    ended_at: float | None  # its run's end: the scheduler stopped
    end_reason: str | None

    def age(self, now: float) -> float:
        return now - self.heartbeat


@dataclass(frozen=True)
class Verdict:
    alive: bool
    reason: str  # why not, or a one-line summary when alive


_ROW = sa.select(
    *(scheduler_state.c[f] for f in SchedulerRow.__dataclass_fields__ if f in scheduler_state.c),
    runs.c.ended_at,
    runs.c.end_reason,
).join_from(scheduler_state, runs, runs.c.run_id == scheduler_state.c.run_id, isouter=True)


def read(conn: Connection) -> SchedulerRow | None:
    """The idle row as stored; call inside db.read (or a write transaction)."""
    row = conn.execute(_ROW).first()
    if row is None:
        return None
    m = dict(row._mapping)
    m["idle"], m["stop_seen"] = bool(m["idle"]), bool(m["stop_seen"])
    return SchedulerRow(**{f: m[f] for f in SchedulerRow.__dataclass_fields__})


def observe(conn: Connection) -> tuple[SchedulerRow | None, float]:
    """The idle row from one read transaction, and the time read after it, on the database's
    clock (the one the scheduler writes with)."""
    with dbmod.read(conn):
        row = read(conn)
    return row, dbmod.clock(conn)


def judge(
    row: SchedulerRow | None,
    now: float,
    *,
    host: str | None = None,
    alive: Callable[[int, float | None], bool] = identity.is_alive,
) -> Verdict:
    """Whether the scheduler of `row` is alive at `now` (read after the row)."""
    if row is None:
        return Verdict(False, "no scheduler has run on this database")
    if row.ended_at is not None:
        return Verdict(False, f"the scheduler stopped: run {row.run_id} ended ({row.end_reason})")
    age = row.age(now)
    fresh = config.fresh_for(row.interval)
    if not 0 <= age < fresh:
        return Verdict(
            False,
            f"the scheduler's heartbeat is {age:.1f} s old (fresh means under {fresh:.1f} s): "
            f"run {row.run_id}",
        )
    host = socket.gethostname() if host is None else host
    if row.host == host and not alive(row.pid, row.pid_start):
        return Verdict(
            False, f"the scheduler (pid {row.pid} on {row.host}) is gone: run {row.run_id}"
        )
    return Verdict(True, f"run {row.run_id} cycle {row.cycle}, heartbeat {age:.1f} s ago")


def idle_verdict(row: SchedulerRow | None, now: float, since: float | None = None) -> Verdict:
    """Idle only when the scheduler is alive and says idle, from reads that all began after
    `since` (unix s); otherwise the reason why not."""
    life = judge(row, now)
    if not life.alive or row is None:
        return life
    if not row.idle or row.verdict_since is None:
        return Verdict(False, row.not_idle_reason or "not idle")
    if since is not None and row.verdict_since < since:
        return Verdict(False, "the idle verdict is older than the moment asked about")
    return Verdict(True, "idle")
