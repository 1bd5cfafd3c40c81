"""Section 4: what one scheduler cycle costs, with a small and a large task table.

Both tables hold the same pending backlog; the large one adds finished tasks, which must not
make a cycle dearer. 64 worker rows beat between cycles, as live workers would. The cycle is
timed one step at a time in this process, then a real Scheduler process runs at 1 Hz for its
CPU share and RSS.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import sqlite3
import time
from typing import Any

from sqlmon import Scheduler, identity, init_db

from .sizes import Sizes
from .stats import median, quantile

POOLS = {
    "VEHICLE_DETECT": "gpu",
    "PLATE_DETECT": "gpu",
    "OCR": "gpu",
    "PLATE_SMOOTH": "cpu",
    "SUMMARY": "cpu",
}


def build(path: str, rows: int, pending: int, workers: int) -> None:
    """A database with `rows` tasks, `pending` of them pending, and `workers` worker rows."""
    init_db(path)
    cats = list(POOLS)
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    done = rows - pending

    def task(i: int) -> tuple[Any, ...]:
        cat = cats[i % len(cats)]
        if i < done:
            return (cat, POOLS[cat], "done", now - 86400 + i * 1e-3, now, f"w{i % 64}")
        return (cat, POOLS[cat], "pending", now, None, None)

    conn.executemany(
        "INSERT INTO tasks (category, pool, status, created_at, finished_at, worker_id)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (task(i) for i in range(rows)),
    )
    pid = os.getpid()
    conn.executemany(
        "INSERT INTO worker_status (worker_id, pid, pid_start, host, pool, category,"
        " category_since, last_heartbeat, started_at, beats) VALUES (?,?,?,?,?,?,?,?,?,1)",
        [
            (
                f"w{i}",
                pid,
                identity.start_time(pid),
                socket.gethostname(),
                POOLS[cats[i % 5]],
                cats[i % 5] if i % 2 else None,
                now,
                now,
                now,
            )
            for i in range(workers)
        ],
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


class _Beater:
    """Moves every worker row on, and changes a few categories, as live workers do."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self.n = 0

    def beat(self) -> None:
        self.n += 1
        now = time.time()
        cats = list(POOLS)
        self.conn.execute(
            "UPDATE worker_status SET beats = beats + 1, last_heartbeat = ?,"
            " category = CASE WHEN (CAST(substr(worker_id, 2) AS INTEGER) + ?) % 8 = 0"
            " THEN ? ELSE category END, category_since = ?",
            (now, self.n, cats[self.n % 5], now),
        )

    def close(self) -> None:
        self.conn.close()


def time_cycles(path: str, steps: int) -> dict[str, Any]:
    scheduler = Scheduler(path, log_level=logging.WARNING)
    beater = _Beater(path)
    scheduler.open()
    seconds = []
    try:
        for i in range(steps + 3):
            beater.beat()
            t0 = time.perf_counter()
            scheduler.step()
            if i >= 3:  # the first cycles see every worker join
                seconds.append(time.perf_counter() - t0)
    finally:
        scheduler.close("benchmark done")
        beater.close()
    return {
        "median_ms": median(seconds) * 1e3,
        "p95_ms": quantile(seconds, 0.95) * 1e3,
        "cycles": len(seconds),
    }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_at_1hz(path: str, seconds: float, warmup: float) -> dict[str, Any]:
    """CPU share of one core and RSS of a real Scheduler process cycling at 1 Hz."""
    if not os.path.exists("/proc/self/stat"):
        return {"cpu_share": None, "rss_mb": None}
    ctx = multiprocessing.get_context("spawn")
    terminate = ctx.Event()
    scheduler = Scheduler(
        path, terminate=terminate, interval=1.0, log_level=logging.WARNING, start_method="spawn"
    )
    beater = _Beater(path)
    scheduler.start()
    assert scheduler.pid is not None
    try:
        warm_until = time.monotonic() + warmup  # interpreter start-up, the first cycles
        while time.monotonic() < warm_until:
            beater.beat()
            time.sleep(0.25)
        cpu0, t0 = _cpu_seconds(scheduler.pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            beater.beat()
            time.sleep(0.25)
        cpu1, t1 = _cpu_seconds(scheduler.pid), time.monotonic()
        rss = _rss_mb(scheduler.pid)
    finally:
        terminate.set()
        scheduler.join(30)
        beater.close()
    return {"cpu_share": (cpu1 - cpu0) / (t1 - t0), "rss_mb": rss, "seconds": t1 - t0}


def measure(workdir: str, sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": sizes.cycle_workers, "pending": sizes.cycle_pending}
    for label, rows in (("small", sizes.cycle_small), ("large", sizes.cycle_large)):
        path = os.path.join(workdir, f"cycle-{label}.db")
        t0 = time.perf_counter()
        build(path, rows, sizes.cycle_pending, sizes.cycle_workers)
        built = time.perf_counter() - t0
        result = time_cycles(path, sizes.cycle_steps)
        result.update(cpu_at_1hz(path, sizes.cycle_cpu_s, sizes.cycle_warmup_s))
        result.update(rows=rows, build_s=built)
        out[label] = result
    return out
