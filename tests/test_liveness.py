"""One truth about liveness, with real processes: a killed scheduler reads dead everywhere at
once, one scheduler is active per database, a paused one is fenced out, and a file is never
written after it was deleted or replaced."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sqlmon import Heartbeat, Scheduler, init_db, is_idle, queries, wait_idle
from sqlmon import db as dbmod
from sqlmon.errors import SchedulerGone, SchedulerRunning

from .conftest import BACKENDS, PGBOUNCER, execute, is_pg, sql, wait_for

pytestmark = pytest.mark.slow


def sqlmon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlmon", *args], capture_output=True, text=True, timeout=timeout
    )


def run_scheduler(db: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sqlmon", "run", db, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def state(db: str) -> tuple:
    return tuple(sql(db, "SELECT run_id, term, cycle, pid FROM scheduler_state")[0])


def started(db: str, proc: subprocess.Popen[str]) -> bool:
    rows = sql(db, "SELECT pid, cycle FROM scheduler_state")
    return bool(rows) and rows[0][0] == proc.pid and rows[0][1] >= 1


def add_pending(db: str, n: int = 5) -> None:
    execute(
        db,
        "INSERT INTO tasks (category, pool, status, created_at) "
        "VALUES ('OCR', 'gpu', 'pending', 0)",
        [()] * n,
    )


def stop(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(30)


def test_a_killed_scheduler_reads_dead_everywhere_at_once(any_db: str) -> None:
    db = any_db  # a file, or a PostgreSQL URL: the same behaviour
    # A long interval: its heartbeat stays fresh for 30 s, so only the pid check can tell.
    proc = run_scheduler(db, "--interval", "10", "--stale-after", "20", "--warn-after", "20")
    try:
        wait_for(lambda: started(db, proc))
        wait_for(lambda: sqlmon("check", db).returncode == 0)
        proc.kill()
        proc.wait(10)
        check, idle, status, runs = (
            sqlmon("check", db),
            sqlmon("idle", db),
            sqlmon("status", db, "-f", "json"),
            sqlmon("runs", db, "-f", "json"),
        )
        assert check.returncode == 1 and "is gone" in check.stdout
        assert idle.returncode == 1 and "is gone" in idle.stdout
        doc = json.loads(status.stdout)
        assert doc["scheduler"]["alive"] is False and doc["idle"]["idle"] is False
        assert "is gone" in doc["scheduler"]["why_not_alive"]
        assert json.loads(runs.stdout)[-1]["state"] == "vanished"
        assert not is_idle(db)
    finally:
        stop(proc)


def test_wait_idle_raises_when_the_scheduler_is_gone(db: str) -> None:
    add_pending(db, 1)  # never idle: only the scheduler's death can end the wait
    proc = run_scheduler(db, "--interval", "0.2", "--stale-after", "2", "--warn-after", "2")
    outcome: list[BaseException | bool] = []
    try:
        wait_for(lambda: started(db, proc))

        def waiter() -> None:
            try:
                outcome.append(wait_idle(db, timeout=3600))
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                outcome.append(exc)

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        time.sleep(0.5)
        assert outcome == []  # still waiting while the scheduler lives
        proc.kill()
        t.join(60)  # an hour's timeout: it must not be what ends the wait
        assert len(outcome) == 1 and isinstance(outcome[0], SchedulerGone), outcome
        assert "is gone" in str(outcome[0])
    finally:
        stop(proc)
    # With no scheduler at all, the wait ends after the start grace, not the timeout.
    began = time.monotonic()
    with pytest.raises(SchedulerGone, match="is gone|heartbeat is"):
        wait_idle(db, timeout=3600, start_grace=1.0)
    assert time.monotonic() - began >= 1.0


def test_a_second_scheduler_refuses_or_stands_by_and_takes_over(any_db: str) -> None:
    db = any_db  # a file, or a PostgreSQL URL: the same behaviour
    add_pending(db)
    first = run_scheduler(db, "--interval", "0.1", "--stale-after", "2", "--warn-after", "2")
    standby = None
    samples: list[bool] = []
    try:
        wait_for(lambda: started(db, first))
        second = sqlmon("run", db)
        assert second.returncode == 2
        assert "another scheduler is running" in second.stderr
        assert "Traceback" not in second.stderr
        with pytest.raises(SchedulerRunning):
            Scheduler(db, interval=0.1)
        standby = run_scheduler(db, "--interval", "0.1", "--standby")
        for _ in range(30):  # the standby writes nothing while the first runs
            samples.append(is_idle(db))
            time.sleep(0.05)
        assert state(db)[3] == first.pid
        assert [r[0] for r in sql(db, "SELECT run_id FROM runs")] == [1]
        first.kill()
        first.wait(10)
        wait_for(lambda: started(db, standby))  # same host: the dead pid frees the lease
        for _ in range(30):
            samples.append(is_idle(db))
            time.sleep(0.05)
        assert not any(samples)  # work was queued all along
        run_id, term, _cycle, pid = state(db)
        assert (run_id, term, pid) == (2, 2, standby.pid)
        assert sql(db, "SELECT run_id, end_reason FROM runs ORDER BY run_id") == [
            (1, "vanished: its scheduler stopped without ending it"),
            (2, None),
        ]
        # History goes on in the new run.
        wait_for(lambda: sql(db, "SELECT count(*) FROM snapshots WHERE run_id = 2")[0][0] >= 3)
        # A clean stop hands the lease over at once.
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(30) == 0
        assert sql(db, "SELECT end_reason FROM runs WHERE run_id = 2") == [("SIGTERM",)]
        third = run_scheduler(db, "--interval", "0.1")
        wait_for(lambda: started(db, third), timeout=10)
        stop(third)
    finally:
        stop(first, *([standby] if standby else []))
    if not is_pg(db):
        assert sql(db, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.parametrize("any_db", [*BACKENDS, PGBOUNCER], indirect=True)
def test_a_paused_scheduler_is_fenced_out_once_another_took_over(any_db: str) -> None:
    db = any_db  # a file, or a PostgreSQL URL, direct or through PgBouncer: the same behaviour
    add_pending(db)
    # The lease lasts max(3 x 0.1, 0.1 + 2) = 2.1 s.
    leader = run_scheduler(db, "--interval", "0.1", "--stale-after", "2", "--warn-after", "2")
    standby = None
    try:
        wait_for(lambda: started(db, leader))
        standby = run_scheduler(db, "--interval", "0.1", "--standby")
        time.sleep(1.0)
        leader.send_signal(signal.SIGSTOP)
        wait_for(lambda: started(db, standby), timeout=30)
        taken = state(db)
        assert taken[:2] == (2, 2)
        leader.send_signal(signal.SIGCONT)
        # The old leader's next write is refused by the database itself: it steps down.
        assert leader.wait(30) == 0
        assert "steps down" in leader.stderr.read()
        seen = []
        for _ in range(20):
            seen.append(state(db))
            time.sleep(0.05)
        assert {s[:2] for s in seen} == {(2, 2)}  # the idle row never went back to run 1
        assert [s[2] for s in seen] == sorted(s[2] for s in seen)
        assert (
            sql(db, "SELECT count(*) FROM snapshots WHERE run_id = 1 AND ts > ?", (taken_at(db),))[
                0
            ][0]
            == 0
        )
        assert not is_idle(db)
    finally:
        leader.send_signal(signal.SIGCONT)
        stop(leader, *([standby] if standby else []))
    if not is_pg(db):
        assert sql(db, "PRAGMA integrity_check") == [("ok",)]


def taken_at(db: str) -> float:
    return sql(db, "SELECT started_at FROM runs WHERE run_id = 2")[0][0]


def test_check_never_misjudges_a_fast_healthy_scheduler(db: str) -> None:
    proc = run_scheduler(db, "--interval", "0.01", "--stale-after", "2", "--warn-after", "2")
    try:
        wait_for(lambda: started(db, proc))
        verdicts = []
        for _ in range(300):
            with queries.connect(db) as conn, dbmod.read(conn):
                st = queries.status(conn)
            verdicts.append(queries.health(st))
        assert [v for v in verdicts if not v[0]] == []
        for _ in range(5):
            out = sqlmon("check", db)
            assert out.returncode == 0, out.stdout
    finally:
        stop(proc)


def test_the_scheduler_stops_when_its_file_is_deleted(db: str, tmp_path: Path) -> None:
    proc = run_scheduler(db, "--interval", "0.1")
    try:
        wait_for(lambda: started(db, proc))
        for suffix in ("", "-wal", "-shm"):
            Path(db + suffix).unlink(missing_ok=True)
        assert proc.wait(30) == 1  # a run stopped by an error: a supervisor should hear of it
        assert "deleted or replaced" in proc.stderr.read()
    finally:
        stop(proc)
    init_db(db)  # a new file at the same path knows no scheduler
    assert not is_idle(db)


def _fork_scenario(db: str, method: str, hold_own_connection: bool) -> dict:
    """The pipeline of the report: a Heartbeat used in the parent, then a scheduler started
    under `method`, then the parent closes its Heartbeat while workers run."""
    ctx = multiprocessing.get_context(method)
    stop_, terminate = ctx.Event(), ctx.Event()
    me = Heartbeat(db, "main", "cpu")
    me.beat("OCR")
    own = sqlite3.connect(db) if hold_own_connection else None
    if own is not None:
        own.execute("SELECT count(*) FROM tasks").fetchone()  # the pipeline's own reader
    s = Scheduler(db, stop=stop_, terminate=terminate, interval=0.1, start_method=method)
    s.start()
    if own is not None:
        own.close()
    time.sleep(1.0)
    me.close()
    workers = [Heartbeat(db, f"w{i}", "cpu", min_interval=0.0) for i in range(3)]
    for _ in range(200):
        for w in workers:
            w.beat("A")
            w.beat(None)
        time.sleep(0.002)
    missed = sum(w.missed for w in workers)
    for w in workers:
        w.close()
    time.sleep(0.3)
    stop_.set()
    terminate.set()
    s.join(30)
    return {
        "exitcode": s.exitcode,
        "missed": missed,
        "integrity": sql(db, "PRAGMA integrity_check"),
        "runs": sql(db, "SELECT ended_at IS NOT NULL, end_reason FROM runs"),
    }


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_heartbeat_closed_in_the_parent_while_the_scheduler_runs(db: str, method: str) -> None:
    got = _fork_scenario(db, method, hold_own_connection=False)
    assert got["integrity"] == [("ok",)]
    assert got["missed"] == 0
    assert got["exitcode"] == 0
    assert got["runs"] == [(1, "terminate")]


def test_a_fork_while_the_pipeline_holds_its_own_connection_is_refused(db: str) -> None:
    got = _fork_scenario(db, "fork", hold_own_connection=True)
    # The child cannot be made safe: it refuses rather than corrupt, and writes no run.
    assert got["integrity"] == [("ok",)]
    assert got["missed"] == 0
    assert got["runs"] == []


def test_the_refusal_says_what_to_do(db: str) -> None:
    own = sqlite3.connect(db)
    own.execute("SELECT 1 FROM worker_status").fetchall()
    s = Scheduler(db, interval=0.1, start_method="fork")
    s.start()
    s.join(30)
    assert s.exitcode == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: any connection to the inherited file is refused, with the fix
        try:
            dbmod.engine(db, "read")
            message = "opened"
        except Exception as exc:  # noqa: BLE001 - the parent reads what it was
            message = f"{type(exc).__name__}: {exc}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    message = os.read(read, 4096).decode()
    own.close()
    assert message.startswith("UnsafeFork: ")
    assert "forked while its parent held the database open" in message
    assert "spawn or forkserver" in message
    assert sql(db, "SELECT count(*) FROM runs") == [(0,)]
