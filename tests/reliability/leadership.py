"""Scenarios for one truth about liveness: takeovers after kills and pauses of the active
scheduler, and the pipeline that forks its scheduler after using a Heartbeat in the parent.

Each takeover round kills (SIGKILL) or pauses (SIGSTOP past its lease, then SIGCONT) the
active scheduler while a standby waits; ground truth is what the driver did and saw: the term
must rise by one per round, the idle row must never go back to an older run, the paused one
must step down, and no idle verdict may appear while the driver's tasks are pending.
"""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlmon import Heartbeat, Scheduler, init_db, is_idle

from .harness import Outcome, check_database, sql, wait_for


def _run(db: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sqlmon", "run", db, "--interval", "0.1", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _holder(db: str) -> tuple[int, int, int]:
    rows = sql(db, "SELECT run_id, term, pid FROM scheduler_state")
    return tuple(rows[0]) if rows else (0, 0, 0)  # type: ignore[return-value]


def takeovers(tmp: Path, rounds: int = 2) -> Outcome:
    tmp.mkdir(parents=True, exist_ok=True)
    db = str(tmp / "sqlmon.db")
    init_db(db)
    sql_exec(
        db,
        "INSERT INTO tasks (category, pool, status, created_at) "
        "VALUES ('OCR', 'gpu', 'pending', 0)",
    )
    out = Outcome("takeovers")
    leader = _run(db, "--stale-after", "2", "--warn-after", "2")
    procs = [leader]
    kills = pauses = false_idles = regressions = 0
    seen: list[tuple[int, int, int]] = []
    try:
        if not wait_for(lambda: _holder(db)[2] == leader.pid, 60):
            out.problems.append("the first scheduler never started")
            return out
        for n in range(rounds):
            standby = _run(db, "--standby")
            procs.append(standby)
            time.sleep(0.5)
            pause = n % 2 == 1
            term = _holder(db)[1]
            if pause:
                leader.send_signal(signal.SIGSTOP)
                pauses += 1
            else:
                leader.kill()
                kills += 1
            until = time.monotonic() + 60
            while _holder(db)[2] != standby.pid and time.monotonic() < until:
                seen.append(_holder(db))
                false_idles += is_idle(db)
                time.sleep(0.02)
            out.expect(_holder(db)[2] == standby.pid, f"round {n}: the standby never took over")
            out.expect(
                _holder(db)[1] == term + 1, f"round {n}: term {_holder(db)[1]}, not {term + 1}"
            )
            if pause:
                leader.send_signal(signal.SIGCONT)
                try:
                    code = leader.wait(30)
                except subprocess.TimeoutExpired:
                    code = None
                out.expect(code == 0, f"round {n}: the paused scheduler did not step down ({code})")
            for _ in range(10):
                seen.append(_holder(db))
                false_idles += is_idle(db)
                time.sleep(0.02)
            leader = standby
        regressions = sum(1 for a, b in zip(seen, seen[1:], strict=False) if b[:2] < a[:2])
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait(30)
    out.expect(false_idles == 0, f"{false_idles} idle verdicts while a task was pending")
    out.expect(
        regressions == 0, f"the idle row went back to an older run or term {regressions} times"
    )
    out.problems += check_database(db)
    out.tried = {"kills": kills, "pauses": pauses}
    out.figures = {"samples": len(seen), "runs": sql(db, "SELECT count(*) FROM runs")[0][0]}
    return out


def sql_exec(db: str, statement: str) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(statement)
    finally:
        conn.close()


def fork_pipeline(tmp: Path, repeats: int = 1) -> Outcome:
    """The pipeline that used a Heartbeat in its main process, started its scheduler, then
    closed that Heartbeat while the scheduler and workers ran; under each start method."""
    out = Outcome("fork pipeline")
    missed = 0
    for n in range(repeats):
        for method in ("fork", "spawn", "forkserver"):
            folder = tmp / f"{n}-{method}"
            folder.mkdir(parents=True, exist_ok=True)
            db = str(folder / "sqlmon.db")
            init_db(db)
            ctx = multiprocessing.get_context(method)
            stop, terminate = ctx.Event(), ctx.Event()
            me = Heartbeat(db, "main", "cpu")
            me.beat("OCR")
            s: Any = Scheduler(
                db, stop=stop, terminate=terminate, interval=0.1, start_method=method,
                log_level="ERROR",
            )  # fmt: skip
            s.start()
            time.sleep(0.5)
            me.close()
            workers = [Heartbeat(db, f"w{i}", "cpu", min_interval=0.0) for i in range(3)]
            for _ in range(100):
                for w in workers:
                    w.beat("A")
                    w.beat(None)
            missed += sum(w.missed for w in workers)
            for w in workers:
                w.close()
            time.sleep(0.3)
            stop.set()
            terminate.set()
            s.join(30)
            out.expect(s.exitcode == 0, f"{method}: the scheduler exited with {s.exitcode}")
            ended = sql(db, "SELECT end_reason FROM runs")
            out.expect(ended == [("terminate",)], f"{method}: runs ended {ended}")
            out.problems += [f"{method}: {p}" for p in check_database(db)]
    out.expect(missed == 0, f"{missed} beats missed")
    out.tried = {"pipelines": 3 * repeats}
    out.figures = {"missed": missed}
    return out


SCENARIOS: list[tuple[Any, dict[str, Any], dict[str, Any]]] = [
    (takeovers, {"rounds": 2}, {"rounds": 40}),
    (fork_pipeline, {"repeats": 1}, {"repeats": 20}),
]
