"""Engines and connections: the one place that knows about SQLite pragmas and URIs, and about
PostgreSQL's session settings, isolation levels and connection poolers.

Every other module gets an engine from `engine()` and a transaction from `read()` or
`write()`, so that another backend is a change of URL.
"""

from __future__ import annotations

import gc
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection

from . import config, forks, guards
from .errors import ConfigError, DatabaseError, DatabaseMissing

# Named by what each connection does: create (and migrate) the database; the scheduler's
# cycles; a worker's heartbeat; a person's or a pipeline's tool that writes (prune, the demo's
# task table); reading.
Role = Literal["create", "scheduler", "heartbeat", "tool", "read"]

# How each role opens the file, how long it waits for a lock (s), and how far its WAL may grow
# before it checkpoints by itself (pages). Only create may create the file.
_MODES = {"create": "rwc", "scheduler": "rw", "heartbeat": "rw", "tool": "rw", "read": "ro"}
_BUSY = {
    "create": config.INIT_BUSY_TIMEOUT,
    "scheduler": config.SCHEDULER_BUSY_TIMEOUT,
    "heartbeat": 0.0,  # the heartbeat waits for the lock itself, in finer steps than SQLite's
    "tool": config.INIT_BUSY_TIMEOUT,  # waits its turn for the lock, as a person's tool would
    "read": config.READ_BUSY_TIMEOUT,
}
_CONNECT_BUSY_MS = int(config.WORKER_BUSY_TIMEOUT * 1000)  # for a new connection's PRAGMAs
_AUTOCHECKPOINT = {
    "create": config.SCHEDULER_AUTOCHECKPOINT_PAGES,
    "scheduler": config.SCHEDULER_AUTOCHECKPOINT_PAGES,
    "heartbeat": config.WORKER_AUTOCHECKPOINT_PAGES,
    "tool": config.WORKER_AUTOCHECKPOINT_PAGES,
}


def to_url(db: str | os.PathLike[str] | URL) -> URL:
    """An SQLAlchemy URL for a file path or a URL string."""
    if isinstance(db, URL):
        return db
    text = os.fspath(db)
    if "://" in text:
        return sa.make_url(text)
    # Built field by field, so that '?' and '#' in a file name stay part of the path.
    return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))


def url_text(db: str | os.PathLike[str] | URL) -> str:
    """The URL as a plain string that survives pickling into a spawned process."""
    url = to_url(db)
    path = sqlite_path(url)
    if path is not None:
        return path  # a plain path: no URL quoting rules to get wrong
    return url.render_as_string(hide_password=False)


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def is_postgresql(url: URL) -> bool:
    return url.get_backend_name() == "postgresql"


def sqlite_path(url: URL) -> str | None:
    """The database file of an SQLite URL, or None for memory databases and other backends."""
    if not is_sqlite(url):
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return str(Path(database).absolute())


def engine(
    db: str | os.PathLike[str] | URL,
    role: Role,
    *,
    file_mode: int = config.DB_FILE_MODE,
    **kwargs: object,
) -> Engine:
    """An engine for `role`; for SQLite, the file is opened with the role's mode and pragmas.
    The create role creates a missing file with `file_mode` (-wal and -shm inherit it)."""
    url = to_url(db)
    path = sqlite_path(url)
    if path is None:
        if not is_postgresql(url):
            return sa.create_engine(url, **kwargs)  # type: ignore[arg-type]
        url, options = _pooler_options(url)
        eng = sa.create_engine(url, **kwargs)  # type: ignore[arg-type]
        _configure_postgresql(eng, role, *options)
        return eng
    if role != "create" and not os.path.exists(path):
        raise DatabaseMissing(f"{path}: no such database (create it with `sqlmon init`)")
    if os.path.isdir(path):
        raise DatabaseError(f"{path}: is a directory, not a database")
    forks.require_clean(path)
    if role in ("create", "scheduler"):
        preflight(path, warn=True)
    if role == "scheduler":
        guards.tell_sqlite_version()  # a scheduler starting: where the WAL-reset notice matters
    if role == "create" and not os.path.exists(path):
        guards.create_owner_only(path, file_mode)
    uri = URL.create(
        "sqlite",
        database=f"file:{quote(path, safe='/')}?mode={_MODES[role]}",
        query={"uri": "true"},
    )
    eng = sa.create_engine(uri, connect_args={"timeout": _BUSY[role]}, **kwargs)  # type: ignore[arg-type]
    _configure_sqlite(eng, role)
    return eng


