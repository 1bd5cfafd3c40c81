"""What only PostgreSQL has to get right: beats stay HOT and commit asynchronously, a worker
survives losing its connection, hosts with wrong clocks are judged as if they were right, and
the fold never skips a stretch that commits out of id order."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sqlmon import Heartbeat, Scheduler

from . import procs
from .conftest import _pg, sql
from .test_serve import promtool_check


def sqlmon(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "sqlmon", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


pytestmark = pytest.mark.postgresql


def test_the_cluster_fixture_gives_a_fresh_database(pg_url: str) -> None:
    assert sql(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_types_lose_nothing_and_no_index_touches_a_beat_column(pg_db: str) -> None:
    types = dict(
        sql(
            pg_db,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'worker_status'",
        )
    )
    assert types["last_heartbeat"] == types["category_since"] == "double precision"
    indexed = sql(
        pg_db,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = 'worker_status'::regclass",
    )
    assert indexed == [("worker_id",)]  # beats change nothing an index holds: HOT updates
    ids = sql(
        pg_db,
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'id' "
        "AND column_default LIKE 'nextval%' ORDER BY table_name",
    )
    assert ("worker_stretches",) in ids and ("snapshots",) in ids


def test_beats_are_hot_one_statement_and_asynchronous(pg_db: str) -> None:
    hb = Heartbeat(pg_db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    with _pg(pg_db) as conn:
        conn.execute("SELECT pg_stat_reset()")
    for _ in range(200):
        hb.beat("A")
    hb._cursor.execute("SHOW synchronous_commit")
    assert hb._cursor.fetchone() == ("on",)  # set for each beat's own transaction only
    assert hb._conn.driver_connection.info.transaction_status == 0  # idle: none left open
    hb.close()
    with _pg(pg_db) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.1)
    ((upd, hot),) = sql(
        pg_db,
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'worker_status'",
    )
    assert upd >= 200 and hot / upd >= 0.95
    assert hb.missed == 0


def test_a_lost_connection_drops_one_beat_and_the_next_reconnects(pg_db: str) -> None:
    hb = Heartbeat(pg_db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    with _pg(pg_db) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'sqlmon-heartbeat'"
        )
    hb.beat("B")  # never raises
    hb.beat("C")
    hb.close()
    assert hb.missed == 1
    assert sql(pg_db, "SELECT category, exited_at IS NOT NULL FROM worker_status") == [(None, True)]
    # The stretches closed while the connection was down were written with the next write.
    assert sql(pg_db, "SELECT category FROM worker_stretches ORDER BY started") == [
        ("A",),
        ("B",),
        ("C",),
    ]


def test_workers_on_other_hosts_with_clocks_an_hour_off_are_judged_the_same(
    pg_db: str, tmp_path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    workers = [
        ctx.Process(
            target=procs.beat_as,
            args=(pg_db, f"w{skew:+d}", f"host{skew:+d}", skew, "OCR", stop),
        )
        for skew in (-3600, 0, 3600)
    ]
    sched = Scheduler(pg_db, interval=0.2, stale_after=1.0, warn_after=2.0)
    sched.open()
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60
        while sql(pg_db, "SELECT count(*) FROM worker_status")[0][0] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        states = []
        for _ in range(15):  # 3 s: three times stale_after
            cycle = sched.step()
            states.append({w.worker_id: w.state for w in cycle.workers})
            time.sleep(0.2)
        assert all(s == {"w-3600": "busy", "w+0": "busy", "w+3600": "busy"} for s in states[1:])
        # Only the skew moves: measured per host, shown in status and the metrics.
        shown = json.loads(sqlmon("status", pg_db, "--format", "json").stdout)
        skews = {h["host"]: h["clock_skew_seconds"] for h in shown["hosts"]}
        assert skews.keys() == {"host-3600", "host+0", "host+3600"}
        assert all(abs(skews[f"host{s:+d}"] - s) < 1.0 for s in (-3600, 0, 3600)), skews
        prom = tmp_path / "sqlmon.prom"
        sqlmon("metrics", pg_db, "--textfile", str(prom))
        text = prom.read_text()
        promtool_check(text)
        samples = {
            (s.name, s.labels.get("host"), s.labels.get("state")): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        for skew in (-3600, 0, 3600):
            host = f"host{skew:+d}"
            assert abs(samples[("sqlmon_host_clock_skew_seconds", host, None)] - skew) < 1.0
            assert samples[("sqlmon_host_workers", host, "busy")] == 1
        stop.set()
        for w in workers:
            w.join(30)
        cycle = sched.step()
        assert {w.state for w in cycle.workers} == {"exited"}
    finally:
        stop.set()
        sched.close("test over")
        for w in workers:
            if w.is_alive():
                w.kill()
    # Their stretches lie inside the run, on the server's clock, whatever their own said.
    ((start, end),) = sql(pg_db, "SELECT started_at, ended_at FROM runs")
    rows = sql(pg_db, "SELECT worker_id, started, ended FROM worker_stretches")
    assert {r[0] for r in rows} == {"w-3600", "w+0", "w+3600"}
    assert all(start - 5 <= a <= b <= end + 1 for _w, a, b in rows)
    hosts = sql(pg_db, "SELECT DISTINCT host FROM worker_status ORDER BY host")
    assert hosts == [("host+0",), ("host+3600",), ("host-3600",)]


def test_the_fold_waits_for_a_stretch_that_commits_out_of_id_order(pg_db: str) -> None:
    sched = Scheduler(pg_db, interval=1.0)
    sched.open()
    hb = Heartbeat(pg_db, "w", "cpu", min_interval=0.0)
    mono, settle = 1000.0, sched._horizon.settle
    with _pg(pg_db) as late:
        late.autocommit = False
        # A writer takes the lower id and commits only after a later one did.
        late.execute(
            "INSERT INTO worker_stretches (worker_id, pid, category, started, ended, outcome) "
            "VALUES ('slow', 1, 'OCR', %s, %s, 'ok')",
            (sched.started_at + 1, sched.started_at + 2),
        )
        hb.beat("A")
        hb.beat(None)  # closes stretch A: a higher id, committed first
        sched.step(mono=mono)
        # Id 2 is visible, id 1 is not yet: a cursor moved to 2 now would skip 1 for good.
        assert sql(pg_db, "SELECT count(*) FROM stretch_totals") == [(0,)]
        late.commit()  # well within the settle time, as every worker statement is
    for i in range(1, 4):
        sched.step(mono=mono + i * settle)  # up to what was visible a settle ago
    sched.close("test over")
    hb.close()
    totals = dict(
        sql(
            pg_db, "SELECT worker_id || ':' || category, n FROM stretch_totals WHERE state = 'busy'"
        )
    )
    assert totals == {"slow:OCR": 1, "w:A": 1}


def test_a_fork_leaves_the_parent_connected_as_itself(pg_db: str) -> None:
    hb = Heartbeat(pg_db, "w", "cpu", min_interval=0.0)
    hb.beat("OCR")
    ((before,),) = sql(pg_db, "SELECT backend FROM worker_status")
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # the child never touches the database
    os.waitpid(pid, 0)
    # The fork closed the parent's connection (a child must not share it); the parent is
    # connected again at once, not at its next beat, so that its connection still shows it
    # alive through a long task.
    ((after,),) = sql(pg_db, "SELECT backend FROM worker_status")
    server_pid = int(after.partition("@")[0])
    assert after != before
    assert sql(pg_db, "SELECT count(*) FROM pg_stat_activity WHERE pid = ?", (server_pid,)) == [
        (1,)
    ]
    assert hb.missed == 0
    hb.close()


def test_a_held_row_lock_costs_a_beat_its_lock_timeout_and_the_exit_waits_it_out(
    pg_db: str,
) -> None:
    import threading

    hb = Heartbeat(pg_db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    with _pg(pg_db) as person:  # in psql: BEGIN; SELECT ... FOR UPDATE
        person.execute("BEGIN")
        person.execute("SELECT * FROM worker_status FOR UPDATE")
        began = time.monotonic()
        hb.beat("B")  # dropped at its lock_timeout (0.1 s), not its statement_timeout (2 s)
        waited = time.monotonic() - began
        assert (hb.missed, hb.lost) == (1, 0)
        assert waited < 1.0, f"a beat waited {waited:.2f} s for the lock"
        # The person lets go after 0.5 s, longer than a beat waits: the exit still gets in.
        threading.Timer(0.5, person.execute, ("COMMIT",)).start()
        hb.close()
    assert (hb.missed, hb.lost) == (1, 0)
    assert sql(pg_db, "SELECT category FROM worker_stretches ORDER BY started") == [
        ("A",),
        ("B",),
    ]
    assert sql(pg_db, "SELECT exited_at IS NOT NULL FROM worker_status") == [(True,)]


def test_a_role_that_may_not_write_is_told_in_one_line(pg_db: str) -> None:
    role = "viewer_" + pg_db.split("@/", 1)[1].split("?", 1)[0]  # roles are the cluster's
    with _pg(pg_db) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    user = pg_db.split("://", 1)[1].split("@", 1)[0]
    viewer = pg_db.replace(f"://{user}@", f"://{role}@", 1)
    before = sql(pg_db, "SELECT count(*) FROM runs")
    done = subprocess.run(
        [sys.executable, "-m", "sqlmon", "run", viewer, "--hud", "off"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "WAL-reset bug" not in line]
    assert len(lines) == 1 and "permission denied for table runs" in lines[0], done.stderr
    assert sql(pg_db, "SELECT count(*) FROM runs") == before
