"""The schema: created only through the migrations, idempotently, in WAL, with its views."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from sqlmon import DatabaseError, init_db
from sqlmon import db as dbmod
from sqlmon.errors import DatabaseMissing, NotInitialised, SchemaTooNew, SchemaTooOld
from sqlmon.migrate import check_database, migrations_dir
from sqlmon.schema import HEAD, REVISIONS, VERSION_TABLE, metadata

from .conftest import execute, sql


def test_init_creates_wal_schema_with_private_version_table(tmp_path: Path) -> None:
    path = str(tmp_path / "new" / "m.db")
    init_db(path)
    init_db(path)  # idempotent
    assert sql(path, "PRAGMA journal_mode") == [("wal",)]
    assert sql(path, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]
    assert sql(path, "SELECT name FROM sqlite_master WHERE name = 'alembic_version'") == []
    names = {
        n for (n,) in sql(path, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    }
    assert set(metadata.tables) | {"worker_intervals", "backlog_timeline"} <= names


def test_migration_heads_match_the_revisions_sqlmon_knows() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    script = ScriptDirectory.from_config(cfg)
    assert script.get_heads() == [HEAD]
    assert [r.revision for r in reversed(list(script.walk_revisions()))] == list(REVISIONS)


def test_tables_from_migrations_match_the_metadata(db: str) -> None:
    inspector = sa.inspect(sa.create_engine(f"sqlite:///{db}"))
    for table in metadata.sorted_tables:
        assert [c["name"] for c in inspector.get_columns(table.name)] == [
            c.name for c in table.columns
        ], table.name


def _init(path: str, barrier) -> None:
    barrier.wait()
    init_db(path)


def test_concurrent_init_runs_the_migration_once(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_init, args=(path, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert sql(path, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]
    assert sql(path, "PRAGMA integrity_check") == [("ok",)]


def test_check_database_names_each_problem(tmp_path: Path, db: str) -> None:
    with pytest.raises(DatabaseMissing, match="no such database"):
        check_database(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # checking never creates

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(DatabaseError, match="not an SQLite database"):
        check_database(junk)

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(NotInitialised, match="not initialised"):
        check_database(empty)

    foreign = tmp_path / "foreign.db"
    execute(str(foreign), "CREATE TABLE t (x)")
    with pytest.raises(DatabaseError, match="not a sqlmon database"):
        check_database(foreign)

    execute(db, f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
    with pytest.raises(SchemaTooNew, match="newer than this sqlmon"):
        check_database(db)


def test_an_older_schema_is_refused_until_init_upgrades_it(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    path = str(tmp_path / "old.db")
    engine = dbmod.engine(path, "create")
    with engine.connect() as conn, dbmod.write(conn):
        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir()))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, REVISIONS[0])  # a database made by the first release
    engine.dispose()
    execute(
        path,
        "INSERT INTO worker_events (run_id, ts, worker_id, event) VALUES (1, 5, 'w', 'joined')",
    )
    with pytest.raises(SchemaTooOld, match=f"older than {HEAD}"):
        check_database(path)
    init_db(path)
    check_database(path)
    assert sql(path, "SELECT worker_id FROM worker_events") == [("w",)]  # history kept


def test_init_adds_sqlmon_beside_an_applications_tables(tmp_path: Path) -> None:
    app = str(tmp_path / "app.db")
    execute(app, "CREATE TABLE jobs (job_id INTEGER PRIMARY KEY, kind TEXT, state TEXT)")
    execute(app, "CREATE TABLE alembic_version (version_num TEXT)")
    execute(app, "INSERT INTO alembic_version VALUES ('abc123')")
    execute(app, "INSERT INTO jobs VALUES (1, 'OCR', 'queued')")
    schema_before = sql(app, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    with pytest.raises(DatabaseError, match="not a sqlmon database"):
        check_database(app)  # not yet: init adds sqlmon's tables
    init_db(app)
    init_db(app)  # safe to repeat
    check_database(app)
    after = sql(app, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    assert set(schema_before) <= set(after)  # the application's tables untouched
    assert sql(app, "SELECT * FROM jobs") == [(1, "OCR", "queued")]
    assert sql(app, "SELECT * FROM alembic_version") == [("abc123",)]
    assert sql(app, f"SELECT version_num FROM {VERSION_TABLE}") == [(HEAD,)]


def test_init_refuses_a_table_of_sqlmons_name_that_is_not_sqlmons(tmp_path: Path) -> None:
    app = str(tmp_path / "app.db")
    execute(app, "CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)")
    before = Path(app).read_bytes()
    with pytest.raises(DatabaseError) as exc:
        init_db(app)
    assert str(exc.value).startswith(
        f"{app}: it already has a table 'tasks' that is not sqlmon's (columns id, title; "
        "sqlmon's has id, category, pool, status,"
    )
    assert Path(app).read_bytes() == before  # refused before anything was changed


def test_backlog_uses_the_partial_index(db: str) -> None:
    from sqlmon import TaskTable

    engine = dbmod.engine(db, "read")
    with engine.connect() as conn, dbmod.read(conn):
        plan = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + TaskTable().statement(conn.dialect)
        ).all()
    engine.dispose()
    assert any("ix_tasks_active" in row[-1] for row in plan), plan


def test_views_give_intervals_and_backlog(db: str) -> None:
    execute(
        db,
        "INSERT INTO runs (run_id, started_at, ended_at, pid, host, config) "
        "VALUES (1, 99.0, 200.0, 1, 'h', '{}'), (2, 300.0, NULL, 1, 'h', '{}')",
    )
    # Run 2 has not ended: it runs to its last snapshot.
    execute(
        db,
        "INSERT INTO snapshots (run_id, ts, cycle, workers_busy, workers_idle, workers_stale, "
        "workers_dead, backlog_pending, backlog_running, idle, cycle_seconds) "
        "VALUES (2, 310.0, 1, 0, 0, 0, 0, 0, 0, 0, 0.001)",
    )
    execute(
        db,
        "INSERT INTO worker_stretches (worker_id, pid, category, started, ended, outcome, error) "
        "VALUES (?, 1, ?, ?, ?, ?, ?)",
        [
            ("w", None, 100.0, 101.0, "ok", None),
            ("w", "OCR", 101.0, 104.0, "failed", "ValueError"),
            ("w", None, 104.0, 105.0, "ok", None),
            ("v", "OCR", 110.0, 250.0, "ok", None),  # still busy when run 1 ended
            ("v", None, 250.0, 301.0, "ok", None),
            ("x", "OCR", 305.0, 306.0, "dead", None),  # closed at its death by the scheduler
        ],
    )
    execute(
        db,
        "INSERT INTO worker_status (worker_id, pid, host, pool, category, category_since, "
        "last_heartbeat, started_at, exited_at) VALUES (?, 1, 'h', 'p', ?, ?, ?, 0.0, ?)",
        [
            ("w", None, 105.0, 105.0, 105.0),  # exited: nothing open
            ("v", "OCR", 301.0, 309.0, None),  # open since 301
            ("x", "OCR", 305.0, 305.5, None),  # its open stretch is the closed one above
        ],
    )
    assert sql(
        db,
        "SELECT run_id, worker_id, category, state, started, ended, seconds, outcome, error "
        "FROM worker_intervals ORDER BY run_id, started",
    ) == [
        (1, "w", None, "idle", 100.0, 101.0, 1.0, "ok", None),
        (1, "w", "OCR", "busy", 101.0, 104.0, 3.0, "failed", "ValueError"),
        (1, "w", None, "idle", 104.0, 105.0, 1.0, "ok", None),
        (1, "v", "OCR", "busy", 110.0, 200.0, 90.0, "ok", None),
        (2, "v", None, "idle", 300.0, 301.0, 1.0, "ok", None),
        (2, "v", "OCR", "busy", 301.0, 310.0, 9.0, "open", None),
        (2, "x", "OCR", "busy", 305.0, 306.0, 1.0, "dead", None),
    ]
    assert sql(db, "SELECT run_id, started_at, ended_at FROM run_windows") == [
        (1, 99.0, 200.0),
        (2, 300.0, 310.0),
    ]
    execute(
        db,
        "INSERT INTO snapshots (id, run_id, ts, cycle, workers_busy, workers_idle, "
        "workers_stale, workers_dead, backlog_pending, backlog_running, idle, "
        "cycle_seconds) VALUES (7, 1, 50.0, 1, 0, 0, 0, 0, 3, 1, 0, 0.001)",
    )
    execute(db, "INSERT INTO snapshot_counts VALUES (7, 'gpu', 'OCR', 1, 3, 1)")
    assert sql(db, "SELECT ts, pool, category, pending, running, busy FROM backlog_timeline") == [
        (50.0, "gpu", "OCR", 3, 1, 1)
    ]
