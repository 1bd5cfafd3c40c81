"""Section 7: the live view. /metrics and /api/v1/status of `sqlmon serve` with 64 workers,
1 M tasks (10 k pending) and a day of snapshots, while a real scheduler cycles at 1 Hz.

The server runs in a thread of this process (so that its SQL statements can be counted) and
is asked one request at a time over a kept-alive connection, as Prometheus and the page do.
"""

from __future__ import annotations

import http.client
import logging
import multiprocessing
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlmon import Scheduler

from .cycle import POOLS, _Beater, build
from .sizes import Sizes
from .stats import median, quantile

PATHS = {"metrics": "/metrics", "status": "/api/v1/status"}


def add_history(path: str, hours: float, workers: int, seed: int = 7) -> int:
    """An ended run of `hours` at 1 Hz: a snapshot and its counts per cycle."""
    rng = random.Random(seed)
    cycles = int(hours * 3600)
    t0 = time.time() - cycles - 60
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO runs (started_at, ended_at, pid, host, config, end_reason)"
        " VALUES (?, ?, 1, 'bench', '{}', 'terminate')",
        (t0, t0 + cycles),
    )
    run_id = conn.execute("SELECT max(run_id) FROM runs").fetchone()[0]
    conn.executemany(
        "INSERT INTO snapshots (run_id, ts, cycle, workers_busy, workers_idle, workers_stale,"
        " workers_dead, backlog_pending, backlog_running, idle, cycle_seconds)"
        " VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?, 0, 0.004)",
        (
            (run_id, t0 + c, c + 1, b, workers - b, rng.randint(0, 10_000), b)
            for c in range(cycles)
            for b in (rng.randint(0, workers),)
        ),
    )
    first = conn.execute("SELECT min(id) FROM snapshots WHERE run_id = ?", (run_id,)).fetchone()[0]
    conn.executemany(
        "INSERT INTO snapshot_counts (snapshot_id, pool, category, busy, pending, running)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            (first + c, pool, cat, 1, rng.randint(0, 2000), 1)
            for c in range(cycles)
            for cat, pool in POOLS.items()
        ),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return cycles


def _timed(conn: http.client.HTTPConnection, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        out.append(time.perf_counter() - t0)
        assert r.status == 200 and body, (path, r.status)
    return out


def measure(workdir: str, sizes: Sizes) -> dict[str, Any]:
    path = os.path.join(workdir, "live.db")
    t0 = time.perf_counter()
    build(path, sizes.cycle_large, sizes.cycle_pending, sizes.cycle_workers)
    snapshots = add_history(path, sizes.history_hours, sizes.cycle_workers)
    out: dict[str, Any] = {
        "tasks": sizes.cycle_large,
        "pending": sizes.cycle_pending,
        "workers": sizes.cycle_workers,
        "snapshots": snapshots,
        "build_s": time.perf_counter() - t0,
    }
    beater = _Beater(path)
    try:
        out.update(serve_and_time(path, beater.beat, sizes))
    finally:
        beater.close()
    return out


def serve_and_time(db: str, beat: Callable[[], None], sizes: Sizes) -> dict[str, Any]:
    """Each endpoint of a `sqlmon serve` on `db`, timed while a real Scheduler cycles at 1 Hz
    and `beat` moves the worker rows on between rounds of requests."""
    from sqlmon.serve import SqlmonServer

    ctx = multiprocessing.get_context("spawn")
    terminate = ctx.Event()
    scheduler = Scheduler(
        db, terminate=terminate, interval=1.0, log_level=logging.WARNING, start_method="spawn"
    )
    scheduler.start()
    server = SqlmonServer(db, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out: dict[str, Any] = {}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        deadline = time.monotonic() + 60  # the scheduler's first cycle, in its own process
        while b"sqlmon_scheduler_cycles_total" not in _get(conn, "/metrics"):
            if time.monotonic() > deadline:
                raise RuntimeError("the scheduler wrote no cycle within 60 s")
            beat()
            time.sleep(0.25)
        for name, url in PATHS.items():
            _timed(conn, url, 10)  # warm: the engine, the static caches
            samples: list[float] = []
            statements = 0
            rounds = max(1, sizes.live_requests // 50)
            for _ in range(rounds):  # beats between rounds: the scheduler keeps writing
                beat()
                before = server.source.statements
                samples += _timed(conn, url, 50)
                statements += server.source.statements - before
            out[name] = {
                "requests": len(samples),
                "median_ms": median(samples) * 1e3,
                "p99_ms": quantile(samples, 0.99) * 1e3,
                "max_ms": max(samples) * 1e3,
                "statements_per_request": statements / len(samples),
                "bytes": len(_get(conn, url)),
            }
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        terminate.set()
        scheduler.join(30)
    return out


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    return conn.getresponse().read()
