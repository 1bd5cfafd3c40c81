"""The live view on PostgreSQL: /metrics and /api/v1/status of `sqlmon serve` with the live
view section's data (64 workers, 1 M tasks with 10 k pending, a day of snapshots), written
on the server by generate_series, while a real scheduler cycles at 1 Hz. Timed exactly as on
SQLite (live.serve_and_time), so that the two compare in one run.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from sqlmon import identity

from . import postgres
from .cycle import POOLS
from .live import serve_and_time
from .sizes import Sizes

# As live._Beater: every worker row moves on, a few change category.
BEAT = (
    "UPDATE worker_status SET beats = beats + 1,"
    " last_heartbeat = EXTRACT(EPOCH FROM clock_timestamp())::float8,"
    " category = CASE WHEN (CAST(substr(worker_id, 2) AS INTEGER) + %s) %% 8 = 0"
    " THEN %s ELSE category END, category_since = EXTRACT(EPOCH FROM clock_timestamp())::float8"
)


def build(conn: Any, rows: int, pending: int, workers: int, hours: float) -> int:
    """live.build's and live.add_history's database, on the server; returns the snapshots."""
    cats, pools = list(POOLS), list(POOLS.values())
    now = time.time()
    done = rows - pending
    conn.execute(
        "INSERT INTO tasks (category, pool, status, created_at, finished_at, worker_id)"
        " SELECT c[1 + i %% 5], p[1 + i %% 5],"
        " CASE WHEN i < %(done)s THEN 'done' ELSE 'pending' END,"
        " CASE WHEN i < %(done)s THEN %(now)s - 86400 + i * 1e-3 ELSE %(now)s END,"
        " CASE WHEN i < %(done)s THEN %(now)s END,"
        " CASE WHEN i < %(done)s THEN 'w' || (i %% 64) END"
        " FROM generate_series(0, %(rows)s - 1) i, (SELECT %(c)s::text[] c, %(p)s::text[] p) k",
        {"done": done, "now": now, "rows": rows, "c": cats, "p": pools},
    )
    pid = os.getpid()
    conn.execute(
        "INSERT INTO worker_status (worker_id, pid, pid_start, host, pool, category,"
        " category_since, last_heartbeat, started_at, beats)"
        " SELECT 'w' || i, %(pid)s, %(start)s, %(host)s, p[1 + i %% 5],"
        " CASE WHEN i %% 2 = 1 THEN c[1 + i %% 5] END, %(now)s, %(now)s, %(now)s, 1"
        " FROM generate_series(0, %(n)s - 1) i, (SELECT %(c)s::text[] c, %(p)s::text[] p) k",
        {
            "pid": pid,
            "start": identity.start_time(pid),
            "host": socket.gethostname(),
            "now": now,
            "n": workers,
            "c": cats,
            "p": pools,
        },
    )
    cycles = int(hours * 3600)
    t0 = now - cycles - 60
    (run_id,) = conn.execute(
        "INSERT INTO runs (started_at, ended_at, pid, host, config, end_reason)"
        " VALUES (%s, %s, 1, 'bench', '{}', 'terminate') RETURNING run_id",
        (t0, t0 + cycles),
    ).fetchone()
    conn.execute(
        "INSERT INTO snapshots (run_id, ts, cycle, workers_busy, workers_idle, workers_stale,"
        " workers_dead, backlog_pending, backlog_running, idle, cycle_seconds)"
        " SELECT %(run)s, %(t0)s + c, c + 1, b, %(n)s - b, 0, 0,"
        " floor(random() * 10001)::int, b, 0, 0.004"
        " FROM (SELECT c, floor(random() * (%(n)s + 1))::int b"
        " FROM generate_series(0, %(cycles)s - 1) c) s",
        {"run": run_id, "t0": t0, "n": workers, "cycles": cycles},
    )
    conn.execute(
        "INSERT INTO snapshot_counts (snapshot_id, pool, category, busy, pending, running)"
        " SELECT s.id, k.pool, k.category, 1, floor(random() * 2001)::int, 1"
        " FROM snapshots s, unnest(%s::text[], %s::text[]) k(category, pool)"
        " WHERE s.run_id = %s",
        (cats, pools, run_id),
    )
    conn.execute("VACUUM ANALYZE")  # as autovacuum would have left a database of this age
    return cycles


def measure(workdir: str, sizes: Sizes) -> dict[str, Any]:
    why = postgres.unavailable()
    if why:
        return {"skipped": why}
    with postgres.fresh_database() as (server, url):
        name = url.split("@/")[1].split("?")[0]
        with server.connect(name) as conn:
            t0 = time.perf_counter()
            snapshots = build(
                conn,
                sizes.cycle_large,
                sizes.cycle_pending,
                sizes.cycle_workers,
                sizes.history_hours,
            )
            out: dict[str, Any] = {
                "tasks": sizes.cycle_large,
                "pending": sizes.cycle_pending,
                "workers": sizes.cycle_workers,
                "snapshots": snapshots,
                "build_s": time.perf_counter() - t0,
            }
            n = [0]

            def beat() -> None:
                n[0] += 1
                conn.execute(BEAT, (n[0], list(POOLS)[n[0] % 5]))

            out.update(serve_and_time(url, beat, sizes))
    return out


def render(r: dict[str, Any], sqlite: dict[str, Any] | None) -> str:
    if "skipped" in r:
        return f"PostgreSQL live view: skipped, {r['skipped']}"
    lines = []
    for name, path in (("metrics", "/metrics"), ("status", "/api/v1/status")):
        v = r[name]
        base = (sqlite or {}).get(name)
        vs = f"; SQLite in this run p99 {base['p99_ms']:.1f} ms" if base else ""
        lines.append(
            f"PostgreSQL live view {path}, {r['tasks']:,} tasks ({r['pending']:,} pending),"
            f" {r['workers']} workers, {r['snapshots']:,} snapshots: median"
            f" {v['median_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms (target <= 100), max"
            f" {v['max_ms']:.1f} ms, {v['statements_per_request']:.0f} statements,"
            f" {v['bytes']:,} bytes{vs}"
        )
    return "\n".join(lines)
