"""PostgreSQL-only behaviour: the schema's types, HOT beats, the database's clock, multi-host."""

from __future__ import annotations

import pytest

from .conftest import sql

pytestmark = pytest.mark.postgresql


def test_the_cluster_fixture_gives_a_fresh_database(pg_url: str) -> None:
    assert sql(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_init_on_postgresql(pg_url: str) -> None:
    from sqlmon import init_db

    init_db(pg_url)
    init_db(pg_url)  # current: a no-op


def test_heartbeat_smoke(pg_db: str) -> None:
    from sqlmon import Heartbeat

    hb = Heartbeat(pg_db, "w1", "cpu", min_interval=0.0)
    hb.beat()
    hb.beat("A")
    hb.beat("A")
    hb.beat("B")
    hb.close()
    assert hb.missed == 0
    print(sql(pg_db, "SELECT * FROM worker_status"))
    print(sql(pg_db, "SELECT * FROM worker_stretches"))
    assert sql(pg_db, "SELECT beats, category, exited_at IS NOT NULL FROM worker_status") == [(5, None, True)]
    assert sql(pg_db, "SELECT category, outcome FROM worker_stretches ORDER BY id") == [(None, "ok"), ("A", "ok"), ("B", "ok")]
