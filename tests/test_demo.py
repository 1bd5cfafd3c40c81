"""`sqlmon demo` end to end, as a real subprocess, as a new user runs it."""

from __future__ import annotations

import os
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
    assert "run 1: idle after" in out.stdout
    assert "GPU workers busy" in out.stderr  # the HUD, from the scheduler process
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
    assert sql(db, "SELECT count(*) FROM worker_intervals WHERE state = 'busy'") != [(0,)]


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
