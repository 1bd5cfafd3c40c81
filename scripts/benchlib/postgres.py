"""The PostgreSQL column: what a beat costs through sqlmon against a raw psycopg statement that
does the same work on the same server, how many beats are HOT updates, and the WAL a beat
writes.

A throwaway cluster (tests/pg.py's, here with fsync on) over a
Unix socket. Variants run in interleaved rounds on one row each, as for SQLite:
- beat: a plain beat (same category; min_interval 0 so that each call writes), asynchronous
  commit; raw: the same UPDATE with synchronous_commit off for the session.
- transition: a category change, the UPDATE plus the closed stretch in one statement,
  synchronous commit; raw: the same statement by hand.
- beat, synchronous: the raw plain beat with synchronous_commit on, for the choice's price.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlmon import Heartbeat, init_db

from .sizes import Sizes
from .stats import median, quantile, ratio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
# What a beat says: its category, the server's clock, its connection and its clock's skew.
RAW_BEAT = (
    "UPDATE worker_status SET category = %s, category_since = %s,"
    f" last_heartbeat = {NOW},"
    " exited_at = NULL, missed = 0, lost = 0, beats = beats + 1,"
    f" backend = %s, clock_skew = %s - {NOW}"
    " WHERE worker_id = %s AND pid = %s AND started_at = %s"
)
# ... with the stretch it closed, inserted while the row is the process's own.
RAW_TRANSITION = (
    "WITH closed AS (INSERT INTO worker_stretches"
    " (worker_id, pid, category, started, ended, outcome, error)"
    " SELECT %s, %s, %s, %s, %s, 'ok', NULL WHERE EXISTS (SELECT 1 FROM worker_status"
    " WHERE worker_id = %s AND pid = %s AND started_at = %s)"
    " ON CONFLICT (worker_id, started) DO NOTHING) " + RAW_BEAT
)


def unavailable() -> str | None:
    """Why this machine cannot run the PostgreSQL sections, or None when it can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (uv sync, or pip install 'sqlmon[postgresql]')"
    from tests import pg  # the tests' throwaway cluster

    if pg.server_bin() is None:
        return "no PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)"
    return None


@contextmanager
def fresh_database(settings: dict[str, str] | None = None) -> Iterator[tuple[Any, str]]:
    """A throwaway cluster with fsync on (and `settings`), and the URL of an initialised
    database on it: (server, url)."""
    from tests import pg

    with pg.cluster(fsync=True, settings=settings) as server:  # in /tmp: postgres must reach it
        url = server.url(pg.Databases(server).create(initialised=False))
        init_db(url)
        yield server, url


def measure(workdir: str, sizes: Sizes) -> dict[str, Any]:
    why = unavailable()
    if why:
        return {"skipped": why}
    with fresh_database() as (server, url):
        return _measure(server, url, sizes)


