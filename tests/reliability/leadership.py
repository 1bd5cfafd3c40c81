"""Scenarios for one truth about liveness: takeovers after kills and pauses of the active
scheduler, and the pipeline that forks its scheduler after using a Heartbeat in the parent.

Each takeover round kills (SIGKILL) or pauses (SIGSTOP past its lease, then SIGCONT) the
active scheduler while a standby waits; ground truth is what the driver did and saw: the term
must rise by one per round, the idle row must never go back to an older run, the paused one
must step down, and no idle verdict may appear while the driver's tasks are pending. A pause
inside the write transaction keeps the idle row locked: the standby must outlast it.

Both run on SQLite and on PostgreSQL (`backend`).
"""

from __future__ import annotations

import multiprocessing
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlmon import Heartbeat, Scheduler, is_idle

from .harness import (
    SQLITE,
    Backend,
    Outcome,
    check_database,
    connect,
    is_pg,
    sql,
    titled,
    wait_for,
    write_lock_held,
)


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


LEASE = 2.1  # s: a scheduler at interval 0.1 s holds the lease max(3 x 0.1, 0.1 + 2) s
ROUNDS = ("kill", "pause", "pause inside its write")
TRIED = {"kill": "kills", "pause": "pauses", "pause inside its write": "pauses inside its write"}


def _stop_inside_write(proc: subprocess.Popen[str], db: str, tries: int = 400) -> int:
    """SIGSTOP `proc` until it is caught inside its write transaction: the attempts it took,
    or 0 (and running) when `tries` did not catch it. Its write is a sliver of each cycle."""
    for attempt in range(1, tries + 1):
        proc.send_signal(signal.SIGSTOP)
        if write_lock_held(db):
            return attempt
        proc.send_signal(signal.SIGCONT)
        time.sleep(random.uniform(0, 0.02))
    return 0


def _stop_outside_write(proc: subprocess.Popen[str], db: str) -> None:
    """SIGSTOP `proc` at a moment when it holds no write lock (see _stop_inside_write)."""
    while True:
        proc.send_signal(signal.SIGSTOP)
        if not write_lock_held(db):
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(random.uniform(0, 0.1))


