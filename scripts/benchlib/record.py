"""Section 7: the workers' own record of their stretches, and what it costs.

- transition: a change of category through sqlmon.Heartbeat (UPDATE of worker_status and
  INSERT of the closed stretch, one transaction) against raw sqlite3 running the same two
  statements in one transaction on the same file, and against sqlmon's plain beat (one UPDATE).
- day: a 24-hour run of 16 workers at 10 tasks/s each, built straight through sqlite3 with
  stretch_totals as the scheduler leaves them (the last second's stretches not yet folded):
  `sqlmon report` on it, and the record's bytes per million tasks.
- cycle: a scheduler cycle at 64 workers while 10 tasks/s per worker arrive as stretches.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from typing import Any

from sqlmon import Heartbeat, Scheduler, init_db

from .cycle import build as build_cycle
from .heartbeat import _summary, _time_each, raw_connection
from .postrun import _cli
from .sizes import Sizes
from .stats import median, quantile

CATEGORIES = ("VEHICLE_DETECT", "PLATE_DETECT")
RECORD = ("worker_stretches", "stretch_totals")


def measure_transition(db: str, sizes: Sizes) -> dict[str, Any]:
    moving = Heartbeat(db, "bench-transition", "gpu", min_interval=0.0)
    plain = Heartbeat(db, "bench-plain", "gpu", min_interval=0.0)
    moving.beat(CATEGORIES[0])
    plain.beat(CATEGORIES[0])
    # The very statements the heartbeat prepared, so that the baseline differs only in who
    # runs them: raw sqlite3, on a connection with the worker's pragmas.
    update_sql, stretch_sql = moving._update_sql, moving._stretch_sql
    raw = raw_connection(db)
    pid, started = os.getpid(), time.time()
    raw.execute(
        "INSERT INTO worker_status (worker_id, pid, host, pool, last_heartbeat, started_at)"
        " VALUES ('bench-raw', ?, ?, 'gpu', ?, ?)",
        (pid, socket.gethostname(), started, started),
    )
    since = [time.time()]

    def sqlmon_transition(i: int) -> None:
        moving.beat(CATEGORIES[i & 1])

    def raw_transition(i: int) -> None:
        now = time.time()
        raw.execute("BEGIN IMMEDIATE")
        raw.execute(
            update_sql, (CATEGORIES[i & 1], now, now, None, 0, 0, "bench-raw", pid, started)
        )
        raw.executemany(
            stretch_sql, [("bench-raw", pid, CATEGORIES[~i & 1], since[0], now, "ok", None)]
        )
        raw.execute("COMMIT")
        since[0] = now

    def sqlmon_plain(i: int) -> None:
        plain.beat(CATEGORIES[0])

    variants = {
        "sqlmon": sqlmon_transition,
        "sqlite3_raw": raw_transition,
        "sqlmon_plain_beat": sqlmon_plain,
    }
    samples: dict[str, list[int]] = {name: [] for name in variants}
    for fn in variants.values():
        for i in range(20):
            fn(i)
    names = list(variants)
    for r in range(sizes.beat_rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name] += _time_each(variants[name], sizes.beat_block, r * sizes.beat_block)
    out = {name: _summary(s) for name, s in samples.items()}
    assert moving.missed == 0 and plain.missed == 0
    moving.close()
    plain.close()
    raw.close()
    return out


def generate_day(path: str, hours: float, workers: int, rate: float) -> dict[str, Any]:
    """A run of `hours` where each worker does `rate` tasks/s (60 % busy), as stretches."""
    init_db(path)
    seconds = hours * 3600
    t0 = time.time() - seconds - 60
    period = 1.0 / rate
    host, pid = socket.gethostname(), os.getpid()
    cats = [f"CAT_{i}" for i in range(10)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")  # a file built once: no need to survive a crash
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO runs (run_id, started_at, ended_at, pid, host, config, end_reason)"
        " VALUES (1, ?, ?, ?, ?, ?, 'terminate')",
        (t0, t0 + seconds, pid, host, json.dumps({"interval": 1.0, "generated": True})),
    )
    totals: dict[tuple[str, str, str, str], list[float]] = {}
    n_tasks = int(seconds * rate)

    def rows() -> Any:
        # Worker after worker, as ids would interleave them in time; the totals add up here.
        for w in range(workers):
            wid = f"w{w:02d}"
            for k in range(n_tasks):
                a = t0 + k * period + w * 1e-4
                cat = cats[(k + w) % len(cats)]
                outcome = "failed" if k % 97 == 0 else "ok"
                for key, s, e in (
                    ((wid, cat, "busy", outcome), a, a + 0.6 * period),
                    ((wid, "", "idle", "ok"), a + 0.6 * period, a + period),
                ):
                    t = totals.get(key)
                    if t is None:
                        totals[key] = [1, e - s, s, e]
                    else:
                        t[0] += 1
                        t[1] += e - s
                        t[3] = e
                    yield (
                        wid,
                        pid,
                        key[1] or None,
                        s,
                        e,
                        key[3],
                        "ValueError" if key[3] == "failed" else None,
                    )

    conn.executemany(
        "INSERT INTO worker_stretches (worker_id, pid, category, started, ended, outcome, error)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    conn.executemany(
        "INSERT INTO stretch_totals VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*k, int(v[0]), v[1], v[2], v[3]) for k, v in totals.items()],
    )
    last_id = conn.execute("SELECT max(id) FROM worker_stretches").fetchone()[0]
    conn.executemany(
        "INSERT INTO snapshots (run_id, ts, cycle, workers_busy, workers_idle, workers_stale,"
        " workers_dead, backlog_pending, backlog_running, idle, cycle_seconds)"
        " VALUES (1, ?, ?, ?, ?, 0, 0, 100, ?, 0, 0.003)",
        ((t0 + c, c, workers * 6 // 10, workers * 4 // 10, workers) for c in range(int(seconds))),
    )
    conn.executemany(
        "INSERT INTO snapshot_counts VALUES (?, 'gpu', ?, 1, ?, 1)",
        (
            (c + 1, cat, (c * 7 + i) % 200)
            for c in range(int(seconds))
            for i, cat in enumerate(cats)
        ),
    )
    conn.executemany(
        "INSERT INTO worker_status (worker_id, pid, host, pool, category, category_since,"
        " last_heartbeat, started_at, exited_at) VALUES (?, ?, ?, 'gpu', NULL, ?, ?, ?, ?)",
        [
            (f"w{w:02d}", pid, host, t0 + seconds, t0 + seconds, t0, t0 + seconds)
            for w in range(workers)
        ],
    )
    # The scheduler folded all but the stretches of its last 10 s: the report adds those.
    unfolded = int(10 * rate * 2 * workers)
    conn.execute(
        "INSERT INTO scheduler_state (id, run_id, pid, host, interval, heartbeat, cycle, idle,"
        " not_idle_reason, stop_seen, folded_id) VALUES (1, 1, ?, ?, 1.0, ?, ?, 0,"
        " 'scheduler stopped (terminate)', 1, ?)",
        (pid, host, t0 + seconds, int(seconds), last_id - unfolded),
    )
    conn.execute("COMMIT")
    size = _bytes(conn, RECORD)
    conn.close()
    tasks = n_tasks * workers
    return {
        "hours": hours,
        "workers": workers,
        "tasks": tasks,
        "stretches": last_id,
        "record_bytes": size,
        "bytes_per_million_tasks": size / tasks * 1e6,
    }


def _bytes(conn: sqlite3.Connection, tables: tuple[str, ...]) -> int:
    marks = ",".join("?" * len(tables))
    owners = [
        r[0]
        for r in conn.execute(f"SELECT name FROM sqlite_master WHERE tbl_name IN ({marks})", tables)
    ]
    row = conn.execute(
        f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({','.join('?' * len(owners))})", owners
    ).fetchone()
    return int(row[0] or 0)


def time_cycles(path: str, steps: int, workers: int, rate: float) -> dict[str, Any]:
    """Scheduler cycles while each worker closes `rate` tasks a second (two stretches each)."""
    scheduler = Scheduler(path, log_level=logging.WARNING)
    writer = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    scheduler.open()
    clock = time.time()
    per_cycle = int(rate * 2)
    seconds = []
    try:
        for i in range(steps + 3):
            rows = []
            for w in range(workers):
                for k in range(per_cycle):
                    a = clock + k / per_cycle + w * 1e-5
                    rows.append((f"w{w}", 1, None if k % 2 else "OCR", a, a + 0.5 / per_cycle))
            clock += 1.0
            writer.execute("BEGIN IMMEDIATE")
            writer.executemany(
                "INSERT INTO worker_stretches (worker_id, pid, category, started, ended, outcome)"
                " VALUES (?, ?, ?, ?, ?, 'ok')",
                rows,
            )
            writer.execute("UPDATE worker_status SET last_heartbeat = ?", (time.time(),))
            writer.execute("COMMIT")
            t0 = time.perf_counter()
            scheduler.step()
            if i >= 3:
                seconds.append(time.perf_counter() - t0)
    finally:
        scheduler.close("benchmark done")
        writer.close()
    return {
        "median_ms": median(seconds) * 1e3,
        "p95_ms": quantile(seconds, 0.95) * 1e3,
        "cycles": len(seconds),
        "stretches_per_cycle": workers * per_cycle,
    }


def measure(workdir: str, sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hb_db = os.path.join(workdir, "transition.db")
    init_db(hb_db)
    out["transition"] = measure_transition(hb_db, sizes)
    day = os.path.join(workdir, "stretch-day.db")
    t0 = time.perf_counter()
    out["day"] = generate_day(day, sizes.record_hours, sizes.history_workers, 10.0)
    out["day"]["generate_s"] = time.perf_counter() - t0
    times, error = [], None
    for _ in range(sizes.cli_runs):
        s, error = _cli(day, "report")
        if error is not None:
            break
        times.append(s)
    out["day"]["report_s"] = median(times) if times and error is None else None
    out["day"]["report_error"] = error
    os.remove(day)
    cyc = os.path.join(workdir, "record-cycle.db")
    build_cycle(cyc, sizes.cycle_small, sizes.cycle_pending, sizes.cycle_workers)
    out["cycle"] = time_cycles(cyc, sizes.cycle_steps, sizes.cycle_workers, 10.0)
    out["cycle"]["workers"] = sizes.cycle_workers
    return out
