"""`sqlmon serve` and `sqlmon metrics`: a real server process, a real scheduler, real workers
and a real HTTP client; the exposition checked by Prometheus' own promtool."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from sqlmon import Heartbeat
from sqlmon.live import TRANSITIONS
from sqlmon.metrics import SqlmonCollector, registry
from sqlmon.schema import HEAD
from sqlmon.states import State

from .serving import (
    add_tasks,
    need,
    samples,
    scheduler,
    serve,
    sqlmon,
    stop_process,
    wait_for,
    worker,
)

pytestmark = pytest.mark.slow
STATES = [s.value for s in State]


def M(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:  # noqa: N802
    return (name, tuple(sorted(labels.items())))


def promtool_check(text: str) -> None:
    promtool = need("promtool", "prometheus")
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_live_pipeline_metrics_status_and_a_killed_worker(db: str, tmp_path: Path) -> None:
    now = time.time()
    add_tasks(
        db,
        [("OCR", "gpu", "pending", now - 30)]
        + [("OCR", "gpu", "pending", now - 5)] * 2
        + [("SUMMARY", "cpu", "pending", now - 12)]
        + [("SUMMARY", "cpu", "done", now - 100)] * 3,
    )
    sched = scheduler(db, str(tmp_path))
    gpu1 = worker(db, "gpu-1", "gpu", "OCR")
    gpu2 = worker(db, "gpu-2", "gpu", None)
    cpu1 = worker(db, "cpu-1", "cpu", None)
    srv = serve(db)
    try:

        def seen_by_the_scheduler():
            # Workers write their own rows at once; wait until a cycle has judged all three.
            m = srv.metrics()
            want = {
                M("sqlmon_scheduler_alive"): 1,
                M("sqlmon_worker_transitions_total", pool="gpu", to="joined"): 2,
                M("sqlmon_worker_transitions_total", pool="cpu", to="joined"): 1,
                M("sqlmon_busy_workers", pool="gpu", category="OCR"): 1,
                M("sqlmon_workers", pool="cpu", state="idle"): 1,
                M("sqlmon_workers", pool="gpu", state="busy"): 1,
                M("sqlmon_workers", pool="gpu", state="idle"): 1,
            }
            return m if all(m.get(k) == v for k, v in want.items()) else None

        m = wait_for("three workers judged by the scheduler", seen_by_the_scheduler)
        assert m[M("sqlmon_up")] == 1
        assert (
            m[M("sqlmon_build_info", version="0.1.0", schema_version=HEAD, backend="sqlite")] == 1
        )
        assert m[M("sqlmon_scheduler_alive")] == 1
        assert m[M("sqlmon_system_idle")] == 0
        assert m[M("sqlmon_scheduler_cycles_total")] >= 1
        assert m[M("sqlmon_scheduler_cycle_age_seconds")] >= 0
        assert m[M("sqlmon_scheduler_cycle_duration_seconds")] > 0
        assert m[M("sqlmon_scrape_duration_seconds")] > 0
        # Every state of every pool, zeros included; no worker label anywhere.
        for pool in ("cpu", "gpu"):
            for state in STATES:
                assert M("sqlmon_workers", pool=pool, state=state) in m
            for to in TRANSITIONS:
                assert M("sqlmon_worker_transitions_total", pool=pool, to=to) in m
            assert m[M("sqlmon_heartbeat_misses_total", pool=pool)] == 0
            assert m[M("sqlmon_failed_stretches_total", pool=pool)] == 0
        assert m[M("sqlmon_workers", pool="gpu", state="dead")] == 0
        assert m[M("sqlmon_worker_transitions_total", pool="gpu", to="joined")] == 2
        assert m[M("sqlmon_backlog_tasks", pool="gpu", category="OCR")] == 3
        assert m[M("sqlmon_backlog_tasks", pool="cpu", category="SUMMARY")] == 1
        assert m[M("sqlmon_busy_workers", pool="gpu", category="OCR")] == 1
        assert m[M("sqlmon_busy_workers", pool="cpu", category="SUMMARY")] == 0
        assert (
            30 <= m[M("sqlmon_backlog_oldest_age_seconds", pool="gpu", category="OCR")] < 30 + 600
        )
        assert not [k for k in m if "worker" in dict(k[1])]
        _, _, body = srv.get("/metrics")
        promtool_check(body.decode())

        # OpenMetrics when the scraper asks for it, ending in # EOF.
        status, headers, body = srv.get(
            "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert status == 200
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.decode().endswith("# EOF\n")
        names = {s.name for f in om_parse(body.decode()) for s in f.samples}
        assert "sqlmon_worker_transitions_total" in names

        doc = srv.json("/api/v1/status")
        assert doc["scheduler"]["alive"] is True
        assert doc["idle"] == {
            "idle": False,
            "reason": doc["idle"]["reason"],
            "since": None,
            "verdict_age_s": doc["idle"]["verdict_age_s"],
        }
        assert "pending" in doc["idle"]["reason"]
        gpu = next(p for p in doc["pools"] if p["pool"] == "gpu")
        assert gpu["workers"] == {"busy": 1, "idle": 1, "stale": 0, "dead": 0, "exited": 0}
        assert gpu["starving"] is False
        w = {x["worker_id"]: x for x in doc["workers"]}
        assert w["gpu-1"]["state"] == "busy" and w["gpu-1"]["category"] == "OCR"
        assert w["gpu-1"]["busy_for_s"] >= 0 and w["gpu-1"]["beat_age_s"] >= 0
        assert w["gpu-2"]["busy_for_s"] is None

        assert srv.get("/healthz")[0] == 200
        assert srv.get("/livez")[0] == 200

        # SIGKILL: dead at the next scrape after the scheduler sees it, with its evidence.
        gpu1.kill()
        m = wait_for(
            "gpu-1 dead in /metrics",
            lambda: (
                lambda m: m if m.get(M("sqlmon_workers", pool="gpu", state="dead")) == 1 else None
            )(srv.metrics()),
        )
        assert m[M("sqlmon_workers", pool="gpu", state="busy")] == 0
        assert m[M("sqlmon_worker_transitions_total", pool="gpu", to="dead")] == 1
        doc = srv.json("/api/v1/status")
        dead = next(x for x in doc["workers"] if x["worker_id"] == "gpu-1")
        assert dead["state"] == "dead"
        assert dead["evidence"] == "pid_gone"
        assert str(gpu1.proc.pid) in dead["detail"]
        # The backlog waits, gpu-2 sits idle: the pool starves.
        wait_for(
            "gpu starving",
            lambda: next(p for p in srv.json("/api/v1/status")["pools"] if p["pool"] == "gpu")[
                "starving"
            ],
        )

        events = srv.json("/api/v1/events?limit=1000")["events"]
        assert [e["event"] for e in events if e["worker_id"] == "gpu-1"] == ["joined", "dead"]
        cursor = events[-1]["id"]
        assert srv.json(f"/api/v1/events?after={cursor}")["events"] == []
        firsts = srv.json("/api/v1/events?after=0&limit=2")
        assert [e["id"] for e in firsts["events"]] == [events[0]["id"], events[1]["id"]]
        assert firsts["last_id"] == events[1]["id"]
        assert srv.get("/api/v1/events?limit=abc")[0] == 400

        runs = srv.json("/api/v1/runs")["runs"]
        assert [(r["run_id"], r["state"]) for r in runs] == [(1, "running")]
        hist = srv.json("/api/v1/history?points=5")
        assert hist["run_id"] == 1 and 1 <= len(hist["points"]) <= 5
        assert max(p["backlog_pending"] for p in hist["points"]) == 4

        # The scheduler stops: /healthz says so, with sqlmon check's own line.
        stop_process(sched)
        status, _h, body = wait_for(
            "healthz 503", lambda: (lambda r: r if r[0] == 503 else None)(srv.get("/healthz"))
        )
        check = subprocess.run(
            [sys.executable, "-m", "sqlmon", "check", db],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(body) == {"ok": False, "reason": check.stdout.strip()}
        assert srv.metrics()[M("sqlmon_scheduler_alive")] == 0
    finally:
        for w in (gpu1, gpu2, cpu1):
            w.end()
        stop_process(sched)
        srv.stop()


def test_unreadable_database_is_up_0_and_nothing_else(db: str, tmp_path: Path) -> None:
    srv = serve(db)
    try:
        assert srv.metrics()[M("sqlmon_up")] == 1
        assert srv.get("/livez")[0] == 200
        Path(db).unlink()
        assert srv.metrics() == {M("sqlmon_up"): 0}
        assert srv.get("/api/v1/status")[0] == 503
        assert srv.get("/healthz")[0] == 503
        assert srv.get("/livez")[0] == 200  # the process still serves
        Path(db).write_bytes(b"this is not a database" * 100)  # replaced by garbage
        assert srv.metrics() == {M("sqlmon_up"): 0}
        _, _, body = srv.get("/metrics")
        promtool_check(body.decode())
        Path(db).unlink()
        from sqlmon import init_db

        init_db(db)  # a new database at the same path is read, not the old inode
        assert srv.metrics()[M("sqlmon_up")] == 1
    finally:
        srv.stop()


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                out.append(local.rsplit(":", 1)[0])
    return out


def test_safety_defaults(db: str, tmp_path: Path) -> None:
    Heartbeat(db, "w", "cpu").close()
    srv = serve(db)
    try:
        assert srv.host == "127.0.0.1"
        assert _listening(srv.port) == ["0100007F"]  # 127.0.0.1 only
        assert srv.get("/", {"Host": "evil.example"})[0] == 403
        assert srv.get("/metrics", {"Host": f"evil.example:{srv.port}"})[0] == 403
        assert srv.get("/", {"Host": f"localhost:{srv.port}"})[0] == 200
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            status, headers, _ = srv.get("/api/v1/status", method=method)
            assert status == 405, method
            assert headers["Allow"] == "GET, HEAD"
        status, headers, body = srv.get("/", method="HEAD")
        assert status == 200 and body == b""
        status, headers, page = srv.get("/")
        assert headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert b'<script src="/app.js"' in page and b"onclick" not in page
        for asset in ("/app.js", "/app.css"):
            assert srv.get(asset)[0] == 200
        assert srv.get("/nothing")[0] == 404

        # Reading never changes the file: 100 requests, same bytes.
        def digest() -> str:
            return hashlib.sha256(Path(db).read_bytes()).hexdigest()

        before = digest()
        paths = ["/metrics", "/api/v1/status", "/api/v1/events", "/api/v1/runs", "/healthz"]
        for i in range(100):
            srv.get(paths[i % len(paths)])
        assert digest() == before
    finally:
        srv.stop()


def test_allowed_host_and_a_warning_beyond_loopback(db: str) -> None:
    srv = serve(db, "--host", "0.0.0.0", "--allowed-host", "mon.example")
    try:
        assert any("WARNING" in line and "beyond this machine" in line for line in srv.log)
        srv.host = "127.0.0.1"
        assert srv.get("/livez", {"Host": "mon.example"})[0] == 200
        assert srv.get("/livez", {"Host": f"mon.example:{srv.port}"})[0] == 200
        assert srv.get("/livez", {"Host": "other.example"})[0] == 403
    finally:
        srv.stop()


def test_cardinality_stays_bounded_as_workers_churn(db: str, tmp_path: Path) -> None:
    from sqlmon import Scheduler

    add_tasks(db, [("A", "cpu", "pending", time.time())])
    sched = Scheduler(db, interval=0.2, stale_after=1.0, warn_after=1.0)
    sched.open()
    srv = serve(db)
    try:
        Heartbeat(db, "first", "cpu").close()
        sched.step()
        before = set(srv.metrics())
        for i in range(200):
            hb = Heartbeat(db, f"w-{i}", "cpu")
            hb.beat("A")
            if i % 50 == 0:  # a task that raises: a failed busy stretch
                with pytest.raises(RuntimeError), hb.busy("A"):
                    raise RuntimeError("the task failed")
            if i % 20 == 0:
                sched.step()
            hb.close()
        sched.step()
        m = srv.metrics()
        assert set(m) == before  # the same series: no label per worker id
        assert m[M("sqlmon_workers", pool="cpu", state="exited")] == 201
        assert m[M("sqlmon_worker_transitions_total", pool="cpu", to="exited")] == 201
        assert m[M("sqlmon_failed_stretches_total", pool="cpu")] == 4
    finally:
        sched.close()
        srv.stop()


def test_per_worker_metrics_only_when_asked(db: str) -> None:
    hb = Heartbeat(db, "gpu-7", "gpu")
    hb.beat("OCR")
    srv = serve(db, "--per-worker-metrics")
    try:
        m = srv.metrics()
        assert m[M("sqlmon_worker_state", worker="gpu-7", pool="gpu", state="busy")] == 1
        assert M("sqlmon_worker_heartbeat_age_seconds", worker="gpu-7", pool="gpu") in m
    finally:
        hb.close()
        srv.stop()


def test_registering_the_collector_reads_nothing() -> None:
    calls = []

    def reader():
        calls.append(1)
        raise AssertionError("read at registration")

    reg = registry(SqlmonCollector(reader))
    assert calls == []
    from prometheus_client import generate_latest

    assert samples(generate_latest(reg).decode()) == {M("sqlmon_up"): 0}
    assert calls == [1]


def test_textfile_has_timestamps_not_ages(db: str, tmp_path: Path) -> None:
    from sqlmon import Scheduler

    add_tasks(db, [("A", "cpu", "pending", time.time())])
    sched = Scheduler(db, interval=0.2, stale_after=1.0, warn_after=1.0)
    sched.open()
    Heartbeat(db, "w", "cpu").beat("A")
    sched.step()
    target = tmp_path / "sqlmon.prom"
    out = sqlmon(
        "metrics", db, "--textfile", str(target), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = out.communicate(timeout=60)
    sched.close()
    assert out.returncode == 0, stderr
    assert stdout.strip() == f"wrote {target}"
    text = target.read_text()
    m = samples(text)
    assert m[M("sqlmon_up")] == 1
    assert m[M("sqlmon_scheduler_last_cycle_timestamp_seconds")] > 1e9
    assert m[M("sqlmon_backlog_tasks", pool="cpu", category="A")] == 1
    assert not [
        k for k in m if k[0].endswith("_age_seconds") or "duration" in k[0] and "cycle" not in k[0]
    ]
    for line in text.splitlines():  # no sample timestamps: node_exporter would drop the file
        if not line.startswith("#"):
            assert len(line.rsplit("}", 1)[-1].split()) == (1 if "}" in line else 2), line
    promtool_check(text)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("sqlmon.prom")] == [
        "sqlmon.prom"
    ]


def test_alert_rules_pass_their_promtool_tests() -> None:
    promtool = need("promtool", "prometheus")
    root = Path(__file__).parent.parent
    for args in (
        ["check", "rules", "sqlmon/alerts.yml"],
        ["test", "rules", "tests/alerts_test.yml"],
    ):
        out = subprocess.run(
            [promtool, *args], cwd=root, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_oldest_age_only_on_the_bundled_tasks_table(db: str) -> None:
    from prometheus_client import generate_latest

    from sqlmon import Scheduler, TaskTable
    from sqlmon.source import Source

    from .conftest import execute

    execute(db, "CREATE TABLE jobs (id INTEGER PRIMARY KEY, category TEXT, status TEXT, pool TEXT)")
    execute(db, "INSERT INTO jobs (category, status, pool) VALUES ('A', 'pending', 'cpu')")
    sched = Scheduler(db, interval=0.2, stale_after=1.0, warn_after=1.0, backlog=TaskTable("jobs"))
    sched.open()
    source = Source(db)
    try:
        sched.step()
        m = samples(generate_latest(registry(SqlmonCollector(source.live))).decode())
        assert m[M("sqlmon_backlog_tasks", pool="cpu", category="A")] == 1
        assert not [k for k in m if k[0] == "sqlmon_backlog_oldest_age_seconds"]
        assert source.live().oldest is None
    finally:
        source.close()
        sched.close()
