"""sqlmon behind a real PgBouncer (tests/pg.py): a pooler is detected at connect, what must
hold for a transaction is set in each one and reaches no other client, and beats through
transaction pooling are all recorded. The scheduler, the CLI and leader fencing through it
run in test_backends.py and test_liveness.py (the `pgbouncer` parameter)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from sqlmon import Heartbeat
from sqlmon import db as dbmod
from sqlmon.errors import ConfigError

from . import pg
from .conftest import sql

pytestmark = pytest.mark.postgresql


@pytest.fixture(scope="module")
def one_session(pg_databases, pg_bouncer) -> Iterator[pg.Server]:
    """PgBouncer in transaction mode with a single server connection per database: every
    client's transactions run on the same server session, one after another."""
    with pg.bouncer(pg_databases.server, pool_size=1) as server:
        yield server


def through(server: pg.Server, url: str) -> str:
    """The URL of `url`'s database, reached through `server`."""
    return server.url(str(sa.make_url(url).database))


def pooled(url: str, role: dbmod.Role = "read") -> bool:
    eng = dbmod.engine(url, role)
    try:
        with eng.connect() as conn:
            return dbmod.pooled(conn)
    finally:
        eng.dispose()


def test_a_pooler_is_detected_in_either_mode_and_a_direct_connection_is_not(
    pg_databases, pg_bouncer, pg_db: str
) -> None:
    assert pooled(pg_db) is False
    assert pooled(through(pg_bouncer, pg_db)) is True
    with pg.bouncer(pg_databases.server, mode="session") as session:
        assert pooled(through(session, pg_db)) is True
    # The URL may say there is one (a pooler that would pass the server's pid on).
    assert pooled(pg_db + "&sqlmon_pooled=true") is True
    # A worker's row names its server connection only when one stands for it.
    for url, direct in ((pg_db, True), (through(pg_bouncer, pg_db), False)):
        hb = Heartbeat(url, "w", "cpu")
        hb.beat()
        hb.close()
        assert hb.missed == 0
        (backend,) = sql(pg_db, "SELECT backend FROM worker_status")[0]
        assert (backend is not None) is direct


def test_prepared_statements_are_off_behind_a_pooler_unless_the_url_asks_for_them(
    pg_bouncer, pg_db: str
) -> None:
    def threshold(url: str) -> object:
        eng = dbmod.engine(url, "heartbeat")
        try:
            conn = eng.raw_connection()
            try:
                return conn.driver_connection.prepare_threshold  # type: ignore[union-attr]
            finally:
                conn.close()
        finally:
            eng.dispose()

    pooled_url = through(pg_bouncer, pg_db)
    assert threshold(pg_db) == 5  # psycopg's own default, untouched
    assert threshold(pooled_url) is None
    assert threshold(pooled_url + "&prepare_threshold=3") == 3
    assert threshold(pg_db + "&prepare_threshold=none") is None
    with pytest.raises(ConfigError, match="prepare_threshold"):
        dbmod.engine(pg_db + "&prepare_threshold=often", "read")
    # Saying there is no pooler could only let one client's session settings reach others.
    with pytest.raises(ConfigError, match="sqlmon_pooled"):
        dbmod.engine(pooled_url + "&sqlmon_pooled=false", "read")
    bad = subprocess.run(
        [sys.executable, "-m", "sqlmon", "check", pg_db + "&sqlmon_pooled=maybe"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.splitlines()) == 1 and "sqlmon_pooled=maybe" in bad.stderr


def test_settings_hold_in_each_transaction_and_reach_no_other_client(
    one_session: pg.Server, pg_db: str
) -> None:
    url = through(one_session, pg_db)
    look = (
        "SELECT pg_backend_pid(), current_setting('application_name'), "
        "current_setting('statement_timeout'), current_setting('transaction_read_only'), "
        "current_setting('idle_in_transaction_session_timeout')"
    )
    reader, tool = dbmod.engine(url, "read"), dbmod.engine(url, "tool")
    try:
        with reader.connect() as r, tool.connect() as t:
            with dbmod.read(r):
                seen_read = tuple(r.exec_driver_sql(look).one())
            with dbmod.write(t):
                seen_tool = tuple(t.exec_driver_sql(look).one())
            with dbmod.read(r):
                again = tuple(r.exec_driver_sql(look).one())
            # The read role's write transaction is read-only too.
            with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
                with dbmod.write(r):
                    r.exec_driver_sql("CREATE TABLE t (x int)")
    finally:
        reader.dispose()
        tool.dispose()
    server_pid = seen_read[0]
    assert seen_read == (server_pid, "sqlmon-read", "30s", "on", "1min")
    assert seen_tool == (server_pid, "sqlmon-tool", "0", "off", "1min")  # the same session
    assert again == seen_read
    # A client that sets nothing finds the session as the server made it.
    plain = one_session.connect(str(sa.make_url(pg_db).database))
    try:
        row = plain.execute(
            "SELECT pg_backend_pid(), current_setting('statement_timeout'), "
            "current_setting('default_transaction_read_only'), "
            "current_setting('idle_in_transaction_session_timeout')"
        ).fetchone()
    finally:
        plain.close()
    assert row == (server_pid, "0", "off", "0")


def _beat_in_turns(url: str, rounds: int) -> tuple[list[Heartbeat], dict[str, int], int]:
    """Three heartbeats in this process, beating in turns (a change of category every ten
    rounds), then closed; the writes each was asked for, and the stretches each closed."""
    workers = [Heartbeat(url, f"w{i}", "cpu", min_interval=0.0) for i in range(3)]
    categories = [("OCR" if (n // 10) % 2 else None) for n in range(rounds)]
    writes = dict.fromkeys((hb.worker_id for hb in workers), 0)
    for category in categories:
        for hb in workers:
            hb.beat(category)  # min_interval 0: every call writes
            writes[hb.worker_id] += 1
    for hb in workers:
        hb.close()
        writes[hb.worker_id] += 1
    closed = sum(a != b for a, b in zip(categories, categories[1:], strict=False)) + 1
    return workers, writes, closed


def test_beats_through_transaction_pooling_are_all_recorded(
    pooled_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sqlmon")
    workers, writes, closed = _beat_in_turns(pooled_db, rounds=40)
    assert [hb.missed for hb in workers] == [0, 0, 0]
    assert "prepared statement" not in caplog.text
    rows = sql(pooled_db, "SELECT worker_id, beats, exited_at IS NOT NULL FROM worker_status")
    assert sorted(rows) == [(w, n, True) for w, n in sorted(writes.items())]
    stretches = sql(pooled_db, "SELECT worker_id, count(*) FROM worker_stretches GROUP BY 1")
    assert sorted(stretches) == [(w, closed) for w in sorted(writes)]


def test_psycopg_preparing_statements_through_the_same_pooler_drops_beats(
    one_session: pg.Server, pg_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    # What sqlmon's choice avoids, so that the test above stands for something: this pooler
    # does not track prepared statements.
    caplog.set_level(logging.WARNING, logger="sqlmon")
    workers, _writes, _closed = _beat_in_turns(
        through(one_session, pg_db) + "&prepare_threshold=5", rounds=20
    )
    assert sum(hb.missed for hb in workers) > 0
    assert "prepared statement" in caplog.text
