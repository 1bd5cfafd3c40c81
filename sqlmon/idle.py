"""The main process's side: is the whole system done, and waiting until it is."""

from __future__ import annotations

import os
import socket
import time

import sqlalchemy as sa
from sqlalchemy import Connection

from . import config, procs
from . import db as dbmod
from .schema import runs, scheduler_state

_ROW = sa.select(
    scheduler_state.c.idle,
    scheduler_state.c.heartbeat,
    scheduler_state.c.interval,
    scheduler_state.c.verdict_since,
    runs.c.ended_at,
    scheduler_state.c.pid,
    scheduler_state.c.host,
).join_from(scheduler_state, runs, runs.c.run_id == scheduler_state.c.run_id)


def idle_now(conn: Connection, since: float | None = None, now: float | None = None) -> bool:
    """The idle row's verdict, honoured only while its scheduler is alive and its reads fresh."""
    with dbmod.read(conn):
        row = conn.execute(_ROW).first()
    if row is None:
        return False
    idle, heartbeat, interval, verdict_since, ended_at, pid, host = row
    now = time.time() if now is None else now
    if not idle or ended_at is not None or verdict_since is None:
        return False
    # A row left by a dead scheduler goes stale: it never reads as idle.
    if not 0 <= now - heartbeat < config.fresh_for(interval):
        return False
    # On the scheduler's own host its death is known at once, before the row goes stale.
    if host == socket.gethostname() and not procs.is_alive(pid, None):
        return False
    return since is None or verdict_since >= since


def is_idle(db: str | os.PathLike[str] | sa.URL, since: float | None = None) -> bool:
    """True only when the scheduler is alive and says idle; with `since` (unix s), only when
    every read behind that verdict began after it."""
    engine = dbmod.engine(db, "read")
    try:
        with engine.connect() as conn:
            return idle_now(conn, since)
    finally:
        engine.dispose()


def wait_idle(
    db: str | os.PathLike[str] | sa.URL,
    timeout: float | None = None,
    *,
    since: float | None = None,
    poll: float = config.IDLE_POLL,
) -> bool:
    """Wait until is_idle(db, since) holds; False after `timeout` s. `since` defaults to the
    moment of the call, so work enqueued just before it is never missed."""
    since = time.time() if since is None else since
    deadline = None if timeout is None else time.monotonic() + timeout
    engine = dbmod.engine(db, "read")
    try:
        with engine.connect() as conn:
            while True:
                if idle_now(conn, since):
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(
                    poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
                )
    finally:
        engine.dispose()