@contextmanager
def connect(db: str | os.PathLike[str] | URL, role: Role, **kwargs: Any) -> Iterator[Connection]:
    """A connection of `role` for the block; its engine is disposed on the way out."""
    eng = engine(db, role, **kwargs)
    try:
        with eng.connect() as conn:
            yield conn
    finally:
        eng.dispose()


def preflight(db: str | os.PathLike[str] | URL, *, warn: bool) -> None:
    """The environment guards for a process that will write the database (SQLite's version,
    a local filesystem, writable -wal / -shm files); raise DatabaseError with the fix.
    `warn` logs the world-writable directory warning: for whoever starts the monitor, not
    each worker."""
    path = sqlite_path(to_url(db))
    if path is None:
        return
    guards.require_sqlite()
    guards.require_local_filesystem(path)
    guards.require_writable_sidecars(path)
    if warn:
        guards.warn_world_writable(path)


def _configure_sqlite(eng: Engine, role: Role) -> None:
    busy_ms = int(_BUSY[role] * 1000)

    @event.listens_for(eng, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # SQLAlchemy's documented pysqlite recipe: turn off the driver's own transaction
        # handling, so that BEGIN is emitted by us (below) and DDL runs inside transactions.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            # The PRAGMAs below may meet a busy WAL index (many processes opening at once):
            # they wait as long as a beat would; the role's own timeout is set last.
            cur.execute(f"PRAGMA busy_timeout = {max(busy_ms, _CONNECT_BUSY_MS)}")
            if role == "read":
                cur.execute("PRAGMA query_only = 1")
                return
            if role in ("create", "scheduler"):
                # Switching a new file to WAL takes an exclusive lock, and SQLite skips the busy
                # handler when waiting could deadlock (another opener holds its shared lock): when
                # several processes create the database at once, retry for the busy timeout.
                deadline = time.monotonic() + _BUSY[role]
                while True:
                    try:
                        mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    except sqlite3.OperationalError as exc:
                        if is_busy(exc) and time.monotonic() < deadline:
                            time.sleep(0.01)
                            continue
                        # e.g. the -wal file cannot be created: say WAL, not "disk I/O error".
                        mode = f"an error: {exc}"
                    break
                if str(mode).lower() != "wal":
                    raise DatabaseError(
                        f"WAL journal mode did not engage (got {mode}); sqlmon needs WAL: "
                        "check that the database's directory is local and writable"
                    )
            # NORMAL is durable against a killed process in WAL mode; only power loss can
            # drop the last commits, never corrupt the file.
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT[role]}")
            cur.execute(f"PRAGMA journal_size_limit = {config.JOURNAL_SIZE_LIMIT_BYTES}")
            if busy_ms < _CONNECT_BUSY_MS:
                cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        finally:
            cur.close()

    @event.listens_for(eng, "begin")
    def _on_begin(conn: Connection) -> None:
        # A read-then-write transaction must take the write lock up front: a deferred one that
        # upgrades later fails at once with SQLITE_BUSY, whatever the busy timeout.
        # On the driver's cursor: through exec_driver_sql, SQLAlchemy's bookkeeping would cost
        # more than the statement, twice a scheduler cycle.
        sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlmon_write") else "BEGIN"
        with _driver_cursor(conn, sql) as cur:
            cur.execute(sql)


# URL options that the driver would not understand, taken out of the URL before it gets it.
# sqlmon_pooled=true says there is a pooler, whatever the detection finds. Never false: the
# settings of a session that a pooler shares would reach its other clients.
POOLED_OPTION = "sqlmon_pooled"
PREPARE_OPTION = "prepare_threshold"  # psycopg's own, which it cannot take as text
_TOLD = {"true": True, "yes": True, "on": True, "1": True, "auto": False}
_POOLED = "sqlmon.pooled"  # in a pool record's info: what the connect hook found
_UNSET: Any = object()


