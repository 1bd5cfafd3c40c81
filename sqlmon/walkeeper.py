"""The scheduler's upkeep of the WAL: keep it from growing without bound under a steady
stream of beats, without ever checkpointing in the pattern that can corrupt a database on an
SQLite with the WAL-reset bug (see db.shrink_wal)."""

from __future__ import annotations

import logging
from collections import Counter

import sqlalchemy as sa
from sqlalchemy import Connection

from . import config, guards
from . import db as dbmod
from .migrate import describe

log = logging.getLogger(__name__)


class WalKeeper:
    """Around each cycle's commit: `before_commit()` decides whether this cycle starts the WAL
    over, `after_commit(shrinking)` does it and warns once while the WAL stays too large.
    Failures are counted in `errors` (by kind), never raised: the next cycle tries again."""

    def __init__(self, conn: Connection, wal: str | None, errors: Counter[str]) -> None:
        self.conn, self.wal, self.errors = conn, wal, errors
        # With the WAL-reset bug, the scheduler's own checkpoints never run back to back.
        self.careful = guards.has_wal_reset_bug()
        self._warned = False

    def before_commit(self) -> bool:
        """Whether this cycle starts the WAL over: the -wal file is past WAL_RESTART_BYTES. On
        an SQLite with the WAL-reset bug, only if this cycle's commit was kept from
        checkpointing, so that shrink_wal's first PASSIVE pass follows no other checkpoint of
        the scheduler's. Set every cycle (one pragma): a reconnected connection comes back
        with the regular setting."""
        shrinking = dbmod.wal_size(self.wal) > config.WAL_RESTART_BYTES
        if not self.careful:
            return shrinking
        try:
            dbmod.set_autocheckpoint(
                self.conn, 0 if shrinking else config.SCHEDULER_AUTOCHECKPOINT_PAGES
            )
        except sa.exc.DatabaseError as exc:
            self.errors[f"checkpoint: {describe(exc)}"] += 1
            return False  # the commit may checkpoint: no shrink_wal right after it
        return shrinking

    def skipped(self, shrinking: bool, exc: BaseException) -> bool:
        """Whether to shrink after a commit that failed with `exc`: with the WAL-reset bug, not
        while someone else holds the write lock (its RESTART would run as a PASSIVE pass right
        after a complete one)."""
        return shrinking and not (self.careful and dbmod.is_busy(exc))

    def after_commit(self, shrinking: bool) -> None:
        if shrinking:
            try:
                dbmod.shrink_wal(self.conn, passes=2 if self.careful else 1)
            except sa.exc.DatabaseError as exc:
                self.errors[f"checkpoint: {describe(exc)}"] += 1
        size = dbmod.wal_size(self.wal)
        if size > config.WAL_WARN_BYTES and not self._warned:
            self._warned = True
            log.warning(
                "the WAL has grown to %.0f MB: a long read transaction is holding back checkpoints",
                size / 1e6,
            )
        elif size <= config.WAL_WARN_BYTES:
            self._warned = False
