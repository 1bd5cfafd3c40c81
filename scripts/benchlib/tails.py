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
import threading
import time
from typing import Any

from sqlmon import Heartbeat, Scheduler, init_db

from .sizes import Sizes
from .stats import median, quantile

CATEGORIES = tuple(f"CAT_{i}" for i in range(10))
PERIOD = 0.010  # s between category changes
JITTER = 0.005  # s either side


def worker(
    db: str, worker_id: str, ready: Any, go: Any, seconds: float, out: str, seed: int
) -> None:
    """A worker process: one category change every PERIOD ± JITTER; each beat timed."""
    rng = random.Random(seed)
    latencies = array.array("q")
    exceptions = 0
    hb = Heartbeat(db, worker_id, "cpu")
    hb.beat(None)  # connection opened before the clock starts, as in a worker's first task
    ready.put(worker_id)
    go.wait()
    clock = time.perf_counter_ns
    current = None
    next_at = time.monotonic()
    stop_at = next_at + seconds
    while next_at < stop_at:
        category = rng.choice([c for c in CATEGORIES if c != current])
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
    ready, go = ctx.Queue(), ctx.Event()
    seconds = sizes.tail_alive_s + sizes.tail_dead_s
    outs, procs = [], []
    for i in range(sizes.tail_workers):
        out = os.path.join(workdir, f"tail-{i}")
        p = ctx.Process(target=worker, args=(db, f"cpu-{i}", ready, go, seconds, out, i))
        p.start()
        outs.append(out)
        procs.append(p)
    for _ in procs:
        ready.get(timeout=120)
    sampler = _WalSampler(db + "-wal")
    sampler.start()
    start_at = time.time()
    go.set()
    time.sleep(sizes.tail_alive_s)
    # SIGKILL: no clean close, no last checkpoint, exactly what a crashed scheduler leaves.
    scheduler.kill()
    scheduler.join()
    killed_at = time.time()
    sampler.phase = "dead"
    for p in procs:
        p.join()
    sampler.stop()
    stop_at = time.time()
    return _collect(outs, sampler, start_at, killed_at, stop_at, sizes)


def _collect(
    outs: list[str],
    sampler: _WalSampler,
    start_at: float,
    killed_at: float,
    stop_at: float,
    sizes: Sizes,
) -> dict[str, Any]:
    latencies: list[int] = []
    missed = exceptions = beats = 0
    for out in outs:
        lat = array.array("q")
        with open(out + ".lat", "rb") as f:
            lat.frombytes(f.read())
        latencies.extend(lat)
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
        "p50_us": median(latencies) / 1e3,
        "p99_us": quantile(latencies, 0.99) / 1e3,
        "p999_us": quantile(latencies, 0.999) / 1e3,
        "max_us": max(latencies, default=0) / 1e3,
        "over_1ms": sum(1 for x in latencies if x > 1_000_000),
        "missed": missed,
        "exceptions": exceptions,
        "wal_peak_alive_mb": sampler.peak["alive"] / 2**20,
        "wal_peak_dead_mb": sampler.peak["dead"] / 2**20,
    }
