"""Sections 1 and 2: what one heartbeat costs the worker that sends it.

A write (the category changed: the status row and the stretch it closed) through sqlmon,
through the raw sqlite3 module doing the same on the same tables of the same file with the same
pragmas (the floor any SQLite heartbeat stands on), into a
Manager dict served by another process, and to Redis the way RQ beats. Then a coalesced beat.
Variants run in interleaved rounds, so that a slow patch of the machine hits all of them.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from sqlmon import Heartbeat, config

from .redisserver import redis_server
from .sizes import Sizes
from .stats import median, quantile

CATEGORIES = ("VEHICLE_DETECT", "PLATE_DETECT")

# The upsert a careful engineer writes by hand: the same row, only what changes is set.
RAW_UPSERT = (
    "INSERT INTO worker_status (worker_id, pid, pid_start, host, pool, category,"
    " category_since, last_heartbeat, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (worker_id) DO UPDATE SET category = excluded.category,"
    " category_since = excluded.category_since, last_heartbeat = excluded.last_heartbeat,"
    " beats = beats + 1"
)


# And the stretch a change of category closes, as a careful engineer records it by hand.
RAW_STRETCH = (
    "INSERT INTO worker_stretches (worker_id, pid, category, started, ended, outcome)"
    " VALUES (?, ?, ?, ?, ?, 'ok')"
)


def raw_connection(path: str) -> sqlite3.Connection:
    """sqlite3 with the pragmas sqlmon gives a worker connection (db.py), in autocommit."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=config.WORKER_BUSY_TIMEOUT)
    conn.execute(f"PRAGMA busy_timeout = {int(config.WORKER_BUSY_TIMEOUT * 1000)}")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {config.WORKER_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {config.JOURNAL_SIZE_LIMIT_BYTES}")
    return conn


def _time_each(fn: Callable[[int], Any], n: int, start: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for i in range(start, start + n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def _summary(samples: list[int]) -> dict[str, float]:
    return {
        "median_us": median(samples) / 1e3,
        "p99_us": quantile(samples, 0.99) / 1e3,
        "samples": len(samples),
    }


def measure_writes(db: str, workdir: str, sizes: Sizes) -> dict[str, Any]:
    host, pid = socket.gethostname(), os.getpid()
    started = time.time()
    hb = Heartbeat(db, "bench-sqlmon", "gpu")
    raw = raw_connection(db)

    def sqlmon_beat(i: int) -> None:
        hb.beat(CATEGORIES[i & 1])

    since = [started]

    def raw_beat(i: int) -> None:
        # The same work as a change of category through sqlmon: the status row and the
        # stretch the change closed, in one transaction.
        now = time.time()
        raw.execute("BEGIN IMMEDIATE")
        raw.execute(
            RAW_UPSERT,
            ("bench-raw", pid, started, host, "gpu", CATEGORIES[i & 1], now, now, started),
        )
        raw.execute(RAW_STRETCH, ("bench-raw", pid, CATEGORIES[~i & 1], since[0], now))
        raw.execute("COMMIT")
        since[0] = now

    variants: dict[str, Callable[[int], Any]] = {"sqlmon": sqlmon_beat, "sqlite3_raw": raw_beat}
    manager = multiprocessing.Manager()  # its server is another process: each write crosses
    shared = manager.dict()

    def manager_beat(i: int) -> None:
        now = time.time()
        shared["bench-manager"] = {
            "pid": pid,
            "pid_start": started,
            "host": host,
            "pool": "gpu",
            "category": CATEGORIES[i & 1],
            "category_since": now,
            "last_heartbeat": now,
            "started_at": started,
        }

    variants["manager_dict"] = manager_beat
    result: dict[str, Any] = {}
    with redis_server(workdir) as port:
        if port is not None:
            import redis

            client = redis.Redis(host="127.0.0.1", port=port)

            def redis_beat(i: int) -> None:
                # RQ's heartbeat: the worker's hash fields and an EXPIRE, in one pipeline.
                now = time.time()
                pipe = client.pipeline(transaction=False)
                pipe.hset(
                    "rq:worker:bench-redis",
                    mapping={
                        "pid": pid,
                        "host": host,
                        "pool": "gpu",
                        "category": CATEGORIES[i & 1],
                        "category_since": now,
                        "last_heartbeat": now,
                        "started_at": started,
                    },
                )
                pipe.expire("rq:worker:bench-redis", 60)
                pipe.execute()

            variants["redis"] = redis_beat
        samples: dict[str, list[int]] = {name: [] for name in variants}
        names = list(variants)
        for fn in variants.values():  # warm up: connections opened, statements prepared
            for i in range(20):
                fn(i)
        for r in range(sizes.beat_rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                samples[name] += _time_each(variants[name], sizes.beat_block, r * sizes.beat_block)
        for name in names:
            result[name] = _summary(samples[name])
        if port is None:
            result["redis"] = None
        assert hb.missed == 0, f"{hb.missed} sqlmon beats dropped during the benchmark"
    manager.shutdown()
    raw.close()
    hb.close()
    return result


def measure_coalesced(db: str, sizes: Sizes) -> dict[str, Any]:
    """A beat with the same category inside min_interval: nothing to write."""
    hb = Heartbeat(db, "bench-coalesced", "gpu")
    hb.beat("OCR")
    beat = hb.beat
    per_call = []
    writes_before = _beats(db, "bench-coalesced")
    clock = time.perf_counter_ns
    n = sizes.coalesced_batch
    for _ in range(sizes.coalesced_batches):
        t0 = clock()
        for _ in range(n):
            beat("OCR")
        per_call.append((clock() - t0) / n)
    writes = _beats(db, "bench-coalesced") - writes_before
    hb.close()
    return {
        "median_us": median(per_call) / 1e3,
        "calls": n * sizes.coalesced_batches,
        "writes": writes,  # the refresh every min_interval, the only writes on this path
    }


def _beats(db: str, worker: str) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT beats FROM worker_status WHERE worker_id = ?", (worker,)
        ).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()