def pooled(conn: Connection | PoolProxiedConnection) -> bool:
    """Whether a connection pooler (PgBouncer) stood between this connection and the server
    when it connected: its server session, and that session's backend pid, may then change
    from one transaction to the next and serve other clients too. False on SQLite."""
    return bool(conn.info.get(_POOLED, False))


def _pooler_options(url: URL) -> tuple[URL, tuple[bool, Any]]:
    """The URL without sqlmon's pooler options, and their values: whether a pooler is said to
    be there (else it is detected), and psycopg's prepare_threshold (_UNSET: sqlmon's choice)."""
    text = url.query.get(POOLED_OPTION, "auto")
    told = _TOLD.get(str(text).lower())
    if told is None:
        raise ConfigError(f"{POOLED_OPTION}={text}: use true (a pooler sits between) or auto")
    threshold = url.query.get(PREPARE_OPTION)
    prepare: Any = _UNSET
    if threshold is not None:
        if str(threshold).lower() in ("", "none"):
            prepare = None
        elif str(threshold).isdigit():
            prepare = int(str(threshold))
        else:
            raise ConfigError(f"{PREPARE_OPTION}={threshold}: use a number of runs, or none")
    return url.difference_update_query([POOLED_OPTION, PREPARE_OPTION]), (told, prepare)


