"""The worker side: `Heartbeat` upserts this worker's row in worker_status.

A beat that changes nothing inside `min_interval` is a comparison and a clock read. A beat that
writes is one autocommitted UPDATE of this incarnation's row (the upsert when the row is not
there: the first beat of a process), each prepared once, on a DBAPI connection held for the
life of the process. Once built, a Heartbeat never raises into the worker's loop.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from . import config, procs
from . import db as dbmod
from .errors import SqlmonError
from .migrate import check_database
from .schema import worker_status

log = logging.getLogger(__name__)

_monotonic = time.monotonic
_UNSET = object()
_live: weakref.WeakSet[Heartbeat] = weakref.WeakSet()
# Connections inherited through fork are kept here, never used and never closed: closing a
# parent's SQLite connection in the child would release the parent's locks behind its back.
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    for hb in list(_live):
        hb._forget_connection()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Heartbeat:
    """A worker's heartbeat: `beat(category)`, `with busy(category):`, `close()`."""

    def __init__(
        self,
        db: str | os.PathLike[str] | sa.URL,
        worker_id: str,
        pool: str,
        *,
        min_interval: float = config.MIN_INTERVAL,
    ) -> None:
        check_database(db)  # misconfiguration raises here, never later in the worker's loop
        dbmod.preflight(db, warn=False)  # -wal / -shm this process cannot write, NFS, FUSE
        self.db = dbmod.url_text(db)
        self.worker_id = str(worker_id)
        self.pool = str(pool)
        self.min_interval = float(min_interval)
        self.missed = 0
        self._init_process_state()
        _live.add(self)

    def _init_process_state(self) -> None:
        self._engine: sa.Engine | None = None
        self._conn: Any = None  # SQLAlchemy's pooled DBAPI connection, held for the process
        self._cursor: Any = None
        self._row: tuple[Any, ...] = ()  # worker_id, pid, pid_start, host, pool: fixed
        self._started_at = 0.0
        self._category_text: str | None = None
        self._category_since = 0.0
        self._sql = ""  # the upsert
        self._update_sql: str | None = None  # this incarnation's row, when it is there
        self._key: tuple[Any, ...] = ()  # worker_id, pid, started_at: the UPDATE's WHERE
        # A file gone or replaced since the check is as much a dropped beat as a locked one.
        # sqlite3.Error from the start: opening runs the connection's PRAGMAs, whose errors
        # (a busy WAL index while 16 workers start at once) SQLAlchemy passes on unwrapped.
        self._errors: tuple[type[BaseException], ...] = (
            sa.exc.SQLAlchemyError,
            SqlmonError,
            sqlite3.Error,
        )
        self._category: Any = _UNSET
        self._last_write = -float("inf")
        self._last_log = -float("inf")
        self._contended = False  # someone holds the write lock: try it, never wait for it
        self._busy_wait = 0.0  # s a write may wait for the lock, in the heartbeat's own steps

    # Processes receive plain data: a spawned child gets the settings, never the connection.
    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("db", "worker_id", "pool", "min_interval", "missed")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()
        _live.add(self)

    def _forget_connection(self) -> None:
        if self._conn is not None:
            _inherited.append((self._engine, self._conn, self._cursor))
        self._init_process_state()

    def beat(self, category: Any = None) -> None:
        """Say this worker is alive and holds `category` (None: idle). Never raises."""
        now = _monotonic()
        if category is self._category and now - self._last_write < self.min_interval:
            return
        if category != self._category or now - self._last_write >= self.min_interval:
            self._write(category, now)

    @contextmanager
    def busy(self, category: Any) -> Iterator[None]:
        """Hold `category` for the block, and go back to idle on the way out, whatever happens."""
        self.beat(category)
        try:
            yield
        finally:
            self.beat(None)

    def close(self) -> None:
        """Mark this worker exited (a clean end, not a death) and let go of the connection."""
        self._write(None, _monotonic(), exited=True)
        if self._conn is not None:
            try:
                self._conn.close()
                assert self._engine is not None
                self._engine.dispose()
            except self._errors:
                pass
        _live.discard(self)
        self._init_process_state()

    def _open(self) -> None:
        engine = dbmod.engine(self.db, "worker")
        pid = os.getpid()
        wall = time.time()
        self._row = (self.worker_id, pid, procs.start_time(pid), socket.gethostname(), self.pool)
        self._started_at = self._category_since = wall
        if engine.dialect.name != "sqlite":
            # Other backends take the portable path: an SQLAlchemy upsert in its own transaction.
            self._engine, self._conn = engine, engine.connect()
            self._cursor = _Portable(self._conn, _upsert(engine.dialect.name))
            return
        conn = engine.raw_connection()
        from sqlalchemy.dialects.sqlite import pysqlite

        # Compiled once, for positional parameters bound from one tuple: SQLAlchemy 2 recompiles
        # an SQLite upsert on every execute, which would cost more than the write itself, and
        # binding by name costs the beat a few microseconds more than by position.
        dialect = pysqlite.dialect(paramstyle="qmark")
        self._sql = dbmod.positional_sql(_upsert("sqlite"), dialect, _COLUMNS)
        # Once this incarnation's row exists, a beat is a plain UPDATE of what a beat changes:
        # about 1.2 us less than the upsert, which also tries an INSERT and sets every column.
        self._update_sql = dbmod.positional_sql(_update(), dialect, _UPDATED + _KEY)
        self._key = (self.worker_id, pid, wall)
        self._errors = (*self._errors, engine.dialect.loaded_dbapi.Error)
        self._engine, self._conn = engine, conn
        self._busy_wait = config.WORKER_BUSY_TIMEOUT
        # The connection autocommits (see db.py): the upsert is one small transaction.
        self._cursor = conn.driver_connection.cursor()  # type: ignore[union-attr]

    def _write(self, category: Any, now: float, exited: bool = False) -> None:
        try:
            if self._cursor is None:
                self._open()
            wall = time.time()
            if category != self._category:
                # A str needs no conversion: a call saved on the path of every write.
                text = category if type(category) is str else _text(category)
                since = wall
            else:
                text, since = self._category_text, self._category_since
            values = (text, since, wall, wall if exited else None)
            try:
                self._store(values)
            except self._errors as exc:
                # While someone holds the lock for long (a paused scheduler, a person in the
                # sqlite3 shell), waiting would cost every change of category the whole busy
                # timeout: until a beat gets through, beats try the lock once. The last write
                # gets its full wait.
                if not dbmod.is_busy(exc) or (self._contended and not exited):
                    raise
                self._retry(values, self._busy_wait, exc)
        except self._errors as exc:
            # A locked database, a full disk, an I/O error: drop this beat, the next one tries.
            self.missed += 1
            self._contended = dbmod.is_busy(exc)
            if now - self._last_log >= config.MISSED_LOG_EVERY:
                self._last_log = now
                log.warning(
                    "heartbeat of %s dropped (%d so far): %s", self.worker_id, self.missed, exc
                )
            return
        self._contended = False
        self._category, self._category_text, self._category_since = category, text, since
        self._last_write = now

    def _store(self, values: tuple[Any, ...]) -> None:
        """Write (category, category_since, last_heartbeat, exited_at): an UPDATE of this
        incarnation's row, or the upsert when there is none (its first beat, a pruned row, or
        the portable path). Each statement is its own small transaction."""
        cursor = self._cursor
        if self._update_sql is not None:
            cursor.execute(self._update_sql, (*values, *self._key))
            if cursor.rowcount == 1:
                return
        text, since, wall, exited_at = values
        cursor.execute(self._sql, (*self._row, text, since, wall, self._started_at, exited_at))

    def _retry(self, values: tuple[Any, ...], wait: float, busy: BaseException) -> None:
        """The write again after `busy` (SQLITE_BUSY), for up to `wait` s; `busy` is raised
        when the lock is not had by then.

        SQLite's own busy handler sleeps 1 ms at its first retry, then longer; a writer holds
        the lock for tens of microseconds, so the heartbeat's connection has no busy timeout
        (see db.py) and waits here in steps that start at 20 us instead.
        """
        delay, deadline = 20e-6, _monotonic() + wait
        while _monotonic() + delay <= deadline:
            try:
                time.sleep(delay)
            except OSError:
                break  # a sleep that fails (seen under libfaketime): give up
            try:
                self._store(values)
                return
            except self._errors as exc:
                if not dbmod.is_busy(exc):
                    raise
                busy = exc
            delay = min(delay * 2, 0.002)
        raise busy


