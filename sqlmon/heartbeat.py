"""The worker side: `Heartbeat` keeps this worker's row in worker_status and records every
stretch it closes in worker_stretches.

A beat that changes nothing inside `min_interval` is a comparison and a clock read. A beat that
writes is one UPDATE of this incarnation's row (the upsert when the row is not there: the
first beat of a process); a transition also inserts the stretch it closed, in the same
transaction. Statements are compiled once, on a DBAPI connection held for the life of the
process (closed before a fork, reopened by the next write). Once built, a Heartbeat never
raises into the worker's loop.

On PostgreSQL every write is one autocommitted statement, so one round trip and never a
transaction left open between beats: the UPDATE, with the closed stretches inserted by a
data-modifying CTE. last_heartbeat is the server's clock, and the stretch clock is anchored on
it when the process first connects, so that hosts need not agree on the time.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import socket
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from . import config, identity
from . import db as dbmod
from .dialects import db_now
from .errors import DatabaseError, SqlmonError
from .migrate import check_database
from .schema import worker_status, worker_stretches
from .states import Outcome

log = logging.getLogger(__name__)

_monotonic = time.monotonic
_UNSET = object()
_live: weakref.WeakSet[Heartbeat] = weakref.WeakSet()


def _before_fork() -> None:
    # The child must not inherit an open connection (see forks.py): the parent's heartbeats
    # let go of theirs, and their next write opens a new one, as the same incarnation.
    for hb in list(_live):
        hb._reopen = hb._beat_sql is not None
        hb._close_connection()


def _after_fork_in_parent() -> None:
    # On PostgreSQL the worker's server connection is evidence of its life: a parent that then
    # works for long without a beat must not look dead for want of one. SQLite needs nothing.
    for hb in list(_live):
        if hb._reopen:
            hb._reopen = False
            hb._write(_monotonic())


def _after_fork_in_child() -> None:
    # Heartbeats copied into a child belong to a new process: a new incarnation, with none of
    # the parent's stretches.
    for hb in list(_live):
        hb.displaced = None  # the child is a process of its own, which registers anew
        hb._init_process_state()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


class _FileReplaced(DatabaseError):
    """The database file was deleted or replaced since this connection opened it."""


class _Displaced(Exception):
    """This incarnation's row is gone: taken over under its worker id, or pruned."""