def _ended(proc: subprocess.Popen[str], timeout: float = 30.0) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def takeovers(tmp: Path, rounds: int = 3, backend: Backend = SQLITE) -> Outcome:
    """Rounds of a kill of the active scheduler, a pause past its lease, and a pause inside its
    write transaction, which keeps the idle row locked. On SQLite nobody can write during that
    pause (the paused one holds the write lock): the standby keeps standing by, and once the
    paused one resumes exactly one of them leads. On PostgreSQL the server ends the paused
    session after the scheduler's idle-in-transaction timeout: the standby takes over while
    the other is still stopped, and that one, resumed, steps down."""
    db = backend.database(tmp)
    with connect(db) as conn:
        conn.execute(
            "INSERT INTO tasks (category, pool, status, created_at) "
            "VALUES ('OCR', 'gpu', 'pending', 0)"
        )
    out = Outcome(titled("takeovers", backend))
    leader = _run(db, "--stale-after", "2", "--warn-after", "2")
    procs = [leader]
    tried = dict.fromkeys(ROUNDS, 0)
    stops: list[int] = []  # attempts to catch it inside its write
    false_idles = regressions = 0
    seen: list[tuple[int, int, int]] = []

    def watch(until: Any, guard: float = 60.0) -> None:
        end = time.monotonic() + guard
        while not until() and time.monotonic() < end:
            nonlocal false_idles
            seen.append(_holder(db))
            false_idles += is_idle(db)
            time.sleep(0.02)

    try:
        if not wait_for(lambda: _holder(db)[2] == leader.pid, 60):
            out.problems.append("the first scheduler never started")
            return out
        for n in range(rounds):
            kind = ROUNDS[n % len(ROUNDS)]
            standby = _run(db, "--standby")
            procs.append(standby)
            time.sleep(0.5)
            term = _holder(db)[1]
            if kind == "kill":
                leader.kill()
            elif kind == "pause":
                _stop_outside_write(leader, db)
            elif attempts := _stop_inside_write(leader, db):
                stops.append(attempts)
            else:
                out.figures["pauses inside its write not caught"] = (
                    out.figures.get("pauses inside its write not caught", 0) + 1
                )
                standby.terminate()
                out.expect(_ended(standby) == 0, f"round {n}: the standby did not stop")
                continue
            tried[kind] += 1
            if kind == "pause inside its write" and is_pg(db):
                # The server ends a scheduler's session that sits inside a transaction, which
                # lets the idle row go: the standby takes over while the other is still
                # stopped, and that one, resumed, finds its lease gone and steps down.
                watch(lambda s=standby: _holder(db)[2] == s.pid)
                out.expect(_holder(db)[2] == standby.pid, f"round {n}: the standby never took over")
                out.expect(_holder(db)[1] == term + 1, f"round {n}: term {_holder(db)[1]}")
                leader.send_signal(signal.SIGCONT)
                code = _ended(leader)
                out.expect(code == 0, f"round {n}: the resumed one did not step down ({code})")
                watch(lambda: False, guard=0.2)
                leader = standby
                continue
            if kind == "pause inside its write":
                # On SQLite the paused one holds the write lock itself: nobody can write.
                watch(lambda: False, guard=LEASE + 0.5)
                out.expect(
                    standby.poll() is None,
                    f"round {n}: the standby ended ({standby.poll()}) while the paused"
                    " scheduler held the idle row",
                )
                leader.send_signal(signal.SIGCONT)
                # The resumed write renews a lease that has run out by then: whichever of the
                # two writes next leads, and the other steps down or stands by.
                watch(lambda s=standby: _holder(db)[2] == s.pid, guard=1.5)
                if _holder(db)[2] == standby.pid:
                    out.expect(_holder(db)[1] == term + 1, f"round {n}: term {_holder(db)[1]}")
                    code = _ended(leader)
                    out.expect(code == 0, f"round {n}: the resumed one did not step down ({code})")
                    leader = standby
                else:
                    out.expect(_holder(db)[1:] == (term, leader.pid), f"round {n}: {_holder(db)}")
                    standby.terminate()
                    code = _ended(standby)
                    out.expect(code == 0, f"round {n}: the standby did not stop ({code})")
                watch(lambda: False, guard=0.2)
                continue
            watch(lambda s=standby: _holder(db)[2] == s.pid)
            out.expect(_holder(db)[2] == standby.pid, f"round {n}: the standby never took over")
            out.expect(
                _holder(db)[1] == term + 1, f"round {n}: term {_holder(db)[1]}, not {term + 1}"
            )
            if kind == "pause":
                leader.send_signal(signal.SIGCONT)
                code = _ended(leader)
                out.expect(code == 0, f"round {n}: the paused scheduler did not step down ({code})")
            watch(lambda: False, guard=0.2)
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
    out.tried = {TRIED[k]: v for k, v in tried.items()}
    out.figures.update({"samples": len(seen), "runs": sql(db, "SELECT count(*) FROM runs")[0][0]})
    if stops:
        out.figures["stop attempts (most)"] = max(stops)
    return out


def fork_pipeline(tmp: Path, repeats: int = 1, backend: Backend = SQLITE) -> Outcome:
    """The pipeline that used a Heartbeat in its main process, started its scheduler, then
    closed that Heartbeat while the scheduler and workers ran; under each start method."""
    out = Outcome(titled("fork pipeline", backend))
    missed = 0
    for n in range(repeats):
        for method in ("fork", "spawn", "forkserver"):
            db = backend.database(tmp / f"{n}-{method}")
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
    (takeovers, {"rounds": 3}, {"rounds": 60}),
    (fork_pipeline, {"repeats": 1}, {"repeats": 20}),
]