def _text(category: Any) -> str | None:
    if category is None:
        return None
    if isinstance(category, enum.Enum):
        return str(category.name)
    return str(category)


class _Portable:
    """A cursor look-alike that writes through SQLAlchemy Core, for backends other than SQLite."""

    def __init__(self, conn: sa.Connection, stmt: Any) -> None:
        self.conn, self.stmt = conn, stmt

    def execute(self, _sql: str, row: tuple[Any, ...]) -> None:
        with self.conn.begin():
            self.conn.execute(self.stmt, dict(zip(_COLUMNS, row, strict=True)))


def _upsert(name: str) -> Any:
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    t = worker_status
    stmt = insert(t).values({c: sa.bindparam(c) for c in _COLUMNS})
    ex = stmt.excluded
    # Another process under the same id is a new incarnation: its beats restart at 1, so that
    # nothing of the old row leaks into the new one.
    same = sa.and_(t.c.pid == ex.pid, t.c.started_at == ex.started_at)
    return stmt.on_conflict_do_update(
        index_elements=[t.c.worker_id],
        set_={
            **{c: ex[c] for c in _COLUMNS if c != "worker_id"},
            "beats": sa.case((same, t.c.beats + _ONE), else_=_ONE),
        },
    )


def _update() -> Any:
    t = worker_status
    return (
        sa.update(t)
        .where(*(t.c[c] == sa.bindparam(c) for c in _KEY))
        .values({**{c: sa.bindparam(c) for c in _UPDATED}, "beats": t.c.beats + _ONE})
    )


_ONE: Any = sa.literal_column("1")  # rendered in the SQL: the prepared statement binds no constant
_COLUMNS = (
    "worker_id",
    "pid",
    "pid_start",
    "host",
    "pool",
    "category",
    "category_since",
    "last_heartbeat",
    "started_at",
    "exited_at",
)
_UPDATED = ("category", "category_since", "last_heartbeat", "exited_at")  # what a beat changes
_KEY = ("worker_id", "pid", "started_at")  # one incarnation's row