class Heartbeat:
    """A worker's heartbeat: `beat(category)`, `with busy(category):`, `close()`."""

    def __init__(
        self,
        db: str | os.PathLike[str] | sa.URL,
        worker_id: str,
        pool: str,
        *,
        min_interval: float = config.MIN_INTERVAL,
        host: str | None = None,
        boot_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`host` names this worker's machine and `boot_id` its boot (default: this machine's
        host name and boot id); `clock` is its wall clock (unix s), which on PostgreSQL only
        matters until the first connection, and for the skew it shows."""
        check_database(db)  # misconfiguration raises here, never later in the worker's loop
        dbmod.preflight(db, warn=False)  # -wal / -shm this process cannot write, NFS, FUSE
        self.db = dbmod.url_text(db)
        self.worker_id = str(worker_id)
        self.pool = str(pool)
        self.min_interval = float(min_interval)
        self.host = socket.gethostname() if host is None else str(host)
        self.boot_id = identity.boot_id() if boot_id is None else str(boot_id)
        self.clock = clock
        self.missed = 0  # writes dropped (locked database, full disk, replaced file)
        self.lost = 0  # closed stretches dropped because too many waited for a write
        # Why this worker's row is no longer its own (taken over by a process under the same
        # id, or pruned), once a write found it so: from then on nothing is written, and every
        # write is counted missed. A worker may check it to stop itself.
        self.displaced: str | None = None
        self._init_process_state()
        _live.add(self)

    def _init_process_state(self) -> None:
        """What belongs to one process: its incarnation, its stretches and its connection."""
        self._pid = 0  # set by the first open in this process
        self._registered = False  # this incarnation's row was written whole (the upsert)
        self._reopen = False  # a fork closed the connection: reopen it in the parent
        self._started_at = 0.0
        self._category: Any = _UNSET
        self._category_text: str | None = None
        self._since = 0.0  # when the open stretch began, on the stretch clock
        self._pending: list[tuple[Any, ...]] = []  # closed stretches not yet written
        # The stretch clock: wall time at the anchor plus monotonic time since, so that a
        # stretch's length is exact whatever the wall clock does meanwhile.
        self._wall0, self._mono0 = self.clock(), _monotonic()
        self._anchored = False  # on the database's clock (PostgreSQL's first connection)
        self._last_write = -float("inf")
        self._last_log = -float("inf")
        self._last_loss_log = -float("inf")
        self._contended = False  # someone holds the write lock: try it, never wait for it
        self._drop_connection()

    def _drop_connection(self) -> None:
        self._engine: sa.Engine | None = None
        self._conn: Any = None  # SQLAlchemy's pooled DBAPI connection, held for the process
        self._cursor: Any = None
        self._path: str | None = None
        self._next_check = 0.0  # monotonic s: the next look at the file (_check_file)
        self._unchecked = (0, 0)  # writes and stretches since the last look
        self._inode: tuple[int, int] | None = None
        self._sql = ""  # the upsert
        self._update_sql: str | None = None  # this incarnation's row, when it is there
        self._stretch_sql = ""
        self._whose_sql = ""
        self._beat_sql: str | None = None  # PostgreSQL's plain beat
        self._backend: str | None = None  # PostgreSQL: this connection, 'pid@postmaster start'
        # A file gone or replaced since the check is as much a dropped beat as a locked one.
        # sqlite3.Error from the start: opening runs the connection's PRAGMAs, whose errors
        # (a busy WAL index while 16 workers start at once) SQLAlchemy passes on unwrapped.
        self._errors: tuple[type[BaseException], ...] = (
            sa.exc.SQLAlchemyError,
            SqlmonError,
            sqlite3.Error,
        )
        self._busy_wait = 0.0  # s a write may wait for the lock, in the heartbeat's own steps
        self._tried = -float("inf")  # PostgreSQL: when a write last met the lock

    # Processes receive plain data: a spawned child gets the settings, never the connection.
    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "db",
            "worker_id",
            "pool",
            "min_interval",
            "missed",
            "lost",
            "host",
            "boot_id",
            "clock",
        )
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.displaced = None  # another process: it registers anew
        self._init_process_state()
        _live.add(self)

    def beat(self, category: Any = None) -> None:
        """Say this worker is alive and holds `category` (None: idle). Never raises."""
        now = _monotonic()
        if category is self._category and now - self._last_write < self.min_interval:
            return
        if category != self._category:
            self._change(category, now, Outcome.OK, None)
        elif now - self._last_write >= self.min_interval:
            self._write(now)

    @contextmanager
    def busy(self, category: Any) -> Iterator[None]:
        """Hold `category` for the block: one stretch of its own, even after a stretch of the
        same category; back to idle on the way out, recording whether the block raised."""
        self._change(category, _monotonic(), Outcome.OK, None, force=True)
        try:
            yield
        except BaseException as exc:
            self._change(None, _monotonic(), Outcome.FAILED, type(exc).__name__)
            raise
        self._change(None, _monotonic(), Outcome.OK, None)

    def close(self) -> None:
        """Mark this worker exited (a clean end, not a death) and let go of the connection."""
        now = _monotonic()
        at = self._clock(now)
        self._close_stretch(at, Outcome.OK, None)
        self._category, self._category_text, self._since = None, None, at
        self._write(now, exited=True)
        if self._pending:
            # The exit was not written: nothing will write these any more.
            self.lost += len(self._pending)
            log.warning(
                "heartbeat of %s: exit not written, %d stretch(es) lost (%d lost so far)",
                self.worker_id,
                len(self._pending),
                self.lost,
            )
        self._close_connection()
        _live.discard(self)
        self._init_process_state()

    def _clock(self, mono: float) -> float:
        return self._wall0 + (mono - self._mono0)

    def _change(
        self, category: Any, now: float, outcome: str, error: str | None, force: bool = False
    ) -> None:
        if category == self._category and not force:
            if now - self._last_write >= self.min_interval:
                self._write(now)
            return
        # Each stretch starts strictly after the last: two starts at one instant would be one
        # key of the record (a float near 1.8e9 resolves about 240 ns).
        at = self._clock(now)
        if at <= self._since:
            at = math.nextafter(self._since, math.inf)
        self._close_stretch(at, outcome, error)
        # A str needs no conversion: a call saved on the path of every change.
        self._category_text = category if type(category) is str else _text(category)
        self._category, self._since = category, at
        self._write(now)

    def _close_stretch(self, at: float, outcome: str, error: str | None) -> None:
        if self._category is _UNSET:
            return  # nothing open yet in this process
        self._pending.append((self._category_text, self._since, at, str(outcome), error))
        excess = len(self._pending) - config.UNWRITTEN_STRETCHES
        if excess > 0:
            del self._pending[:excess]
            self.lost += excess
            now = _monotonic()
            if now - self._last_loss_log >= config.MISSED_LOG_EVERY:
                self._last_loss_log = now
                log.warning(
                    "heartbeat of %s: %d stretch(es) lost so far, more than %d waited for a write",
                    self.worker_id,
                    self.lost,
                    config.UNWRITTEN_STRETCHES,
                )

    def _close_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
                assert self._engine is not None
                self._engine.dispose()
            except self._errors:
                pass
        self._drop_connection()

    def _open(self) -> None:
        engine = dbmod.engine(self.db, "heartbeat")
        pid = os.getpid()
        if engine.dialect.name == "postgresql":
            self._open_postgresql(engine)
        if pid != self._pid:
            # The first connection of this process: a new incarnation of the worker id.
            self._pid, self._started_at = pid, self._clock(_monotonic())
        self._row = (self.worker_id, pid, identity.start_time(pid), self.host, self.pool)
        self._key = (self.worker_id, pid, self._started_at)
        if self._cursor is not None:
            return  # PostgreSQL's, opened above
        self._path = dbmod.sqlite_path(dbmod.to_url(self.db))
        if self._path is not None:
            st = os.stat(self._path)
            self._inode = (st.st_dev, st.st_ino)
        conn = engine.raw_connection()
        from sqlalchemy.dialects.sqlite import pysqlite

        # Compiled once, for positional parameters bound from one tuple: SQLAlchemy 2 recompiles
        # an SQLite upsert on every execute, which would cost more than the write itself, and
        # binding by name costs the beat a few microseconds more than by position.
        dialect = pysqlite.dialect(paramstyle="qmark")
        self._sql = dbmod.positional_sql(_upsert("sqlite"), dialect, _COLUMNS)
        # Once this incarnation's row exists, a beat is a plain UPDATE of what a beat changes,
        # cheaper than the upsert, which also tries an INSERT and sets every column.
        self._update_sql = dbmod.positional_sql(_update(), dialect, _UPDATED + _KEY)
        self._whose_sql = _WHOSE.replace("%s", "?")
        self._stretch_sql = dbmod.positional_sql(_insert_stretch("sqlite"), dialect, _STRETCH)
        self._errors = (*self._errors, engine.dialect.loaded_dbapi.Error)
        self._engine, self._conn = engine, conn
        self._busy_wait = config.WORKER_BUSY_TIMEOUT
        # The connection autocommits (see db.py): a lone UPDATE is one small transaction.
        self._cursor = conn.driver_connection.cursor()  # type: ignore[union-attr]

    def _open_postgresql(self, engine: sa.Engine) -> None:
        from sqlalchemy.dialects.postgresql import psycopg

        dialect = psycopg.dialect(paramstyle="format")
        self._errors = (*self._errors, engine.dialect.loaded_dbapi.Error)
        conn = engine.raw_connection()
        driver = conn.driver_connection
        assert driver is not None
        try:
            driver.autocommit = True  # each write is one statement and its own transaction
            cursor = driver.cursor()
            before = _monotonic()
            cursor.execute(_CONNECTED)
            after = _monotonic()
            server, backend_pid, postmaster = cursor.fetchone()
            # Behind a pooler the server connection changes under the client: no connection
            # stands for this worker then.
            self._backend = None if dbmod.pooled(conn) else f"{backend_pid}@{postmaster!r}"
            if not self._anchored:
                # The stretch clock from here on is the server's: what a worker on a host
                # whose clock is off records still lines up with the runs (to within half a
                # round trip).
                self._shift_clock(server - self._clock((before + after) / 2))
        except BaseException:
            conn.close()
            engine.dispose()
            raise
        self._engine, self._conn, self._cursor = engine, conn, cursor
        names = _UPDATED_PG + _KEY
        self._sql = _CLOSED_CTE + dbmod.positional_sql(_upsert("postgresql"), dialect, _COLUMNS_PG)
        self._beat_sql = dbmod.positional_sql(_update(asynchronous=True), dialect, names)
        self._update_sql = _CLOSED_OWN_CTE + dbmod.positional_sql(
            _update(server_clock=True), dialect, names
        )
        self._whose_sql = _WHOSE

    def _shift_clock(self, shift: float) -> None:
        """Move the stretch clock by `shift` s, with what it already measured."""
        self._wall0 += shift
        if self._category is not _UNSET:
            self._since += shift
        self._pending = [(c, a + shift, b + shift, o, e) for c, a, b, o, e in self._pending]
        self._anchored = True

    def _write(self, now: float, exited: bool = False) -> None:
        if self.displaced is not None:
            self._drop(now)
            return
        if (
            self._contended
            and not exited
            and self._beat_sql is not None
            and now - self._tried < config.PG_CONTENDED_TRY_EVERY
        ):
            # PostgreSQL: someone holds the lock for long, and every try waits the server's
            # whole lock_timeout: until a write gets through, one try a second, the rest dropped.
            self.missed += 1
            self._last_write = -float("inf")
            return
        self._tried = now
        try:
            if self._cursor is None:
                self._open()
            looked = self._inode is not None and now >= self._next_check
            if looked:
                self._check_file()
            # Once anchored (PostgreSQL), the stretch clock is the server's.
            wall = self._clock(now) if self._anchored else self.clock()
            values = (
                self._category_text,
                self._since,
                wall,
                wall if exited else None,
                self.missed,
                self.lost,
            )
            stretches = [(self.worker_id, self._pid, *s) for s in self._pending]
            try:
                self._store(values, stretches)
            except self._errors as exc:
                # While someone holds the lock for long (a paused scheduler, a person in the
                # sqlite3 shell), waiting would cost every change of category the whole busy
                # timeout: until a beat gets through, beats try the lock once. The last write
                # gets its full wait.
                if not dbmod.is_busy(exc) or (self._contended and not exited):
                    raise
                # The exit is the last write: what it does not write is lost, and a worker
                # that is leaving can spare the wait.
                wait = config.CLOSE_BUSY_TIMEOUT if exited else self._busy_wait
                self._retry(values, stretches, wait, exc)
        except self._errors as exc:
            # A locked database, a full disk, an I/O error: drop this write, the next beat
            # tries again, with the stretches closed meanwhile.
            self.missed += 1
            self._contended = dbmod.is_busy(exc)
            self._last_write = -float("inf")
            if isinstance(exc, _FileReplaced):
                # What was written since the last look went into a file that is gone; the
                # file at the path now is another database, where this worker registers anew.
                self.missed += self._unchecked[0]
                self.lost += self._unchecked[1]
                self._unchecked = (0, 0)
                self._registered = False
            if isinstance(exc, _FileReplaced) or self._broken():
                # The next write opens whatever is at the path now, or a new connection to
                # the server (restarted, failed over).
                self._close_connection()
            if now - self._last_log >= config.MISSED_LOG_EVERY:
                self._last_log = now
                log.warning(
                    "heartbeat of %s dropped (%d so far): %s", self.worker_id, self.missed, exc
                )
            return
        except _Displaced as exc:
            self.displaced = str(exc)
            log.warning(
                "heartbeat of %s stops writing: its row was %s; this process no longer speaks "
                "for the worker id",
                self.worker_id,
                self.displaced,
            )
            self._close_connection()
            self._last_log = now  # said just now: _drop says it again a minute on at most
            self._drop(now)
            return
        self._registered = True
        if self._inode is not None and not looked:
            self._unchecked = (self._unchecked[0] + 1, self._unchecked[1] + len(stretches))
        self._pending = []
        self._contended = False
        self._last_write = now

    def _drop(self, now: float) -> None:
        """A write of a displaced worker: counted missed, its stretches lost, nothing written."""
        self.missed += 1
        self.lost += len(self._pending)
        self._pending = []
        self._last_write = now  # paced like a write, so that a busy loop counts no more
        if now - self._last_log >= config.MISSED_LOG_EVERY:
            self._last_log = now
            log.warning(
                "heartbeat of %s not written (%d so far): its row was %s",
                self.worker_id,
                self.missed,
                self.displaced,
            )

    def _displaced(self, cursor: Any) -> _Displaced:
        """Why this incarnation's row is not there: another process took the worker id, or
        the row was deleted (pruned)."""
        cursor.execute(self._whose_sql, (self.worker_id,))
        found = cursor.fetchone()
        if found is None:
            return _Displaced("pruned (deleted from worker_status)")
        return _Displaced(f"taken over by pid {found[0]} on {found[1]}")

    def _broken(self) -> bool:
        driver = getattr(self._conn, "driver_connection", None)
        return bool(getattr(driver, "broken", False) or getattr(driver, "closed", False))

    def _check_file(self) -> None:
        """Notice a deleted or replaced file (one stat) at most FILE_CHECK_EVERY s after the
        last look, so that a beat pays for it rarely; the writes between two looks are then
        counted missed, never silently lost."""
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except OSError:
            raise _FileReplaced(f"{self._path}: the database file is gone") from None
        if (st.st_dev, st.st_ino) != self._inode:
            raise _FileReplaced(f"{self._path}: the database file was replaced")
        self._next_check = _monotonic() + config.FILE_CHECK_EVERY
        self._unchecked = (0, 0)

    def _store(self, values: tuple[Any, ...], stretches: list[tuple[Any, ...]]) -> None:
        """Write (category, category_since, last_heartbeat, exited_at, missed, lost): an
        UPDATE of this incarnation's row, or the upsert when there is none (its first beat, a
        pruned row), and the closed `stretches`, in one transaction."""
        cursor = self._cursor
        if self._beat_sql is not None:
            self._store_postgresql(values, stretches)
            return
        if not stretches:
            self._status(cursor, values)
            return
        cursor.execute("BEGIN IMMEDIATE")
        try:
            self._status(cursor, values)
            if len(stretches) == 1:  # the usual case: execute costs less than executemany
                cursor.execute(self._stretch_sql, stretches[0])
            else:
                cursor.executemany(self._stretch_sql, stretches)
            cursor.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _store_postgresql(self, values: tuple[Any, ...], stretches: list[tuple[Any, ...]]) -> None:
        """One statement: the registration upsert at the process's first write, else the
        UPDATE of this incarnation's row; either with the closed `stretches` inserted in the
        same statement."""
        cursor = self._cursor
        text, since, _wall, exited_at, missed, lost = values
        host_clock = self.clock()  # for the skew the server works out: shown, never judged
        columns = list(zip(*stretches, strict=True)) if stretches else [()] * len(_STRETCH)
        arrays = [list(c) for c in columns[2:]]  # category .. error
        if not self._registered:
            # Its first write: the row whole (an earlier incarnation's is taken over), with
            # the stretches closed before it.
            registration = (*self._registration(values), self._backend, host_clock)
            cursor.execute(self._sql, (self.worker_id, self._pid, *arrays, *registration))
            return
        update = (text, since, exited_at, missed, lost, self._backend, host_clock, *self._key)
        if not stretches and exited_at is None:
            # A plain beat commits without waiting for its WAL to reach the disk: a beat lost
            # to a server crash is harmless (the next one says the same), and it costs the
            # server a third of a synchronous one. Registration, transitions (they carry the
            # stretches) and the exit stay synchronous.
            cursor.execute(self._beat_sql, update)
        else:
            # The stretches go in only while the row is this incarnation's.
            cursor.execute(
                self._update_sql, (self.worker_id, self._pid, *arrays, *self._key, *update)
            )
        if cursor.rowcount != 1:
            raise self._displaced(cursor)

    def _status(self, cursor: Any, values: tuple[Any, ...]) -> None:
        if self._registered:
            cursor.execute(self._update_sql, (*values, *self._key))
            if cursor.rowcount != 1:
                raise self._displaced(cursor)
            return
        # Its first write: the row whole; an earlier incarnation's row is taken over.
        cursor.execute(self._sql, self._registration(values))

    def _registration(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """The whole row, in _COLUMNS' order, from a write's values."""
        text, since, wall, exited_at, missed, lost = values
        return (
            *self._row,
            text,
            since,
            wall,
            self._started_at,
            exited_at,
            missed,
            lost,
            self.boot_id,
        )

    def _rollback(self) -> None:
        try:
            if self._conn is not None and self._conn.driver_connection.in_transaction:
                self._cursor.execute("ROLLBACK")
        except self._errors:
            pass  # the connection is broken: the next write finds out

    def _retry(
        self,
        values: tuple[Any, ...],
        stretches: list[tuple[Any, ...]],
        wait: float,
        busy: BaseException,
    ) -> None:
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
                self._store(values, stretches)
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


def _insert(name: str) -> Any:
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    return insert


def _upsert(name: str) -> Any:
    t = worker_status
    values: dict[str, Any] = {c: sa.bindparam(c) for c in _COLUMNS}
    if name == "postgresql":
        values.update(_on_postgresql())
    stmt = _insert(name)(t).values(values)
    ex = stmt.excluded
    # Another process under the same id is a new incarnation: its beats restart at 1, so that
    # nothing of the old row leaks into the new one.
    same = sa.and_(t.c.pid == ex.pid, t.c.started_at == ex.started_at)
    return stmt.on_conflict_do_update(
        index_elements=[t.c.worker_id],
        set_={
            **{c: ex[c] for c in values if c != "worker_id"},
            "beats": sa.case((same, t.c.beats + _ONE), else_=_ONE),
        },
    )


def _update(*, server_clock: bool = False, asynchronous: bool = False) -> Any:
    """This incarnation's row; with `server_clock` (PostgreSQL), last_heartbeat is the
    server's clock, not a value; `asynchronous` also commits without waiting for the disk."""
    t = worker_status
    changed: dict[str, Any] = {c: sa.bindparam(c) for c in _UPDATED}
    if server_clock or asynchronous:
        changed["last_heartbeat"] = db_now()
        changed.update(_on_postgresql())
    stmt = (
        sa.update(t)
        .where(*(t.c[c] == sa.bindparam(c) for c in _KEY))
        .values({**changed, "beats": t.c.beats + _ONE})
    )
    if asynchronous:
        # set_config(..., true) lasts until the end of the statement's own transaction, whose
        # commit it governs: one statement, no SET LOCAL round trip.
        setting = sa.select(
            sa.func.set_config(
                sa.literal_column("'synchronous_commit'"), sa.literal_column("'off'"), sa.true()
            ).label("value")
        ).subquery("async_commit")
        stmt = stmt.where(setting.c.value.is_not(None))
    return stmt


