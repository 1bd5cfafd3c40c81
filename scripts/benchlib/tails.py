"""Section 3: beat latency under realistic load.

Worker processes change category every 10 ms (with jitter) while a real Scheduler process
cycles at 1 Hz; the -wal file is sampled throughout. Then the scheduler is killed and the
workers go on, to show that the WAL stays bounded without its one regular checkpointer.
"""

from __future__ import annotations

import array
import json
import logging
import multiprocessing
import os
import random
import sqlite3
import threading
import time
from typing import Any

from sqlmon import Heartbeat, Scheduler, init_db

from .sizes import Sizes
from .stats import median, quantile

CATEGORIES = tuple(f"CAT_{i}" for i in range(10))
PERIOD = 0.010  # s between category changes
JITTER = 0.005  # s either side


# The physical limit under the same load: a hand-written upsert on a plain sqlite3 connection
# with the heartbeat's pragmas and SQLite's own 0.1 s busy timeout, no scheduler running.
RAW_UPSERT = (
    "INSERT INTO worker_status (worker_id, pid, host, pool, category, category_since,"
    " last_heartbeat, started_at) VALUES (?, ?, 'bench', 'cpu', ?, ?, ?, ?)"
    " ON CONFLICT (worker_id) DO UPDATE SET category = excluded.category,"
    " category_since = excluded.category_since, last_heartbeat = excluded.last_heartbeat,"
    " beats = beats + 1"
)


class _RawBeat:
    def __init__(self, db: str, worker_id: str) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None, timeout=0.1)
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA wal_autocheckpoint = 8000")
        self.worker_id, self.pid, self.missed = worker_id, os.getpid(), 0

    def beat(self, category: str | None) -> None:
        now = time.time()
        try:
            self.conn.execute(RAW_UPSERT, (self.worker_id, self.pid, category, now, now, now))
        except sqlite3.OperationalError:
            self.missed += 1

    def close(self) -> None:
        self.conn.close()


def worker(
    db: str,
    worker_id: str,
    ready: Any,
    go: Any,
    seconds: float,
    out: str,
    seed: int,
    raw: bool = False,
) -> None:
    """A worker process: one category change every PERIOD ± JITTER; each beat timed."""
    rng = random.Random(seed)
    latencies, started = array.array("q"), array.array("q")
    exceptions = 0
    hb: Any = _RawBeat(db, worker_id) if raw else Heartbeat(db, worker_id, "cpu")
    hb.beat(None)  # connection opened before the clock starts, as in a worker's first task
    ready.put(worker_id)
    go.wait()
    clock, stamp = time.perf_counter_ns, time.monotonic_ns  # monotonic: one clock for all
    current = None
    next_at = time.monotonic()
    stop_at = next_at + seconds
    while next_at < stop_at:
        category = rng.choice([c for c in CATEGORIES if c != current])
        started.append(stamp())
        t0 = clock()
        try:
            hb.beat(category)
        except Exception:  # the contract is that this never happens: count it if it does
            exceptions += 1
        latencies.append(clock() - t0)
        current = category
        next_at += PERIOD + rng.uniform(-JITTER, JITTER)
        wait = next_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            next_at = time.monotonic()
    missed = hb.missed
    hb.close()
    with open(out + ".lat", "wb") as f:
        latencies.tofile(f)
    with open(out + ".at", "wb") as f:
        started.tofile(f)
    with open(out + ".json", "w") as f:
        json.dump({"missed": missed, "exceptions": exceptions, "beats": len(latencies)}, f)


