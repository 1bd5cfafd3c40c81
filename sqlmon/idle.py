"""The main process's side: is the whole system done, and waiting until it is."""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from sqlalchemy import Connection

from . import config, liveness
from . import db as dbmod
from .errors import SchedulerGone
from .migrate import check_database


def idle_now(conn: Connection, since: float | None = None) -> liveness.Verdict:
    """The idle row's verdict, honoured only while its scheduler is alive (liveness.judge)."""
    row, now = liveness.observe(conn)
    return liveness.idle_verdict(row, now, since)


def is_idle(db: str | os.PathLike[str] | sa.URL, since: float | None = None) -> bool:
    """True only when the scheduler is alive and says idle; with `since` (unix s), only when
    every read behind that verdict began after it."""
    check_database(db)  # a missing, foreign or outdated database: the same clear error as anywhere
    with dbmod.connect(db, "read") as conn:
        return idle_now(conn, since).alive


def wait_idle(
    db: str | os.PathLike[str] | sa.URL,
    timeout: float | None = None,
    *,
    since: float | None = None,
    poll: float = config.IDLE_POLL,
    start_grace: float = config.START_GRACE,
) -> bool:
    """Wait until is_idle(db, since) holds: True then, False once `timeout` s have passed.

    Raises SchedulerGone, with the reason, when the scheduler is not alive: at once once it
    had been seen alive during the wait, else once it has stayed so for `start_grace` s (or
    the freshness bound, if longer): time for a scheduler started just before the call to
    write its first row. `since` defaults to the moment of the call, so work enqueued just
    before it is never missed.
    """
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    seen_alive = False
    check_database(db)  # the same clear error as anywhere for a foreign or missing file
    with dbmod.connect(db, "read") as conn:
        # On the database's clock, which the scheduler's verdict is stamped with.
        since = dbmod.clock(conn) if since is None else since
        while True:
            row, now = liveness.observe(conn)
            verdict = liveness.idle_verdict(row, now, since)
            if verdict.alive:
                return True
            life = liveness.judge(row, now)
            seen_alive = seen_alive or life.alive
            interval = row.interval if row is not None else config.INTERVAL
            if not life.alive and (
                seen_alive
                or time.monotonic() - started >= max(config.fresh_for(interval), start_grace)
            ):
                raise SchedulerGone(life.reason)
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(
                poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            )
