"""Creating, upgrading and checking a database's schema."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from . import config, guards
from . import db as dbmod
from .errors import DatabaseError, NotInitialised, SchemaTooNew, SchemaTooOld
from .schema import HEAD, REVISIONS, VERSION_TABLE


def migrations_dir() -> Path:
    """The Alembic environment: inside the wheel when installed, at the top of a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise DatabaseError("sqlmon's migrations are missing from this installation")


def init_db(db: str | os.PathLike[str] | URL, *, file_mode: int = config.DB_FILE_MODE) -> None:
    """Create the database and its schema, or upgrade it; a no-op when it is current.

    Safe when several processes call it at once: the migrations run under the write lock.
    A new file gets the permission bits `file_mode` (owner-only by default); -wal and -shm
    follow the database's.
    """
    from alembic import command
    from alembic.config import Config

    url = dbmod.to_url(db)
    path = dbmod.sqlite_path(url)
    if path is not None:
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            _refuse_foreign(url)  # before the admin connection turns on WAL: change nothing
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = dbmod.engine(url, "create", file_mode=file_mode)
    try:
        with engine.connect() as conn, dbmod.write(conn):
            dbmod.lock_schema(conn)  # two processes initialising at once: one migrates
            current = _known(conn, url)
            if current == HEAD:
                return
            if current is None:
                guards.tell_sqlite_version()  # a database is being created: say it once, here
            cfg = Config()
            cfg.set_main_option("script_location", str(migrations_dir()))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa.exc.DatabaseError as exc:
        raise DatabaseError(f"{_name(url)}: {describe(exc)}") from exc
    finally:
        engine.dispose()


def _refuse_foreign(url: URL) -> None:
    _look(url, _known)


def check(conn: Connection, url: URL) -> str:
    """Raise unless `conn` reaches a sqlmon database of a schema this sqlmon knows; return it."""
    try:
        current = _version(conn)
        if current is None:
            if _has_foreign_tables(conn):
                raise DatabaseError(f"{_name(url)}: not a sqlmon database")
            raise NotInitialised(f"{_name(url)}: not initialised (run `sqlmon init`)")
    except sa.exc.DatabaseError as exc:
        raise DatabaseError(f"{_name(url)}: {describe(exc)}") from exc
    if current not in REVISIONS:
        raise SchemaTooNew(_too_new(url, current))
    if current != HEAD:
        raise SchemaTooOld(
            f"{_name(url)}: schema {current} is older than {HEAD} (run `sqlmon init` to upgrade)"
        )
    return current


def check_database(db: str | os.PathLike[str] | URL) -> None:
    """Open the database read-only just long enough to check it; create nothing."""
    _look(dbmod.to_url(db), check)


def _look(url: URL, judge: Callable[[Connection, URL], object]) -> None:
    """Run `judge` in one read-only transaction, leaving the file exactly as found."""
    with dbmod.as_found(url):
        engine = dbmod.engine(url, "read")
        try:
            with engine.connect() as conn, dbmod.read(conn):
                judge(conn, url)
        except sa.exc.DatabaseError as exc:
            raise DatabaseError(f"{_name(url)}: {describe(exc)}") from exc
        finally:
            engine.dispose()


def describe(exc: sa.exc.DatabaseError) -> str:
    """One line for a driver error: what people can act on, without the SQL."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    if "file is not a database" in text:
        return "not an SQLite database"
    if "malformed" in text:
        return "the database is corrupt (" + text + ")"
    if "unable to open" in text:
        return "cannot open the database file"
    return text.splitlines()[0] if text else type(exc).__name__


def _known(conn: Connection, url: URL) -> str | None:
    """The schema revision, None before sqlmon's tables exist; raise for a newer one, or for
    a database that already has a table of sqlmon's name that is not sqlmon's."""
    current = _version(conn)
    if current is not None and current not in REVISIONS:
        raise SchemaTooNew(_too_new(url, current))
    if current is None:
        _refuse_clashes(conn, url)
    return current


def _refuse_clashes(conn: Connection, url: URL) -> None:
    """sqlmon's tables go beside an application's and never touch them; a table or view of
    one of sqlmon's names, without sqlmon's version table, is the application's."""
    from .schema import metadata

    inspector = sa.inspect(conn)
    have = set(inspector.get_table_names()) | set(inspector.get_view_names())
    for name in sorted(have & set(metadata.tables)):
        theirs = [c["name"] for c in inspector.get_columns(name)]
        ours = [c.name for c in metadata.tables[name].columns]
        raise DatabaseError(
            f"{_name(url)}: it already has a table {name!r} that is not sqlmon's (columns "
            f"{', '.join(theirs)}; sqlmon's has {', '.join(ours)}); sqlmon adds its tables "
            "beside an application's but needs that name: keep sqlmon in a file of its own "
            "(TaskTable(database=...) can still read your task table)"
        )


def _version(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if rows else None


def _has_foreign_tables(conn: Connection) -> bool:
    return bool(sa.inspect(conn).get_table_names())  # before `sqlmon init` adds sqlmon's


def _too_new(url: URL, current: str) -> str:
    return f"{_name(url)}: schema {current} is newer than this sqlmon knows (upgrade sqlmon)"


def _name(url: URL) -> str:
    return dbmod.sqlite_path(url) or url.render_as_string(hide_password=True)
