"""The `sqlmon` inspection commands through typer's test runner and as real subprocesses,
against databases made by real runs; every bad input; the read-only promise."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sqlmon import Heartbeat, Scheduler, init_db
from sqlmon.cli import app
from tests.recorded import WEIRD, History, history_copy

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

# Every inspection command, as people run them; none may change a byte of the database.
INSPECTIONS = [
    ["status"],
    ["status", "--format", "json"],
    ["watch", "--count", "2", "--interval", "0.1"],
    ["runs"],
    ["runs", "-f", "json"],
    ["runs", "-f", "csv"],
    ["history"],
    ["history", "--run", "1", "--since", "1h", "--limit", "5", "-f", "csv"],
    ["events"],
    ["events", "--worker", "gpu-2", "--event", "stale", "-f", "json"],
    ["timeline", "--run", "1", "--width", "60"],
    ["report", "--run", "1"],
    ["report", "--run", "1", "-f", "json"],
    ["check"],
    ["idle"],
    ["prune", "--older-than", "7d", "--dry-run"],
]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return history_copy(tmp_path_factory, "cli")


def invoke(*args: str):
    return runner.invoke(app, list(args))


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_every_command_has_help_and_is_in_the_docs():
    readme = (ROOT / "README.md").read_text()
    reference = (ROOT / "docs" / "cli.md").read_text()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]  # type: ignore[union-attr]
    assert {
        "status",
        "watch",
        "runs",
        "history",
        "events",
        "timeline",
        "report",
        "check",
        "idle",
        "prune",
        "init",
        "run",
        "demo",
    } <= set(names)
    top = runner.invoke(app, ["--help"], prog_name="sqlmon")
    assert top.exit_code == 0
    for name in names:
        result = runner.invoke(app, [name, "--help"], prog_name="sqlmon")
        assert result.exit_code == 0, name
        assert re.search(rf"^  {name} +[A-Z`]", top.output, re.M), f"{name}: no summary"
        assert f"sqlmon {name}" in readme, f"README names no `sqlmon {name}`"
        assert f"sqlmon {name}" in reference, f"docs/cli.md shows no `sqlmon {name}`"
        # Plain click help: metavars people know, no pydantic-style types, no rich boxes.
        usage = result.output.splitlines()[0]
        assert usage.startswith(f"Usage: sqlmon {name} [OPTIONS]"), usage
        assert not re.search(r"<\w+( range)?>|\{db\}|[╭│]", result.output), result.output
        assert name == "demo" or usage.endswith(" DB"), usage
        # The docstring is rewrapped as paragraphs, never cut at its source line breaks.
        text = result.output.split("\n\n")[1]
        assert all(len(line) > 40 for line in text.splitlines()[:-1]), text


def test_status_runs_history_events(history: History):
    out = invoke("status", history.path).output
    assert "scheduler: run 2, cycle 2" in out and "NOT ALIVE" in out
    assert re.search(r"cpu-2 +cpu +\d+ +SUMMARY +.+ +dead", out)
    assert "cpu-\\x1b[31mX" in out and "\x1b" not in out  # shown, never obeyed
    runs = json.loads(invoke("runs", history.path, "-f", "json").output)
    assert [(r["run_id"], r["state"]) for r in runs] == [(1, "ended"), (2, "vanished")]
    assert invoke("runs", history.path).output.splitlines()[2].split()[7:9] == [
        "ended",
        "terminate",
    ]
    cut = invoke("history", history.path, "--run", "1", "--limit", "3", "-f", "csv")
    assert [line.split(",")[1] for line in cut.stdout.splitlines()] == ["cycle", "18", "19", "20"]
    assert cut.stderr == "3 of 20 shown; --limit 0 for all\n"  # never a silent cut
    assert invoke("history", history.path, "--run", "1", "--limit", "20").stderr == ""
    stale = json.loads(
        invoke("events", history.path, "--worker", "gpu-2", "--event", "stale", "-f", "json").output
    )
    assert [(e["worker_id"], e["event"], e["run_id"]) for e in stale] == [("gpu-2", "stale", 1)]
    ocr = json.loads(invoke("events", history.path, "--category", "OCR", "-f", "json").output)
    # gpu-1 joined already busy in OCR: its joined event names the category too.
    assert {(e["worker_id"], e["event"]) for e in ocr} == {("gpu-1", "busy"), ("gpu-1", "joined")}
    weird = invoke("events", history.path, "--worker", WEIRD)
    assert weird.exit_code == 0 and "cpu-\\x1b[31mX" in weird.output


def test_timeline_text_and_html(history: History, tmp_path: Path):
    page = tmp_path / "run1.html"
    result = invoke(
        "timeline", history.path, "--run", "1", "--width", "60", "--no-colour", "--html", str(page)
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("run 1: ") and "(20.5 s)" in lines[0]
    gpu2 = next(line for line in lines if line.startswith("gpu-2 "))
    assert "!" in gpu2 and len(gpu2) == 60
    assert lines[-1] == f"wrote {page}"
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "<polyline" in text
    assert "https:" not in text and "src=" not in text
    coloured = invoke("timeline", history.path, "--run", "1", "--width", "60", "--colour")
    assert "\x1b[" in coloured.output
    refused = invoke("timeline", history.path, "--html", history.path)
    assert refused.exit_code == 2 and "is the database itself" in refused.output


def test_report_of_a_run(history: History):
    out = invoke("report", history.path, "--run", "1").output
    assert "length 20.5 s; drained in 9.0 s" in out
    assert re.search(r"gpu-2 +.+ +1 +13\.0 s", out)  # longest gap: 3 s stale + stale_after
    assert re.search(r"gpu-2 +\S+ \S+ +3\.0 s +recovered", out)
    assert re.search(r"cpu-2 +\S+ \S+ +pid \d+ is gone", out)
    data = json.loads(invoke("report", history.path, "--run", "1", "-f", "json").output)
    assert data["cycles"]["count"] == 20


def test_watch_redraws_until_its_count(history: History):
    result = invoke("watch", history.path, "--count", "2", "--interval", "0.1")
    assert result.exit_code == 0
    assert result.output.count("scheduler: run 2") == 2


def test_check_and_idle_exit_codes(history: History, tmp_path: Path):
    result = invoke("check", history.path)
    assert result.exit_code == 1
    assert result.output.startswith("the scheduler's heartbeat is") or "stopped" in result.output
    assert invoke("idle", history.path).exit_code == 1
    # A live scheduler (real clocks) with one idle worker: healthy, and idle once confirmed.
    live = str(tmp_path / "live.db")
    init_db(live)
    hb = Heartbeat(live, "gpu-1", "gpu", min_interval=0.0)
    sched = Scheduler(live, interval=1.0, stale_after=10.0, warn_after=10.0, hud_every=1e9)
    sched.open()
    try:
        hb.beat(None)
        sched.step()
        first = invoke("idle", live)
        assert (first.exit_code, first.output) == (1, "not idle: confirming idle (1/2)\n")
        hb.beat(None)
        sched.step()
        ok = invoke("check", live)
        assert ok.exit_code == 0 and ok.output.startswith("ok: run 1 cycle 2"), ok.output
        assert (invoke("idle", live).exit_code, invoke("idle", live).output) == (0, "idle\n")
        assert invoke("idle", live, "--since", "2027-01-01 00:00").exit_code == 1
    finally:
        hb.close()
        sched.close()


def _bad_inputs(tmp_path: Path, history: History) -> list[tuple[list[str], str, str | None]]:
    """(arguments, what stderr says, the file that must not change)."""
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    newer = tmp_path / "newer.db"
    init_db(str(newer))
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE sqlmon_alembic_version SET version_num = '9999'")
    conn.close()
    missing = str(tmp_path / "missing.db")
    h = history.path
    return [
        (["status", missing], "no such database", None),
        (["report", f"sqlite:///{missing}"], "no such database", None),
        (["runs", str(tmp_path)], "is a directory", None),
        (["status", "nosuchscheme://host/db"], "cannot open this URL", None),
        (["status", str(text)], "not an SQLite database", str(text)),
        (["history", str(foreign)], "not a sqlmon database", str(foreign)),
        (["events", str(newer)], "is newer than this sqlmon knows", str(newer)),
        (["prune", str(newer), "--older-than", "7d"], "is newer than this sqlmon", str(newer)),
        (["report", h, "--run", "99"], "no run 99 (runs here: 1 to 2)", h),
        (["timeline", h, "--run", "99"], "no run 99", h),
        (["history", h, "--since", "yesterdayish"], "--since: 'yesterdayish' is neither", h),
        (["events", h, "--until", "25:99"], "--until:", h),
        (["events", h, "--event", "exploded"], "--event: unknown event 'exploded'", h),
        (["runs", h, "--format", "xml"], "unknown format 'xml'", h),
        (["prune", h, "--older-than", "7"], "--older-than: '7' is not a duration", h),
    ]


def test_bad_input_one_line_exit_2_nothing_changed(history: History, tmp_path: Path):
    cases = _bad_inputs(tmp_path, history)
    before = sorted(os.listdir(tmp_path))
    for args, says, keep in cases:
        sums = digest(keep) if keep else None
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == "", args
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sqlmon: ") and says in lines[0], (
            args,
            result.stderr,
        )
        assert "Traceback" not in result.output
        if keep:
            assert digest(keep) == sums, args
    # missing.db was never created (readers of WAL files may add -wal / -shm beside them)
    assert not (tmp_path / "missing.db").exists()
    assert {n for n in os.listdir(tmp_path) if not n.endswith(("-wal", "-shm"))} == {
        n for n in before if not n.endswith(("-wal", "-shm"))
    }


def test_inspection_never_changes_a_byte(history: History, tmp_path: Path):
    db = str(tmp_path / "copy.db")
    shutil.copy(history.path, db)
    before = digest(db)
    for args in INSPECTIONS:
        result = invoke(args[0], db, *args[1:])
        assert result.exit_code in (0, 1), (args, result.output)
        assert digest(db) == before, args


def test_inspection_works_while_a_writer_holds_the_lock(history: History, tmp_path: Path):
    """A read-only command never asks for the write lock: it runs while someone holds it."""
    db = str(tmp_path / "locked.db")
    shutil.copy(history.path, db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE runs SET host = 'elsewhere' WHERE run_id = 1")
    try:
        for args in INSPECTIONS:
            if args[0] == "prune":
                continue
            result = invoke(args[0], db, *args[1:])
            assert result.exit_code in (0, 1), (args, result.output)
        # Readers see the last commit, never the writer's uncommitted change.
        assert "elsewhere" not in invoke("runs", db).output
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_prune_deletes_old_runs_in_batches_never_the_current(tmp_path: Path):
    db = str(tmp_path / "old.db")
    init_db(db)
    past = time.time() - 10 * 86400
    for start in (past, past + 100):
        sched = Scheduler(db, interval=1.0, stale_after=10.0, warn_after=10.0, hud_every=1e9)
        sched.open(now=start)
        hb = Heartbeat(db, f"w{int(start - past)}", "cpu", min_interval=0.0)
        for k in range(1, 6):
            hb.beat("OCR" if k % 2 else None)
            sched.step(now=start + k, mono=1000.0 + start - past + k)
        hb.close()
        sched.close("terminate", now=start + 6)
    current = Scheduler(db, interval=1.0, stale_after=10.0, warn_after=10.0, hud_every=1e9)
    current.open(now=past)  # the current run: old by its clock, and still never pruned
    current.step(now=past + 1, mono=5000.0)
    current.close("terminate", now=past + 2)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE runs SET ended_at = NULL WHERE run_id = 3")
    # Stretches before the oldest run left (run 3, begun at `past`) go, except one that
    # overlaps it and a death's stretch worker_status still names as its open one.
    conn.executemany(
        "INSERT INTO worker_stretches (worker_id, pid, category, started, ended, outcome) "
        "VALUES (?, 1, ?, ?, ?, 'ok')",
        [("old", "OCR", past - 9, past - 8), ("old", None, past - 8, past - 1)]
        + [("old", "OCR", past - 1, past + 1), ("gone", "OCR", past - 5, past - 4)],
    )
    conn.execute(
        "INSERT INTO worker_status (worker_id, pid, host, pool, category, category_since, "
        "last_heartbeat, started_at) VALUES ('gone', 1, 'h', 'cpu', 'OCR', ?, ?, ?)",
        (past - 5, past - 5, past - 6),
    )
    conn.commit()
    counts = {
        t: conn.execute(f"SELECT count(*) FROM {t} WHERE run_id IN (1, 2)").fetchone()[0]
        for t in ("snapshots", "worker_events", "stretch_totals")
    }
    assert counts["stretch_totals"] > 0
    counts["snapshot_counts"] = conn.execute(
        "SELECT count(*) FROM snapshot_counts WHERE snapshot_id IN "
        "(SELECT id FROM snapshots WHERE run_id IN (1, 2))"
    ).fetchone()[0]
    conn.close()
    dry = invoke("prune", db, "--older-than", "7d", "--dry-run")
    assert dry.output == "would prune 2 run(s) (1, 2) older than 7d\n"
    result = invoke("prune", db, "--older-than", "7d")
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"pruned 2 run(s) (1, 2) older than 7d: {counts['snapshots']} snapshots, "
        f"{counts['snapshot_counts']} snapshot counts, {counts['worker_events']} worker events, "
        f"{counts['stretch_totals']} stretch totals, 2 run rows and 2 worker stretches from "
        f"before the oldest run left; {4 + sum(counts.values())} rows in all\n"
    )
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT run_id FROM runs").fetchall() == [(3,)]
    assert conn.execute("SELECT DISTINCT run_id FROM stretch_totals").fetchall() in ([], [(3,)])
    assert conn.execute(
        "SELECT started - ? FROM worker_stretches WHERE started < ? ORDER BY started", (past, past)
    ).fetchall() == [(-5.0,), (-1.0,)]
    assert conn.execute("SELECT count(*) FROM snapshots WHERE run_id = 3").fetchone() == (1,)
    conn.close()
    again = invoke("prune", db, "--older-than", "7d")
    assert again.output == "nothing to prune: 0 run(s) older than 7d\n"


def test_prune_batches(tmp_path: Path):
    """Each batch is its own short write transaction: with a batch of 2, many of them."""
    from sqlmon import db as dbmod
    from sqlmon.prune import prune

    db = str(tmp_path / "batches.db")
    init_db(db)
    sched = Scheduler(db, interval=1.0, stale_after=10.0, warn_after=10.0, hud_every=1e9)
    start = time.time() - 86400
    sched.open(now=start)
    for k in range(1, 8):
        sched.step(now=start + k, mono=100.0 + k)
    sched.close("terminate", now=start + 8)
    init_db(db)
    engine = dbmod.engine(db, "scheduler")
    commits = []
    from sqlalchemy import event

    event.listen(engine, "commit", lambda conn: commits.append(1))
    with engine.connect() as conn:
        conn.execute  # noqa: B018 (no statement outside a transaction)
        done = prune(conn, time.time(), batch=2)
    engine.dispose()
    assert (done.runs, done.snapshots) == ([], 0)  # run 1 is the current run: never pruned
    second = Scheduler(db, interval=1.0, stale_after=10.0, warn_after=10.0, hud_every=1e9)
    second.open()
    second.close()
    engine = dbmod.engine(db, "scheduler")
    event.listen(engine, "commit", lambda conn: commits.append(1))
    with engine.connect() as conn:
        done = prune(conn, time.time() - 3600, batch=2)
    engine.dispose()
    assert (done.runs, done.snapshots) == ([1], 7)
    assert len(commits) >= 4 + 1 + 1  # 4 batches of snapshots, the events, the run row


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlmon", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"},
        timeout=60,
    )


def test_real_subprocess(history: History, tmp_path: Path):
    before = digest(history.path)
    report = _cli("report", history.path, "--run", "1", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["run_id"] == 1
    timeline = _cli("timeline", history.path, "--run", "1")
    assert timeline.returncode == 0
    assert all(len(line) <= 100 for line in timeline.stdout.splitlines()[1:-1])
    assert "\x1b[" not in timeline.stdout  # not a terminal: no colour
    missing = _cli("status", "missing.db", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stdout == ""
    assert (
        missing.stderr == f"sqlmon: {tmp_path}/missing.db: no such database "
        "(create it with `sqlmon init`)\n"
    )
    assert not (tmp_path / "missing.db").exists()
    assert digest(history.path) == before


def test_a_database_no_scheduler_has_run_on(db: str):
    # Every command about runs answers the same way, and that is no error.
    no_runs = "no runs yet (a scheduler starts one: `sqlmon run DB`)\n"
    for command in ("status", "runs", "history", "timeline", "report"):
        result = invoke(command, db)
        assert (result.exit_code, result.output) == (0, no_runs), command
    assert invoke("runs", db, "-f", "json").output == "[]\n"
    assert invoke("events", db).output == "(none)\n"
    asked = invoke("report", db, "--run", "3")
    assert (asked.exit_code, asked.stderr) == (2, "sqlmon: no run 3: no runs yet\n")
    check = invoke("check", db)
    assert (check.exit_code, check.output) == (1, "no scheduler has run on this database\n")
    report = invoke("report", db)
    assert report.exit_code == 0


def _started(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """A long-running command as a real process, its output into files to read meanwhile."""
    return subprocess.Popen(
        [sys.executable, "-m", "sqlmon", *args],
        cwd=cwd,
        stdout=open(cwd / "out.txt", "w"),  # noqa: SIM115
        stderr=open(cwd / "err.txt", "w"),  # noqa: SIM115
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )


def _until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _stopped_by_ctrl_c(proc: subprocess.Popen[str], cwd: Path) -> str:
    import signal

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    err = (cwd / "err.txt").read_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    return err


def test_watch_waits_for_the_database_and_stops_cleanly_on_ctrl_c(tmp_path: Path):
    db = tmp_path / "later.db"
    proc = _started("watch", str(db), "--interval", "0.1", cwd=tmp_path)
    try:
        _until(lambda: "waiting for the database" in (tmp_path / "err.txt").read_text())
        assert proc.poll() is None  # it waits, it does not exit
        init_db(str(db))
        _until(lambda: "no runs yet" in (tmp_path / "out.txt").read_text())
        err = _stopped_by_ctrl_c(proc, tmp_path)
    finally:
        proc.kill()
    assert err.splitlines() == [
        f"waiting for the database: {db}: no such database (create it with `sqlmon init`)",
        "sqlmon: interrupted",
    ]


def test_run_watches_the_pipelines_own_task_table(tmp_path: Path):
    """Everything TaskTable can say, said on the command line; the HUD off."""
    db, tasks = tmp_path / "mon.db", tmp_path / "app.db"
    init_db(str(db))
    with sqlite3.connect(tasks) as conn:
        conn.execute("CREATE TABLE jobs (job_id INTEGER PRIMARY KEY, kind TEXT, state TEXT)")
        conn.executemany(
            "INSERT INTO jobs (kind, state) VALUES (?, ?)",
            [("OCR", "queued"), ("OCR", "working"), ("SUMMARY", "queued"), ("OCR", "finished")],
        )
    proc = _started(
        "run", str(db), "--interval", "0.2", "--stale-after", "1", "--warn-after", "1",
        "--task-db", str(tasks), "--task-table", "jobs", "--category-column", "kind",
        "--status-column", "state", "--pools", "OCR=gpu,SUMMARY=cpu", "--pending", "queued",
        "--running", "working", "--id-column", "job_id", "--hud", "off",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        _until(lambda: sqlite3.connect(db).execute("SELECT count(*) FROM snapshots").fetchone()[0])
        err = _stopped_by_ctrl_c(proc, tmp_path)
    finally:
        proc.kill()
    counts = sqlite3.connect(db).execute(
        "SELECT pool, category, pending, running FROM snapshot_counts ORDER BY category"
    )
    assert counts.fetchall()[:2] == [("gpu", "OCR", 1, 1), ("cpu", "SUMMARY", 1, 0)]
    assert "sqlmon.hud" not in err and "cycle 1 |" not in err  # --hud off
    assert "ended (SIGINT)" in err


def test_run_refuses_muddled_task_table_options(db: str):
    both = invoke("run", db, "--pools", "OCR=gpu", "--pool-column", "p")
    assert (both.exit_code, both.stderr) == (
        2,
        "sqlmon: --pools is for a table without a pool column: give --pool-column or --pools\n",
    )
    bad = invoke("run", db, "--pools", "OCR")
    assert bad.stderr == "sqlmon: --pools: 'OCR' is not CATEGORY=POOL\n"
    assert invoke("run", db, "--hud", "loud").stderr == (
        "sqlmon: --hud: 'loud' is not one of line, full, off\n"
    )
    assert invoke("run", db, "--task-table", "nope").stderr == (
        "sqlmon: task table 'nope' does not exist\n"
    )


def test_status_refuses_csv_rather_than_drop_sections(db: str):
    result = invoke("status", db, "-f", "csv")
    assert (result.exit_code, result.stderr) == (
        2,
        "sqlmon: status has no csv form (its sections differ in shape): use -f json\n",
    )