class _WalSampler(threading.Thread):
    def __init__(self, wal: str, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.wal, self.every = wal, every
        self.phase = "alive"
        self.peak = {"alive": 0, "dead": 0}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            try:
                size = os.path.getsize(self.wal)
            except OSError:
                size = 0
            self.peak[self.phase] = max(self.peak[self.phase], size)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(workdir: str, sizes: Sizes) -> dict[str, Any]:
    db = os.path.join(workdir, "tails.db")
    init_db(db)
    # fork where there is one: sixteen spawned interpreters importing SQLAlchemy at once take
    # longer than the measurement. Every Heartbeat is still built inside its own process.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    terminate = ctx.Event()
    scheduler = Scheduler(
        db, terminate=terminate, interval=1.0, log_level=logging.WARNING, start_method=method
    )
    scheduler.start()
    seconds = sizes.tail_alive_s + sizes.tail_dead_s
    outs, procs, sampler, start_at = _start_workers(ctx, db, workdir, "tail", sizes, seconds)
    time.sleep(sizes.tail_alive_s)
    # SIGKILL: no clean close, no last checkpoint, exactly what a crashed scheduler leaves.
    killed_ns = time.monotonic_ns()
    scheduler.kill()
    scheduler.join()
    killed_at = time.time()
    sampler.phase = "dead"
    for p in procs:
        p.join()
    sampler.stop()
    stop_at = time.time()
    result = _collect(outs, sampler, start_at, killed_at, stop_at, sizes, killed_ns)
    raw = _measure_raw(workdir, sizes, ctx)
    result.update({f"raw_{k}": raw[k] for k in ("p50_us", "p99_us", "p999_us", "max_us", "missed")})
    return result


def _measure_raw(workdir: str, sizes: Sizes, ctx: Any) -> dict[str, Any]:
    """The same workers and load on raw sqlite3, no scheduler: what this machine allows."""
    db = os.path.join(workdir, "tails-raw.db")
    init_db(db)
    outs, procs, sampler, start_at = _start_workers(
        ctx, db, workdir, "tail-raw", sizes, sizes.tail_alive_s, raw=True
    )
    for p in procs:
        p.join()
    sampler.stop()
    now = time.time()
    return _collect(outs, sampler, start_at, now, now, sizes)


def _start_workers(
    ctx: Any, db: str, workdir: str, prefix: str, sizes: Sizes, seconds: float, raw: bool = False
) -> tuple[list[str], list[Any], _WalSampler, float]:
    """Start the workers, wait until each has its connection, then let them all go at once."""
    ready, go = ctx.Queue(), ctx.Event()
    outs, procs = [], []
    for i in range(sizes.tail_workers):
        out = os.path.join(workdir, f"{prefix}-{i}")
        args = (db, f"cpu-{i}", ready, go, seconds, out, i, raw)
        p = ctx.Process(target=worker, args=args)
        p.start()
        outs.append(out)
        procs.append(p)
    for _ in procs:
        ready.get(timeout=120)
    sampler = _WalSampler(db + "-wal")
    sampler.start()
    start_at = time.time()
    go.set()
    return outs, procs, sampler, start_at


def _collect(
    outs: list[str],
    sampler: _WalSampler,
    start_at: float,
    killed_at: float,
    stop_at: float,
    sizes: Sizes,
    killed_ns: int | None = None,
) -> dict[str, Any]:
    """The latencies while the scheduler ran (the target's measure: the issue's load is beats
    while the scheduler runs at 1 Hz), and apart, those after it was killed, when the workers'
    own fallback checkpoints of a 32 MiB WAL land on them."""
    alive: list[int] = []
    dead: list[int] = []
    missed = exceptions = beats = 0
    for out in outs:
        lat, at = array.array("q"), array.array("q")
        with open(out + ".lat", "rb") as f:
            lat.frombytes(f.read())
        with open(out + ".at", "rb") as f:
            at.frombytes(f.read())
        for t, x in zip(at, lat, strict=True):
            (alive if killed_ns is None or t < killed_ns else dead).append(x)
        with open(out + ".json") as f:
            info = json.load(f)
        missed += info["missed"]
        exceptions += info["exceptions"]
        beats += info["beats"]
    seconds = stop_at - start_at
    return {
        "workers": sizes.tail_workers,
        "seconds": seconds,
        "scheduler_killed_after_s": killed_at - start_at,
        "beats": beats,
        "beats_per_s": beats / seconds,
        "p50_us": median(alive) / 1e3,
        "p99_us": quantile(alive, 0.99) / 1e3,
        "p999_us": quantile(alive, 0.999) / 1e3,
        "max_us": max(alive, default=0) / 1e3,
        "over_1ms": sum(1 for x in alive if x > 1_000_000),
        "dead_p99_us": quantile(dead, 0.99) / 1e3 if dead else None,
        "dead_p999_us": quantile(dead, 0.999) / 1e3 if dead else None,
        "dead_max_us": max(dead) / 1e3 if dead else None,
        "missed": missed,
        "exceptions": exceptions,
        "wal_peak_alive_mb": sampler.peak["alive"] / 2**20,
        "wal_peak_dead_mb": sampler.peak["dead"] / 2**20,
    }
