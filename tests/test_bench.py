"""The benchmark still runs: scripts/bench.py at tiny sizes writes every section's figures.

Nothing here is about time (timings belong to the benchmark, never to tests): it only shows
that the script completes and that its JSON holds every section and every target.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    "heartbeat_write",
    "coalesced_beat",
    "tails",
    "scheduler_cycle",
    "startup",
    "post_run",
    "record",
    "live_view",
    "postgresql",
    "postgresql_fleet",
    "postgresql_live_view",
)


@pytest.mark.slow
def test_bench_tiny_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--quick",
            "--tiny",
            "--json",
            str(out),
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    for section in SECTIONS:
        assert section in results, section
    for variant in ("sqlmon", "sqlite3_raw", "manager_dict"):
        assert results["heartbeat_write"][variant]["samples"] > 0
    assert results["tails"]["beats"] > 0
    assert results["tails"]["exceptions"] == 0
    assert results["scheduler_cycle"]["small"]["cycles"] > 0
    assert results["scheduler_cycle"]["large"]["cycles"] > 0
    assert results["post_run"]["report_error"] is None
    assert results["post_run"]["status_error"] is None
    for variant in ("sqlmon", "sqlite3_raw", "sqlmon_plain_beat"):
        assert results["record"]["transition"][variant]["samples"] > 0
    assert results["record"]["day"]["report_error"] is None
    assert results["record"]["cycle"]["cycles"] > 0
    assert results["live_view"]["metrics"]["requests"] > 0
    names = [t["target"] for t in results["targets"]]
    assert all({"target", "met", "figure", "value"} <= set(t) for t in results["targets"])
    for section in ("transition write", "/metrics p99", "/api/v1/status p99", "cycle median"):
        assert any(section in name for name in names), (section, names)
    assert "targets:" in proc.stdout
    assert not list(tmp_path.glob("sqlmon-bench-*")), "the script leaves no databases behind"