def _configure_postgresql(
    eng: Engine, role: Role, told: bool = False, prepare: Any = _UNSET
) -> None:
    timeouts = {
        # Bounds, not expectations: a beat takes well under a millisecond.
        "statement_timeout": f"{int(config.PG_STATEMENT_TIMEOUT[role] * 1000)}",
        "lock_timeout": f"{int(config.PG_LOCK_TIMEOUT[role] * 1000)}",
        # Nothing of sqlmon leaves a transaction open; should a bug do so, its locks and its
        # snapshot (which holds back vacuum) go after this long.
        "idle_in_transaction_session_timeout": f"{int(config.PG_IDLE_IN_TRANSACTION[role] * 1000)}",
    }
    session = dict(timeouts)
    if role == "read":
        session["default_transaction_read_only"] = "on"
    # Whether a pooler sits between: libpq's backend pid is then the pooler's own (PgBouncer
    # makes one up for each client), not the server's. Only a direct session keeps settings:
    # behind a pooler they would stay on a server session other clients use next.
    kept = (
        f"CASE WHEN NOT pooled THEN set_config('{k}', '{v}', false) END" for k, v in session.items()
    )
    connected = (
        f"SELECT pooled, {', '.join(kept)} "
        "FROM (SELECT %s OR pg_backend_pid() <> %s AS pooled) AS this"
    )
    # Behind a pooler, what must hold is set again in each transaction, for it alone.
    local = "SELECT " + ", ".join(f"set_config('{k}', '{v}', true)" for k, v in timeouts.items())

    @event.listens_for(eng, "do_connect")
    def _on_do_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        # A startup parameter, which PgBouncer keeps per client, unlike a session setting.
        cparams["application_name"] = f"sqlmon-{role}"

    @event.listens_for(eng, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # One statement and, in autocommit, no BEGIN or COMMIT: one round trip.
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cur:
            cur.execute(connected, (told, dbapi_connection.info.backend_pid))
            behind = bool(cur.fetchone()[0])
        dbapi_connection.autocommit = False
        record.info[_POOLED] = behind
        if prepare is not _UNSET:
            dbapi_connection.prepare_threshold = prepare
        elif behind:
            # A statement psycopg prepared on one server session is unknown to the next (a
            # pooler that tracks prepared statements, PgBouncer 1.21+, may be told otherwise
            # with prepare_threshold in the URL).
            dbapi_connection.prepare_threshold = None

    @event.listens_for(eng, "begin")
    def _on_begin(conn: Connection) -> None:
        # read() sees one snapshot for all its statements, as on SQLite: REPEATABLE READ, and
        # read-only. write() stays READ COMMITTED, so that a fenced UPDATE that waited for a
        # concurrent one re-reads the row and affects none, instead of failing to serialize.
        # psycopg puts both into its BEGIN: no round trip of their own. The read role never
        # writes, whichever transaction it asks for.
        driver = conn.connection.driver_connection
        writing = bool(conn.get_execution_options().get("sqlmon_write"))
        driver.isolation_level = None if writing else _repeatable_read()  # type: ignore[union-attr]
        driver.read_only = None if writing and role != "read" else True  # type: ignore[union-attr]
        if pooled(conn):
            with _driver_cursor(conn, local) as cur:
                cur.execute(local)


def _repeatable_read() -> Any:
    import psycopg  # only for a PostgreSQL URL: SQLite users never import it

    return psycopg.IsolationLevel.REPEATABLE_READ


def clock(conn: Connection) -> float:
    """The database's clock (unix s). On PostgreSQL every process, on every host, judges ages
    on the server's clock; on SQLite the database's clock is this host's."""
    if conn.dialect.name == "sqlite":
        return time.time()
    from .dialects import db_now

    if conn.in_transaction():
        return float(conn.execute(sa.select(db_now())).scalar_one())
    with read(conn):  # not left open: an open transaction would pin a snapshot
        return float(conn.execute(sa.select(db_now())).scalar_one())


def lock_schema(conn: Connection) -> None:
    """Inside a write transaction: wait until no other process changes the schema. SQLite's
    write lock does this already; PostgreSQL takes a transaction-level advisory lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))


_SCHEMA_LOCK = 0x73716C6D6F6E  # "sqlmon": the advisory lock key init_db holds


@contextmanager
def read(conn: Connection) -> Iterator[Connection]:
    """One read transaction: a consistent snapshot, ended promptly (an open read pins the WAL)."""
    with conn.begin():
        yield conn


@contextmanager
def write(conn: Connection) -> Iterator[Connection]:
    """One write transaction that holds the write lock from its first statement.

    The garbage collector waits until it ends: a collection while the lock is held stalls every
    writer, and in a process forked from a large parent one can take a hundred milliseconds
    (it touches, and so copies, every inherited page).
    """
    conn.execution_options(sqlmon_write=True)
    collecting = gc.isenabled()
    gc.disable()
    try:
        with conn.begin():
            yield conn
    finally:
        if collecting:
            gc.enable()
        conn.execution_options(sqlmon_write=False)


def _pragma(conn: Connection, sql: str) -> list[tuple[object, ...]]:
    # On the driver's connection, outside any transaction: through SQLAlchemy, the statement
    # would autobegin one, and a checkpoint inside a read transaction cannot pass its snapshot.
    with _driver_cursor(conn, sql) as cur:
        return cur.execute(sql).fetchall()  # type: ignore[no-any-return]


@contextmanager
def _driver_cursor(conn: Connection, sql: str, kind: str | None = None) -> Iterator[Any]:
    """A cursor on the driver's connection whose errors are raised as SQLAlchemy raises every
    other statement's, so that callers' except clauses see them (an I/O error, a full disk,
    a connection to the server that was lost, which psycopg reports as early as cursor()).
    `kind` names one of psycopg's cursor classes: RawCursor takes SQL with the server's own $1
    placeholders, ClientCursor binds the values on this side."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    driver: Any = conn.connection.driver_connection
    try:
        if kind is not None:
            import psycopg  # only on PostgreSQL

            cur = getattr(psycopg, kind)(driver)
        else:
            cur = driver.cursor()
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, dbapi_error) from exc
    try:
        yield cur
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, dbapi_error) from exc
    finally:
        cur.close()


def positional_sql(stmt: Any, dialect: Any, names: tuple[str, ...]) -> str:
    """The statement's SQL for `dialect`, compiled once by the caller, after checking that it
    binds `names` in that order (values are then passed as a tuple)."""
    compiled = stmt.compile(dialect=dialect)
    binds = tuple(compiled.positiontup or ())
    if binds != names:
        raise RuntimeError(f"{stmt} binds {binds}, not {names}")
    return str(compiled.string)


def _positional(dialect: Any) -> Any:
    """`dialect` when it binds by position (pysqlite), else one of its kind that binds with %s
    (psycopg's own placeholder), so that values go to the driver's cursor as a tuple."""
    return dialect if dialect.positional else type(dialect)(paramstyle="format")


