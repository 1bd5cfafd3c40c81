"""Shared fixtures: real SQLite files in tmp_path and a real PostgreSQL server (tests/pg.py),
never a mocked database."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sqlmon import init_db

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
# For tests that also run through PgBouncer in transaction mode (slow: the quick loop keeps
# the two backends): @pytest.mark.parametrize("any_db", [*BACKENDS, PGBOUNCER], indirect=True)
PGBOUNCER = pytest.param("pgbouncer", marks=[pytest.mark.postgresql, pytest.mark.slow])


@pytest.fixture
def db(tmp_path: Path) -> str:
    """An initialised sqlmon database file."""
    path = str(tmp_path / "sqlmon.db")
    init_db(path)
    return path


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[object]:
    """A PostgreSQL server for the session: SQLMON_TEST_PG_URL's, or a throwaway cluster.
    Without a server the PostgreSQL tests are skipped, except in CI, where they fail."""
    from . import pg

    attach = os.environ.get("SQLMON_TEST_PG_URL")
    if attach:
        yield pg.Databases(pg.attached(attach))
        return
    if pg.server_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs PostgreSQL: .ci/run installs Debian's postgresql")
        pytest.skip("no PostgreSQL server installed")
    with pg.cluster() as server:
        yield pg.Databases(server)


@pytest.fixture(scope="session")
def pg_bouncer(pg_databases) -> Iterator[object]:
    """PgBouncer in transaction mode in front of the session's PostgreSQL server. Without
    pgbouncer the tests through it are skipped, except in CI, where they fail."""
    from . import pg

    if pg.bouncer_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs PgBouncer: .ci/run installs Debian's pgbouncer")
        pytest.skip("no pgbouncer installed")
    with pg.bouncer(pg_databases.server) as server:
        yield server


@pytest.fixture
def pooled_db(pg_databases, pg_bouncer) -> Iterator[str]:
    """The URL, through PgBouncer, of a fresh, initialised PostgreSQL database."""
    name = pg_databases.create(initialised=True)
    try:
        yield pg_bouncer.url(name)
    finally:
        pg_databases.drop(name)


@pytest.fixture
def pg_url(pg_databases) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = pg_databases.create(initialised=False)
    try:
        yield pg_databases.server.url(name)
    finally:
        pg_databases.drop(name)


@pytest.fixture
def pg_db(pg_databases) -> Iterator[str]:
    """The URL of a fresh, initialised PostgreSQL database (a copy of a migrated template)."""
    name = pg_databases.create(initialised=True)
    try:
        yield pg_databases.server.url(name)
    finally:
        pg_databases.drop(name)


@pytest.fixture(params=BACKENDS)
def any_db(request, tmp_path: Path) -> str:
    """An initialised database on each backend: a file path, or a PostgreSQL URL (direct, or
    through PgBouncer for a test that asks for PGBOUNCER)."""
    if request.param == "sqlite":
        path = str(tmp_path / "sqlmon.db")
        init_db(path)
        return path
    if request.param == "pgbouncer":
        return request.getfixturevalue("pooled_db")
    return request.getfixturevalue("pg_db")


def is_pg(db: str) -> bool:
    return db.startswith("postgresql")


@contextmanager
def _pg(url: str) -> Iterator[object]:
    import psycopg
    import sqlalchemy as sa

    u = sa.make_url(url)
    with psycopg.connect(
        host=u.query["host"],
        port=int(u.query["port"]),
        user=u.username,
        dbname=u.database,
        autocommit=True,
        prepare_threshold=None,  # the URL may lead through PgBouncer in transaction mode
    ) as conn:
        yield conn


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05) -> None:
    """Poll `predicate` until true; fail the test after `timeout` s (a guard against hangs on
    a loaded machine, never a pass criterion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not met within {timeout} s"
        time.sleep(every)


def sql(path: str, query: str, params: tuple = ()) -> list[tuple]:
    """Read with the plain driver (sqlite3, or psycopg for a URL; `?` placeholders either way):
    tests judge sqlmon by what is stored, not by its own view."""
    if is_pg(path):
        with _pg(path) as conn:
            rows = conn.execute(query.replace("?", "%s"), params or None).fetchall()
            return [tuple(r) for r in rows]
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def execute(path: str, query: str, params: tuple | list = ()) -> None:
    if is_pg(path):
        with _pg(path) as pgconn, pgconn.cursor() as cur:
            q = query.replace("?", "%s")
            if params and isinstance(params, list):
                cur.executemany(q, params)
            else:
                cur.execute(q, params)
        return
    conn = sqlite3.connect(path)
    try:
        with conn:
            if params and isinstance(params, list):
                conn.executemany(query, params)
            else:
                conn.execute(query, params)
    finally:
        conn.close()


@contextmanager
def write_lock_held(path: str) -> Iterator[sqlite3.Connection]:
    """Another connection holds the write lock for the block, as a person in the sqlite3 shell
    would; it is let go (rolled back) at the end unless the block let go of it already."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