def _on_postgresql() -> dict[str, Any]:
    """What a write says on PostgreSQL besides: its connection, and the host's clock against
    the server's, which the server works out from the host's clock read at the write."""
    return {"backend": sa.bindparam("backend"), "clock_skew": sa.bindparam("host_clock") - db_now()}


def _insert_stretch(name: str) -> Any:
    # A stretch the scheduler already closed at a death it judged (a worker on another host
    # that was only silent) keeps the scheduler's record: the first one written stands.
    stmt = _insert(name)(worker_stretches).values({c: sa.bindparam(c) for c in _STRETCH})
    return stmt.on_conflict_do_nothing(
        index_elements=[worker_stretches.c.worker_id, worker_stretches.c.started]
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
    "missed",
    "lost",
    "boot_id",
)
_COLUMNS_PG = (*_COLUMNS, "backend", "host_clock")
# What a beat changes, in the order of a write's values.
_UPDATED = ("category", "category_since", "last_heartbeat", "exited_at", "missed", "lost")
_KEY = ("worker_id", "pid", "started_at")  # one incarnation's row
# last_heartbeat is the server's clock there
_UPDATED_PG = (*(c for c in _UPDATED if c != "last_heartbeat"), "backend", "host_clock")
_STRETCH = ("worker_id", "pid", "category", "started", "ended", "outcome", "error")
# The stretches a write closed, in the statement that writes the row: one worker id and pid,
# then an array per column.
_UNNEST = (
    "INSERT INTO worker_stretches "
    f"({', '.join(_STRETCH)}) "
    "SELECT %s, %s, * FROM unnest("
    "%s::text[], %s::double precision[], %s::double precision[], %s::text[], %s::text[]) AS s "
)
_CONFLICT = "ON CONFLICT (worker_id, started) DO NOTHING"
_CLOSED_CTE = f"WITH closed AS ({_UNNEST}{_CONFLICT}) "
# ... only while this incarnation's row is there (worker_id, pid, started_at), so that a
# displaced worker's stretches count among nobody's.
_CLOSED_OWN_CTE = (
    f"WITH closed AS ({_UNNEST}WHERE EXISTS (SELECT 1 FROM worker_status "
    f"WHERE worker_id = %s AND pid = %s AND started_at = %s) {_CONFLICT}) "
)
_WHOSE = "SELECT pid, host FROM worker_status WHERE worker_id = %s"
_CONNECTED = (  # at each connection: the clock, and which server connection this is
    "SELECT extract(epoch FROM clock_timestamp())::float8, pg_backend_pid(), "
    "extract(epoch FROM pg_postmaster_start_time())::float8"
)
