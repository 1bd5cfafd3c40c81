"""`sqlmon demo` end to end, as a real subprocess, as a new user runs it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import sql


def sqlmon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlmon", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "100"},
    )


def test_demo_runs_to_idle_in_the_current_directory(tmp_path: Path) -> None:
    out = sqlmon("demo", "--videos", "2", "--frames", "4", "--length", "0.5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    db = str(tmp_path / "sqlmon-demo.db")
    # Each task is one busy stretch of its worker: 34 done, as the task table says.
    assert "run 1: idle after" in out.stdout and "; 34 tasks done, 0 failed" in out.stdout
    assert "OCR                        8         0" in out.stdout
    # The HUD, from the scheduler process: one line a second, never an empty pool's line.
    assert "sqlmon.hud INFO cycle 1 | backlog: GPU " in out.stderr
    assert "workers busy: {}" not in out.stderr
    assert "Traceback" not in out.stderr
    # 2 videos x 4 frames x 4 stages, plus a summary per video.
    assert sql(
        db,
        "SELECT category, count(*) FROM tasks WHERE status = 'done' "
        "GROUP BY category ORDER BY category",
    ) == [
        ("OCR", 8),
        ("PLATE_DETECT", 8),
        ("PLATE_SMOOTH", 8),
        ("SUMMARY", 2),
        ("VEHICLE_DETECT", 8),
    ]
    assert sql(db, "SELECT end_reason FROM runs") == [("terminate",)]
    assert sql(
        db, "SELECT count(DISTINCT worker_id) FROM worker_events WHERE event = 'exited'"
    ) == [(8,)]
    assert sql(
        db, "SELECT count(*) FROM worker_intervals WHERE state = 'busy' AND outcome = 'ok'"
    ) == [(34,)]
    # The scheduler writes liveness events only; stretches hold busy and idle.
    assert sql(db, "SELECT count(*) FROM worker_events WHERE event IN ('busy', 'idle')") == [(0,)]


@pytest.mark.slow
def test_demo_stuck_worker_goes_stale_warns_and_recovers(tmp_path: Path) -> None:
    db = tmp_path / "stuck.db"
    out = sqlmon("demo", "--db", str(db), "--videos", "1", "--frames", "3", "--stuck", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "worker gpu-1" in out.stderr and "has been stale for" in out.stderr
    assert sql(
        str(db),
        "SELECT event FROM worker_events WHERE worker_id = 'gpu-1' "
        "AND event IN ('stale', 'recovered') ORDER BY id",
    ) == [("stale",), ("recovered",)]
    assert "1 stale episode(s)" in out.stdout


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    import signal
    import time

    # As a terminal's Ctrl-C: SIGINT to the whole process group, workers and scheduler too.
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlmon", "demo", "--videos", "40", "--length", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    db = str(tmp_path / "sqlmon-demo.db")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            if os.path.exists(db) and sql(db, "SELECT count(*) FROM worker_status")[0][0] == 8:
                break
        except sqlite3.OperationalError:
            pass  # the demo created the file, not yet its tables
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.rstrip().splitlines()[-1] == "sqlmon: interrupted"
    assert out == ""
    # Every worker stopped and said so (exited, not dead), and the run was ended.
    assert sql(db, "SELECT count(*) FROM worker_status WHERE exited_at IS NOT NULL") == [(8,)]
    assert sql(db, "SELECT end_reason FROM runs") == [("SIGINT",)]
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the group is left running


@pytest.mark.postgresql
def test_demo_runs_to_idle_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    out = sqlmon(
        "demo", "--db", pg_url, "--videos", "2", "--frames", "4", "--length", "0.5", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "run 1: idle after" in out.stdout and "; 34 tasks done, 0 failed" in out.stdout
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())  # nothing written beside it
    assert sql(pg_url, "SELECT count(*) FROM tasks WHERE status = 'done'") == [(34,)]
    assert sql(
        pg_url, "SELECT count(*) FROM worker_intervals WHERE state = 'busy' AND outcome = 'ok'"
    ) == [(34,)]
    assert sql(pg_url, "SELECT count(*) FROM worker_status WHERE clock_skew IS NULL") == [(0,)]
