"""The behaviour SQLite and PostgreSQL share, run on both: the schema and its views, the
heartbeat's writes and stretches, a scheduler run to idle with real worker processes,
is_idle / wait_idle, and the CLI's status, check and report (these two also through PgBouncer
in transaction mode)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from sqlmon import Heartbeat, Scheduler, init_db, is_idle, wait_idle

from . import procs
from .conftest import BACKENDS, PGBOUNCER, execute, is_pg, sql, wait_for


@pytest.fixture(params=BACKENDS)
def empty_db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "sqlmon.db")
    return request.getfixturevalue("pg_url")


def sqlmon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlmon", *args], capture_output=True, text=True, timeout=timeout
    )


def test_init_twice_and_the_views_clip_stretches_to_runs(empty_db: str) -> None:
    assert sqlmon("init", empty_db).returncode == 0
    init_db(empty_db)  # current: a no-op
    execute(
        empty_db,
        "INSERT INTO runs (started_at, ended_at, pid, host, config) VALUES (?, ?, 1, 'h', '{}')",
        [(100.0, 200.0), (300.0, 400.0)],
    )
    execute(
        empty_db,
        "INSERT INTO worker_stretches (worker_id, pid, category, started, ended, outcome) "
        "VALUES (?, 1, ?, ?, ?, 'ok')",
        [("w", None, 90.5, 101.25), ("w", "OCR", 101.25, 250.0), ("w", None, 250.0, 310.0)],
    )
    # Sub-second timestamps survive, and the run windows clip every stretch.
    assert sql(
        empty_db,
        "SELECT run_id, category, state, started, ended, seconds FROM worker_intervals "
        "ORDER BY run_id, started",
    ) == [
        (1, None, "idle", 100.0, 101.25, 1.25),
        (1, "OCR", "busy", 101.25, 200.0, 98.75),
        (2, None, "idle", 300.0, 310.0, 10.0),
    ]
    assert sql(empty_db, "SELECT run_id, ended_at FROM run_windows ORDER BY run_id") == [
        (1, 200.0),
        (2, 400.0),
    ]
    assert sql(empty_db, "SELECT count(*) FROM backlog_timeline") == [(0,)]


def test_heartbeat_writes_its_row_and_the_stretches_it_closed(any_db: str) -> None:
    hb = Heartbeat(any_db, "gpu-1", "gpu", min_interval=60.0)
    hb.beat()
    row = "SELECT pid, pool, category, beats, exited_at IS NOT NULL FROM worker_status"
    assert sql(any_db, row) == [(os.getpid(), "gpu", None, 1, False)]
    hb.beat("OCR")
    for _ in range(50):
        hb.beat("OCR")  # inside min_interval: nothing written
    with pytest.raises(ValueError), hb.busy("SUMMARY"):
        raise ValueError
    hb.close()
    assert hb.missed == 0
    assert sql(any_db, row) == [(os.getpid(), "gpu", None, 5, True)]
    stretches = sql(
        any_db,
        "SELECT category, outcome, error, ended >= started FROM worker_stretches ORDER BY id",
    )
    assert stretches == [
        (None, "ok", None, True),
        ("OCR", "ok", None, True),
        ("SUMMARY", "failed", "ValueError", True),
        (None, "ok", None, True),
    ]
    # Each stretch ends where the next begins.
    bounds = sql(any_db, "SELECT started, ended FROM worker_stretches ORDER BY id")
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def _take_over(db: str, worker_id: str) -> int:
    """Another process registers under `worker_id` (as a restarted worker would), beats once
    in OCR and exits without closing; its pid."""
    code = (
        "import os, sys; from sqlmon import Heartbeat; "
        f"hb = Heartbeat(sys.argv[1], {worker_id!r}, 'cpu'); hb.beat('OCR'); "
        "assert hb.missed == 0; print(os.getpid())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, db], capture_output=True, text=True, check=True, timeout=60
    )
    return int(done.stdout)


def test_a_row_taken_over_is_reported_and_never_written_again(any_db: str, caplog) -> None:
    hb = Heartbeat(any_db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    other = _take_over(any_db, "w")
    theirs = sql(any_db, "SELECT pid, category, beats, last_heartbeat FROM worker_status")
    assert [r[:3] for r in theirs] == [(other, "OCR", 1)]
    with caplog.at_level(logging.WARNING, logger="sqlmon.heartbeat"):
        hb.beat("B")  # closes A: a stretch the row no longer speaks for
        for _ in range(5):
            hb.beat("C")
    assert hb.displaced == f"taken over by pid {other} on {socket.gethostname()}"
    assert sql(any_db, "SELECT pid, category, beats, last_heartbeat FROM worker_status") == theirs
    assert sql(any_db, "SELECT category FROM worker_stretches WHERE pid = ?", (os.getpid(),)) == []
    # Nothing written is counted: every write since, and the stretches A and B.
    assert (hb.missed, hb.lost) == (6, 2)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "taken over" in said[0], said


def test_a_pruned_row_is_not_resurrected(any_db: str) -> None:
    hb = Heartbeat(any_db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    hb.beat("B")
    execute(any_db, "DELETE FROM worker_status")  # pruned, or removed by hand
    hb.beat("C")
    hb.close()
    assert hb.displaced is not None and hb.displaced.startswith("pruned")
    assert sql(any_db, "SELECT count(*) FROM worker_status") == [(0,)]
    assert sql(any_db, "SELECT category FROM worker_stretches ORDER BY started") == [("A",)]
    # A process that starts under the id afterwards registers as usual.
    assert _take_over(any_db, "w") == sql(any_db, "SELECT pid FROM worker_status")[0][0]


def test_a_cycle_that_writes_more_rows_than_one_statement_carries_records_each_once(
    any_db: str,
) -> None:
    """1,100 workers the scheduler meets at once, one of them already exited, and a stretch
    each to fold: more events, judgements and totals than a statement carries (1,000 rows)."""
    n, t0 = 1100, time.time()
    workers = [(f"fleet-{i:04d}", 10 + i, t0 - 5.0, t0 - 5.0, t0) for i in range(n)]
    execute(
        any_db,
        "INSERT INTO worker_status (worker_id, pid, host, pool, started_at, category_since,"
        " last_heartbeat) VALUES (?, ?, 'elsewhere', 'gpu', ?, ?, ?)",
        workers,
    )
    execute(
        any_db, "UPDATE worker_status SET exited_at = ? WHERE worker_id = ?", (t0, "fleet-0000")
    )
    spans = [
        (w, pid, t0 - 4.0, t0 - 4.0 + 0.25 * (i % 7)) for i, (w, pid, *_) in enumerate(workers)
    ]
    execute(
        any_db,
        "INSERT INTO worker_stretches (worker_id, pid, category, started, ended, outcome)"
        " VALUES (?, ?, 'OCR', ?, ?, 'ok')",
        spans,
    )
    sched = Scheduler(any_db, hud_every=1e9)
    sched.open(now=t0 - 10.0)
    sched.step(now=t0, mono=1000.0)
    sched.step(now=t0 + 1.0, mono=1031.0)  # past the fold's settling time on PostgreSQL
    sched.close("terminate", now=t0 + 2.0)
    events = (
        "SELECT event, count(*) FROM worker_events WHERE worker_id LIKE 'fleet-%' GROUP BY event"
    )
    assert dict(sql(any_db, events)) == {"joined": n, "exited": 1}
    states = "SELECT state, count(*) FROM worker_states GROUP BY state"
    assert dict(sql(any_db, states)) == {"alive": n - 1, "exited": 1}  # the later judgement
    totals = sql(any_db, "SELECT count(*), sum(n), sum(seconds) FROM stretch_totals")
    assert totals[0][:2] == (n, n)
    assert totals[0][2] == pytest.approx(sum(b - a for _w, _p, a, b in spans), abs=1e-6)


@pytest.mark.parametrize("any_db", [*BACKENDS, PGBOUNCER], indirect=True)
def test_a_scheduler_runs_real_workers_to_idle(any_db: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    stop, terminate = ctx.Event(), ctx.Event()
    workers = [
        ctx.Process(target=procs.beat_until, args=(any_db, f"cpu-{i}", "cpu", None, stop, 0.05))
        for i in range(2)
    ]
    sched = Scheduler(any_db, terminate=terminate, interval=0.1, start_method="spawn")
    execute(
        any_db,
        "INSERT INTO tasks (category, pool, status, created_at) VALUES ('OCR', 'cpu', ?, 0)",
        [("pending",)],
    )
    try:
        sched.start()
        for w in workers:
            w.start()
        wait_for(lambda: sql(any_db, "SELECT count(*) FROM worker_status")[0][0] == 2)
        assert not is_idle(any_db)
        assert wait_idle(any_db, timeout=1.0) is False  # a task is pending
        execute(any_db, "UPDATE tasks SET status = 'done'")
        assert wait_idle(any_db, timeout=60) is True
        assert is_idle(any_db)
        stop.set()
        for w in workers:
            w.join(30)
        wait_for(
            lambda: (
                sql(any_db, "SELECT count(*) FROM worker_events WHERE event = 'exited'")[0][0] == 2
            )
        )
    finally:
        stop.set()
        terminate.set()
        sched.join(60)
        for w in workers:
            if w.is_alive():
                w.kill()
    assert sched.exitcode == 0
    assert not is_idle(any_db)  # the run ended: nobody says idle any more
    assert sql(any_db, "SELECT count(*) FROM runs WHERE ended_at IS NULL") == [(0,)]
    events = {e for (e,) in sql(any_db, "SELECT DISTINCT event FROM worker_events")}
    assert events == {"joined", "exited"}
    assert sql(any_db, "SELECT count(*) FROM snapshots")[0][0] >= 3


@pytest.mark.parametrize("any_db", [*BACKENDS, PGBOUNCER], indirect=True)
def test_cli_status_check_and_report(any_db: str) -> None:
    # Stepped by hand; a long interval keeps it fresh while the CLI starts on a loaded machine.
    sched = Scheduler(any_db, interval=5.0, stale_after=10.0, warn_after=10.0)
    hb = Heartbeat(any_db, "gpu-1", "gpu", min_interval=0.0)
    sched.open()
    try:
        hb.beat("OCR")
        sched.step()
        hb.beat(None)
        sched.step()
        check = sqlmon("check", any_db)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith("ok: run 1 cycle 2")
        status = json.loads(sqlmon("status", any_db, "-f", "json").stdout)
        assert status["scheduler"]["alive"] is True
        assert [w["worker_id"] for w in status["workers"]] == ["gpu-1"]
    finally:
        hb.close()
        sched.close("test over")
    report = sqlmon("report", any_db, "--run", "1")
    assert report.returncode == 0, report.stderr
    assert "gpu-1" in report.stdout and "OCR" in report.stdout
    runs = json.loads(sqlmon("runs", any_db, "-f", "json").stdout)
    assert [(r["run_id"], r["state"]) for r in runs] == [(1, "ended")]
    check = sqlmon("check", any_db)
    assert check.returncode == 1 and "scheduler stopped" in check.stdout
    if is_pg(any_db):
        assert "postgresql" in any_db  # the URL went through unchanged