class Prepared:
    """A statement compiled once and run with positional values, for statements that run every
    scheduler cycle.

    Connection.execute spends many times more per statement on SQLAlchemy's bookkeeping (cache
    key, execution context, result rows) than the driver's cursor does on the statement, and a
    cycle runs six statements or more, some on a thousand rows. So the statement is compiled
    once per dialect and runs on the driver's cursor, inside the transaction SQLAlchemy began.
    `stmt` binds `names`, in that order, or is SQL text without parameters, or builds the
    statement for a dialect's name (an upsert's ON CONFLICT is written per dialect).
    """

    def __init__(
        self,
        stmt: sa.Executable | str | Callable[[str], sa.Executable],
        names: tuple[str, ...] = (),
    ) -> None:
        self._build = stmt if callable(stmt) and not isinstance(stmt, sa.ClauseElement) else None
        self.stmt: Any = None if self._build is not None else stmt
        self.names = names
        self._sql: dict[tuple[str, bool], str] = {}  # (dialect, returning) -> SQL
        self._by_dialect: dict[str, Any] = {}

    def _stmt(self, conn: Connection) -> Any:
        if self._build is None:
            return self.stmt
        name = conn.dialect.name
        if name not in self._by_dialect:
            self._by_dialect[name] = self._build(name)
        return self._by_dialect[name]

    def _compiled(self, conn: Connection, returning: bool = False) -> str:
        # On the driver's cursor nothing begins a transaction: outside read() or write() each
        # statement would commit alone, and a kill between two could leave half a cycle.
        if not conn.in_transaction():
            raise RuntimeError("a prepared statement runs inside db.read() or db.write()")
        key = (conn.dialect.name, returning)
        if key not in self._sql:
            stmt = self._stmt(conn)
            if isinstance(stmt, str):
                self._sql[key] = stmt
            else:
                if returning:
                    stmt = stmt.returning(*stmt.table.primary_key)
                self._sql[key] = positional_sql(stmt, _positional(conn.dialect), self.names)
        return self._sql[key]

    def rows(self, conn: Connection, values: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        sql = self._compiled(conn)
        with _driver_cursor(conn, sql) as cur:
            # Values always, even none: psycopg reads %% as % only when given some.
            return cur.execute(sql, tuple(values)).fetchall()  # type: ignore[no-any-return]

    def insert(self, conn: Connection, values: Sequence[Any]) -> int:
        """Run an INSERT of one row; return its primary key (SQLite's rowid; elsewhere the
        statement returns it)."""
        rowid = conn.dialect.name == "sqlite"
        sql = self._compiled(conn, returning=not rowid)
        with _driver_cursor(conn, sql) as cur:
            cur.execute(sql, tuple(values))
            return int(cur.lastrowid if rowid else cur.fetchone()[0])

    def run(self, conn: Connection, values: Sequence[Any]) -> int:
        """Run the statement; return the number of rows it changed."""
        sql = self._compiled(conn)
        with _driver_cursor(conn, sql) as cur:
            return int(cur.execute(sql, tuple(values)).rowcount)

    def many(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Run the statement once per row. An upsert's rows must not repeat a key: on
        PostgreSQL they go in one statement, which may change a row only once."""
        sql = self._compiled(conn)
        if conn.dialect.name == "sqlite":
            with _driver_cursor(conn, sql) as cur:
                cur.executemany(sql, rows)
            return
        # One multi-row statement per chunk, each with its own Sync, not psycopg's
        # executemany: that pipelines the rows, and a scheduler stopped mid-pipeline (SIGSTOP,
        # a frozen VM) leaves its session "active", never "idle in transaction", so the server
        # never ends it and the idle row stays locked to every standby. Nor a statement per
        # row: a cycle folds about a hundred totals at a thousand workers, and their round
        # trips were a third of its time. The SQL comes with the server's own placeholders:
        # psycopg would otherwise parse every such statement anew, a few ms each.
        head, group, tail = _values_group(sql)
        width = group.count("%d")
        with _driver_cursor(conn, sql, "RawCursor") as cur:
            for i in range(0, len(rows), config.MANY_ROWS):
                chunk = rows[i : i + config.MANY_ROWS]
                values = ", ".join(
                    group % tuple(range(n + 1, n + width + 1))
                    for n in range(0, len(chunk) * width, width)
                )
                cur.execute(head + values + tail, [v for row in chunk for v in row])


def together(
    conn: Connection, statements: Sequence[tuple[Prepared, Sequence[Any]]]
) -> list[list[tuple[Any, ...]]]:
    """The rows of each of `statements` (with their values), inside db.read(): one after
    another on SQLite, in one round trip on PostgreSQL.

    A scheduler cycle reads five things; on a server busy with a thousand workers' beats each
    round trip costs about a millisecond of waiting, most of a cycle's time. So there they go as
    one message of several statements (the simple query protocol, the values bound on this
    side), not as a pipeline: a scheduler stopped halfway through sending a pipeline leaves its
    session "active", which no timeout of the server's ends.
    """
    if conn.dialect.name == "sqlite":
        return [p.rows(conn, values) for p, values in statements]
    sql = "; ".join(p._compiled(conn) for p, _values in statements)
    with _driver_cursor(conn, sql, "ClientCursor") as cur:
        cur.execute(sql, [v for _p, values in statements for v in values], prepare=False)
        got = [cur.fetchall()]
        while cur.nextset():
            got.append(cur.fetchall())
    return got


# An INSERT's one VALUES group: placeholders, each perhaps with PostgreSQL's cast.
_VALUES_GROUP = re.compile(r" VALUES (\(%s(?:::\w+)?(?:, %s(?:::\w+)?)*\))")


def _values_group(sql: str) -> tuple[str, str, str]:
    """An INSERT's SQL cut around its one VALUES group: the SQL before it, the group with
    the server's placeholders as $%d, and the SQL after it."""
    found = _VALUES_GROUP.search(sql)
    if found is None or "%" in sql[: found.start(1)] + sql[found.end(1) :]:
        raise RuntimeError(f"not an INSERT of one VALUES group and no other value: {sql}")
    group = found.group(1).replace("%s", "$%d")
    return sql[: found.start(1)], group, sql[found.end(1) :]


def shrink_wal(conn: Connection, passes: int = 1) -> str | None:
    """Keep a large WAL from growing further, and give its file back once the load is light
    (SQLite only). The scheduler calls this while the -wal file is past WAL_RESTART_BYTES.

    The regular checkpoints are SQLite's own, PASSIVE, at the scheduler's commits. But the WAL
    only starts over from its beginning when a writer finds it wholly checkpointed and unread,
    which a steady stream of beats almost never allows. So once a PASSIVE pass got everything
    and the WAL still holds WAL_RESTART_BYTES, a RESTART finishes the few frames left and starts
    it over in the same file; when it holds little (the load has dropped), a TRUNCATE also
    empties the file. Either may hold writers back for WAL_RESET_BUSY_TIMEOUT at most, well
    inside a beat's busy timeout; a TRUNCATE under load costs beats more, hence only when quiet.

    On an SQLite with the WAL-reset bug (a PASSIVE checkpoint right after one that copied
    everything, racing another connection's commit that starts the WAL over, can corrupt the
    file; fixed in 3.44.6, 3.50.7 and 3.51.3) the scheduler's commit before this call does not
    checkpoint, and `passes` is 2: a second PASSIVE pass follows only one that left frames
    behind, none follows a busy one, and after a complete pass comes the RESTART or TRUNCATE,
    which holds the write lock so that no commit can start the WAL over meanwhile. The figures
    behind these choices are in CHANGELOG.md and BENCHMARKS.md. Returns the mode that got
    through, if one did.
    """
    if conn.dialect.name != "sqlite" or conn.in_transaction():
        return None
    for _ in range(passes):
        ((busy, frames, copied),) = _pragma(conn, "PRAGMA wal_checkpoint(PASSIVE)")
        if busy:
            return None  # another connection is checkpointing: not right after it
        if copied >= frames:  # type: ignore[operator]
            break  # everything copied: never another PASSIVE pass right after this one
    else:
        return None  # readers still need older frames: nothing more to win now
    ((page_size,),) = _pragma(conn, "PRAGMA page_size")
    if frames * page_size >= config.WAL_RESTART_BYTES:  # type: ignore[operator]
        mode = "RESTART"
    elif frames < config.SCHEDULER_AUTOCHECKPOINT_PAGES:  # type: ignore[operator]
        mode = "TRUNCATE"
    else:
        return None
    ((wait_ms,),) = _pragma(conn, "PRAGMA busy_timeout")
    _pragma(conn, f"PRAGMA busy_timeout = {int(config.WAL_RESET_BUSY_TIMEOUT * 1000)}")
    try:
        ((busy, _frames, _copied),) = _pragma(conn, f"PRAGMA wal_checkpoint({mode})")
    finally:
        _pragma(conn, f"PRAGMA busy_timeout = {wait_ms}")
    return None if busy else mode


def set_autocheckpoint(conn: Connection, pages: int) -> None:
    """Checkpoint (PASSIVE) at each commit once the WAL holds `pages` frames; 0: never.
    SQLite only."""
    if conn.dialect.name == "sqlite":
        _pragma(conn, f"PRAGMA wal_autocheckpoint = {int(pages)}")


def set_busy_timeout(conn: Connection, seconds: float) -> None:
    """How long this connection waits for a lock before giving up (SQLite only)."""
    if conn.dialect.name == "sqlite":
        _pragma(conn, f"PRAGMA busy_timeout = {int(seconds * 1000)}")


def is_busy(exc: BaseException) -> bool:
    """Whether a driver error means that someone else holds the lock (SQLITE_BUSY, or
    PostgreSQL's lock_not_available once lock_timeout has passed)."""
    exc = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper, or the driver's own
    if getattr(exc, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY  # extended codes: BUSY_SNAPSHOT, ...
    return "database is locked" in str(exc)


_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE


def wal_path(url: URL) -> str | None:
    """The -wal file beside an SQLite database, None for memory databases and other backends."""
    path = sqlite_path(url)
    return path + "-wal" if path else None


def wal_size(wal: str | None) -> int:
    """Bytes in the -wal file `wal` (from wal_path), 0 when there is none."""
    try:
        return os.stat(wal).st_size if wal else 0
    except OSError:
        return 0


@contextmanager
def as_found(db: str | os.PathLike[str] | URL) -> Iterator[None]:
    """Leave no -wal / -shm behind that were not there before a read-only look.

    A read-only connection to a WAL database at rest creates both files and, unable to
    checkpoint, leaves them when it closes; owned by whoever looked, they can then block the
    pipeline's own user (every write fails). When neither existed, one read-write connection
    that reads and closes removes them, as the last connection always does. SQLite takes the
    exclusive lock for that, only if no one else has the database open; an empty WAL writes
    nothing to the file.
    """
    path = sqlite_path(to_url(db))
    at_rest = path is not None and not any(os.path.exists(path + s) for s in ("-wal", "-shm"))
    try:
        yield
    finally:
        if at_rest and path is not None and os.path.exists(path + "-shm"):
            _close_last(path)


def _close_last(path: str) -> None:
    try:
        if os.path.getsize(path + "-wal") != 0:
            return  # someone wrote meanwhile: their files now
        conn = sqlite3.connect(
            f"file:{quote(path, safe='/')}?mode=rw", uri=True, isolation_level=None, timeout=0
        )
    except (OSError, sqlite3.Error):
        return  # not ours to tidy (no write permission): SQLite's files stay
    try:
        conn.execute("PRAGMA query_only = 1")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        pass
    finally:
        conn.close()


def read_only_engine(db: str | os.PathLike[str] | URL) -> Engine:
    """A read-only engine for people's inspection tools, also for a copy in a folder without
    write permission, where mode=ro fails because SQLite cannot create the -shm file."""
    url = to_url(db)
    path = sqlite_path(url)
    if path is None or not os.path.isfile(path) or os.access(os.path.dirname(path), os.W_OK):
        return engine(url, "read")
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        if os.path.exists(path + "-shm"):
            return engine(url, "read")  # SQLite reads both through a read-only -shm
        raise DatabaseError(
            f"{path}: its -wal file holds changes not yet checkpointed, which SQLite cannot read "
            "in a folder without write permission; copy the database with its -wal file to a "
            "writable folder, or checkpoint it where it was written "
            "(sqlite3 DB 'PRAGMA wal_checkpoint(TRUNCATE)')"
        )
    # No WAL content and no way to create one here: no writer can exist, so immutable=1 cannot
    # read stale data. On a live database it would, which is why it is used only here.
    uri = URL.create(
        "sqlite",
        database=f"file:{quote(path, safe='/')}?mode=ro&immutable=1",
        query={"uri": "true"},
    )
    eng = sa.create_engine(uri, connect_args={"timeout": _BUSY["read"]})
    _configure_sqlite(eng, "read")
    return eng