def _measure(server: Any, url: str, sizes: Sizes) -> dict[str, Any]:
    rounds, block = sizes.beat_rounds, sizes.beat_block
    name = url.split("@/")[1].split("?")[0]
    hb = Heartbeat(url, "sqlmon", "cpu", min_interval=0.0)
    hb.beat("A")
    raw = server.connect(name)
    raw.execute("SET synchronous_commit = off")
    pid, started = os.getpid(), time.time()
    raw.execute(
        "INSERT INTO worker_status (worker_id, pid, host, pool, category, category_since,"
        " last_heartbeat, started_at) VALUES ('raw', %s, 'h', 'cpu', 'A', 0, 0, %s)",
        (pid, started),
    )
    sync = server.connect(name)
    sync.execute(
        "INSERT INTO worker_status (worker_id, pid, host, pool, category, category_since,"
        " last_heartbeat, started_at) VALUES ('sync', %s, 'h', 'cpu', 'A', 0, 0, %s)",
        (pid, started),
    )
    at = [1000.0]

    def raw_beat(_i: int) -> None:
        raw.execute(RAW_BEAT, ("A", 0.0, "1@0.0", time.time(), "raw", pid, started))

    def sync_beat(_i: int) -> None:
        sync.execute(RAW_BEAT, ("A", 0.0, "1@0.0", time.time(), "sync", pid, started))

    def raw_transition(i: int) -> None:
        at[0] += 1.0
        own = ("raw", pid, started)
        raw.execute(
            RAW_TRANSITION,
            ("raw", pid, "AB"[i % 2], at[0] - 1.0, at[0], *own)
            + ("BA"[i % 2], at[0], "1@0.0", time.time(), *own),
        )

    def sqlmon_beat(_i: int) -> None:
        hb.beat(hb._category)

    def sqlmon_transition(i: int) -> None:
        hb.beat("BA"[i % 2])

    variants = {
        "sqlmon_beat": sqlmon_beat,
        "raw_beat": raw_beat,
        "raw_beat_synchronous": sync_beat,
        "sqlmon_transition": sqlmon_transition,
        "raw_transition": raw_transition,
    }
    samples: dict[str, list[int]] = {k: [] for k in variants}
    raw.execute("SET synchronous_commit = on")  # transitions are synchronous in sqlmon too
    for r in range(rounds):
        for key, fn in variants.items():
            if key == "raw_beat":
                raw.execute("SET synchronous_commit = off")
            if key == "raw_transition":
                raw.execute("SET synchronous_commit = on")
            samples[key] += _time_each(fn, block, r * block)
    out: dict[str, Any] = {
        k: {"median_us": median(v) / 1e3, "p99_us": quantile(v, 0.99) / 1e3, "n": len(v)}
        for k, v in samples.items()
    }
    out["beat_ratio"] = ratio(out["sqlmon_beat"]["median_us"], out["raw_beat"]["median_us"])
    out["transition_ratio"] = ratio(
        out["sqlmon_transition"]["median_us"], out["raw_transition"]["median_us"]
    )
    out["asynchronous_speedup"] = ratio(
        out["raw_beat_synchronous"]["median_us"], out["raw_beat"]["median_us"]
    )
    out.update(_wal_and_hot(server, name, hb, rounds * block))
    hb.close()
    raw.close()
    sync.close()
    return out


def _wal_and_hot(server: Any, name: str, hb: Heartbeat, n: int) -> dict[str, Any]:
    """WAL bytes per plain beat and per transition, each measured alone; the HOT share of
    every update of worker_status (the stats reach the view when a backend flushes them)."""
    look = server.connect(name)

    def lsn() -> str:
        return str(look.execute("SELECT pg_current_wal_lsn()").fetchone()[0])

    def wal_since(start: str) -> int:
        return int(
            look.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()[0]
        )

    start = lsn()
    for _ in range(n):
        hb.beat(hb._category)
    beat_wal = wal_since(start) / n
    start = lsn()
    for i in range(n):
        hb.beat("AB"[i % 2])
    transition_wal = wal_since(start) / n
    hb._close_connection()  # its backend ends and flushes its table statistics
    time.sleep(1.5)
    upd, hot = look.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'worker_status'"
    ).fetchone()
    look.close()
    return {
        "wal_bytes_per_beat": beat_wal,
        "wal_bytes_per_transition": transition_wal,
        "worker_status_updates": upd,
        "hot_share": hot / upd if upd else None,
    }


def _time_each(fn: Any, n: int, start: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for i in range(start, start + n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def render(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"PostgreSQL: skipped, {r['skipped']}"
    lines = ["", "PostgreSQL (a throwaway local cluster, fsync on, Unix socket):"]
    for k in (
        "sqlmon_beat",
        "raw_beat",
        "raw_beat_synchronous",
        "sqlmon_transition",
        "raw_transition",
    ):
        lines.append(f"  {k:22} median {r[k]['median_us']:7.1f} us  p99 {r[k]['p99_us']:8.1f} us")
    lines.append(
        f"  beat: sqlmon / raw {r['beat_ratio']:.3f} (target <= 1.15); "
        f"transition: {r['transition_ratio']:.3f}; "
        f"synchronous / asynchronous beat {r['asynchronous_speedup']:.2f}"
    )
    lines.append(
        f"  HOT updates {r['hot_share']:.1%} of {r['worker_status_updates']} "
        f"(target >= 95 %); WAL per beat {r['wal_bytes_per_beat']:.0f} B, "
        f"per transition {r['wal_bytes_per_transition']:.0f} B"
    )
    return "\n".join(lines)
