"""Section 6: the post-run commands on a long run's history, and what that history weighs.

The generator writes what a scheduler at 1 Hz writes (a snapshot and its counts per cycle, the
workers' transitions as events, the idle row) plus the tasks finished, straight through sqlite3
so that 24 hours take seconds rather than a day.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any

from sqlmon import init_db

from .sizes import Sizes
from .stats import median

HISTORY = ("runs", "snapshots", "snapshot_counts", "worker_events")


def generate(
    path: str, hours: float, workers: int, categories: int, seed: int = 4
) -> dict[str, Any]:
    init_db(path)
    rng = random.Random(seed)
    cats = [f"CAT_{i}" for i in range(categories)]
    pool_of = {c: ("gpu" if i < categories // 2 else "cpu") for i, c in enumerate(cats)}
    cycles = int(hours * 3600)
    t0 = time.time() - cycles - 60
    host, pid = socket.gethostname(), os.getpid()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO runs (run_id, started_at, ended_at, pid, host, config, end_reason)"
        " VALUES (1, ?, ?, ?, ?, ?, 'terminate')",
        (t0, t0 + cycles, pid, host, json.dumps({"interval": 1.0, "generated": True})),
    )
    # Each worker alternates busy stretches (5-30 s, one task each) and idle gaps (0.5-5 s).
    events, tasks = [], []
    holding: list[list[str | None]] = []  # per cycle, per worker: the category held
    for w in range(workers):
        wid = f"w{w:02d}"
        held: list[str | None] = [None] * cycles
        events.append((1, t0, wid, "joined", None, pid, "generated"))
        t = rng.uniform(0, 5)
        while t < cycles - 1:
            cat = rng.choice(cats)
            busy = rng.uniform(5, 30)
            end = min(t + busy, cycles - 1)
            events.append((1, t0 + t, wid, "busy", cat, pid, None))
            for c in range(int(t), int(end)):
                held[c] = cat
            tasks.append((cat, pool_of[cat], "done", t0 + t - 1, t0 + t, t0 + end, wid))
            t = end
            if t >= cycles - 1:
                break
            events.append((1, t0 + t, wid, "idle", None, pid, None))
            t += rng.uniform(0.5, 5)
        events.append((1, t0 + cycles - 0.5, wid, "exited", None, pid, None))
        holding.append(held)
    events.sort(key=lambda e: e[1])
    conn.executemany(
        "INSERT INTO worker_events (run_id, ts, worker_id, event, category, pid, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        events,
    )
    conn.executemany(
        "INSERT INTO tasks (category, pool, status, created_at, started_at, finished_at,"
        " worker_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        tasks,
    )
    backlog = {c: rng.randint(0, 200) for c in cats}

    def snapshot_rows() -> Any:
        for c in range(cycles):
            busy = sum(1 for w in range(workers) if holding[w][c] is not None)
            for cat in cats:  # the backlog drifts
                backlog[cat] = max(0, backlog[cat] + rng.randint(-3, 3))
            pending = sum(backlog.values())
            yield (
                c + 1,
                1,
                t0 + c,
                c + 1,
                busy,
                workers - busy,
                0,
                0,
                pending,
                busy,
                0,
                rng.uniform(0.002, 0.006),
                0,
                0,
            )

    conn.executemany(
        "INSERT INTO snapshots (id, run_id, ts, cycle, workers_busy, workers_idle,"
        " workers_stale, workers_dead, backlog_pending, backlog_running, idle, cycle_seconds,"
        " writes_skipped, late) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        snapshot_rows(),
    )

    def count_rows() -> Any:
        for c in range(cycles):
            busy = {cat: 0 for cat in cats}
            for w in range(workers):
                if holding[w][c] is not None:
                    busy[holding[w][c]] += 1  # type: ignore[index]
            for cat in cats:
                yield (c + 1, pool_of[cat], cat, busy[cat], rng.randint(0, 200), busy[cat])

    conn.executemany(
        "INSERT INTO snapshot_counts (snapshot_id, pool, category, busy, pending, running)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        count_rows(),
    )
    conn.executemany(
        "INSERT INTO worker_status (worker_id, pid, pid_start, host, pool, category,"
        " category_since, last_heartbeat, started_at, beats, exited_at)"
        " VALUES (?, ?, NULL, ?, ?, NULL, ?, ?, ?, ?, ?)",
        [
            (
                f"w{w:02d}",
                pid,
                host,
                "gpu" if w % 2 else "cpu",
                t0,
                t0 + cycles - 1,
                t0,
                cycles * 2,
                t0 + cycles - 0.5,
            )
            for w in range(workers)
        ],
    )
    conn.execute(
        "INSERT INTO scheduler_state (id, run_id, pid, host, interval, heartbeat, cycle, idle,"
        " not_idle_reason, stop_seen) VALUES (1, 1, ?, ?, 1.0, ?, ?, 0,"
        " 'scheduler stopped (terminate)', 1)",
        (pid, host, t0 + cycles, cycles),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = history_bytes(conn)
    conn.close()
    return {
        "hours": hours,
        "snapshots": cycles,
        "events": len(events),
        "tasks": len(tasks),
        "workers": workers,
        "categories": categories,
        "history_bytes": size,
        "history_mb_per_hour": size / 2**20 / hours,
    }


def history_bytes(conn: sqlite3.Connection) -> int:
    """Pages used by the history tables and their indexes (dbstat), not the task table."""
    names = ",".join("?" * len(HISTORY))
    owners = [
        r[0]
        for r in conn.execute(
            f"SELECT name FROM sqlite_master WHERE tbl_name IN ({names})", HISTORY
        )
    ]
    marks = ",".join("?" * len(owners))
    row = conn.execute(f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({marks})", owners).fetchone()
    return int(row[0] or 0)


def _cli(db: str, command: str) -> tuple[float, str | None]:
    exe = os.path.join(os.path.dirname(sys.executable), "sqlmon")
    t0 = time.perf_counter()
    out = subprocess.run([exe, command, db], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        return seconds, (out.stderr.strip().splitlines() or ["?"])[-1]
    return seconds, None


def measure(workdir: str, sizes: Sizes) -> dict[str, Any]:
    db = os.path.join(workdir, "day.db")
    t0 = time.perf_counter()
    result = generate(db, sizes.history_hours, sizes.history_workers, sizes.history_categories)
    result["generate_s"] = time.perf_counter() - t0
    for command in ("report", "status"):
        times, error = [], None
        for _ in range(sizes.cli_runs):
            seconds, error = _cli(db, command)
            if error is not None:
                break
            times.append(seconds)
        result[f"{command}_s"] = median(times) if times and error is None else None
        result[f"{command}_error"] = error
    return result
