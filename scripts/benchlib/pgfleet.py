"""PostgreSQL at fleet scale: a thousand workers beating at 1 Hz on one server, and the
scheduler that watches them.

Worker processes (spawned) each hold many `sqlmon.Heartbeat`s, one connection apiece, under
host names of their own, so that the scheduler judges them by their beats alone, as it does
workers on other machines. Every heartbeat beats once a second, the fleet's beats spread
evenly over the second, about one in ten a change of category. A real Scheduler process
cycles at 1 Hz on the same database, with a backlog in the bundled task table.

Over a window after the warm-up, from the driver's own records: every scheduler step timed
whole (read, judge, write), against raw psycopg running a quiet cycle's statements on the
same server meanwhile; the CPU of the scheduler, of the server (the postmaster and every
backend) and of the workers, from /proc; beat latency; and beats attempted against beats
written (the sum of worker_status.beats, read once every worker has closed).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import random
import time
from typing import Any

from sqlmon import Heartbeat, Scheduler

from . import postgres
from .cycle import POOLS, _cpu_seconds, _rss_mb
from .sizes import Sizes
from .stats import cores, median, quantile, ratio

TRANSITIONS = 0.10  # share of beats that change category
HOSTS = 20  # host names the fleet's workers are spread over
MAX_CONNECTIONS = 1100  # the server's limit: a connection per Heartbeat, and a few more


class TimedScheduler(Scheduler):
    """A real Scheduler whose every step is timed whole; the (unix s, s) pairs are written to
    the file `timings` when it closes."""

    timings = ""

    def open(self, now: float | None = None) -> int | None:
        self._times: list[tuple[float, float]] = []
        return super().open(now)

    def step(self, now: float | None = None, mono: float | None = None) -> Any:
        at, t0 = time.time(), time.perf_counter()
        try:
            return super().step(now, mono)
        finally:
            self._times.append((at, time.perf_counter() - t0))

    def close(self, reason: str = "closed", now: float | None = None) -> None:
        super().close(reason, now)
        if self.timings:
            with open(self.timings, "w") as f:
                f.writelines(f"{at!r} {s!r}\n" for at, s in getattr(self, "_times", []))


def fleet_worker(
    url: str, index: int, processes: int, count: int, seed: int, ready: Any, stop: Any, out: Any
) -> None:
    """One process of the fleet: `count` heartbeats, each beating once a second at its own
    phase, until `stop`; then every heartbeat closes and the records go to `out`."""
    rng = random.Random(seed)
    total = processes * count
    cats = list(POOLS)
    beats = []
    for j in range(count):
        n = j * processes + index  # the fleet's numbering: phases interleave across processes
        pool = POOLS[cats[n % len(cats)]]
        choices = [None, *(c for c in cats if POOLS[c] == pool)]
        hb = Heartbeat(url, f"fleet-{n:04d}", pool, min_interval=0.0, host=f"host-{n % HOSTS:02d}")
        beats.append((hb, choices, n / total))
    current: list[str | None] = [None] * count
    attempted = transitions = 0
    for hb, _choices, _phase in beats:
        hb.beat(None)  # registration and the connection, before the clock starts
        attempted += 1
    ready.put(index)
    records: list[tuple[float, float, float]] = []  # (unix s, beat's s, s behind schedule)
    clock = time.perf_counter
    second = math.floor(time.time()) + 1.0
    while not stop.is_set():
        for j, (hb, choices, phase) in enumerate(beats):
            due = second + phase
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            if stop.is_set():
                break
            if rng.random() < TRANSITIONS:
                current[j] = rng.choice([c for c in choices if c != current[j]])
                transitions += 1
            at, t0 = time.time(), clock()
            hb.beat(current[j])
            records.append((at, clock() - t0, max(0.0, at - due)))
            attempted += 1
        second += 1.0
    for hb, _choices, _phase in beats:
        hb.close()  # a write too: counted as attempted
        attempted += 1
    out.put(
        {
            "index": index,
            "attempted": attempted,
            "transitions": transitions,
            "missed": sum(hb.missed for hb, _c, _p in beats),
            "records": records,
        }
    )


def _collect(results: Any, procs: list[Any]) -> list[dict[str, Any]]:
    """Every worker's records; taken off the queue before the join (a process that put a large
    item waits until it is read)."""
    import queue

    got: list[dict[str, Any]] = []
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=1.0))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break  # one died without its records: the beats it made count as missed
    return got


def _postmaster_pid(server: Any) -> int:
    # tests/pg.py's layout: the socket directory beside the data directory.
    with open(os.path.join(os.path.dirname(server.host), "data", "postmaster.pid")) as f:
        return int(f.readline())


def _server_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live children, and its children that have ended."""
    with open(f"/proc/{postmaster}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, every core (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:8]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / tick, sum(ticks) / tick


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += _cpu_seconds(pid)
        except OSError:
            pass
    return total


class _RawCycle:
    """A quiet cycle's statements by hand on one psycopg connection: the reads (clock, worker
    rows, the stretch cursor's bound, the stretches of the last second, the backlog) in one
    REPEATABLE READ READ ONLY transaction, then the writes (a fenced UPDATE of an idle row, a
    snapshot and its counts) in one READ COMMITTED transaction, on copies of those tables."""

    def __init__(self, server: Any, url: str, backlog_sql: str) -> None:
        self.conn = server.connect(url.split("@/")[1].split("?")[0])
        self.conn.autocommit = False
        self.backlog_sql = backlog_sql
        c = self.conn
        c.execute("CREATE TABLE raw_state AS SELECT * FROM scheduler_state WITH NO DATA")
        c.execute("ALTER TABLE raw_state ADD PRIMARY KEY (id)")
        c.execute("CREATE TABLE raw_snapshots (LIKE snapshots INCLUDING INDEXES)")
        c.execute("CREATE TABLE raw_counts (LIKE snapshot_counts INCLUDING INDEXES)")
        c.execute(
            "INSERT INTO raw_state (id, run_id, pid, host, interval, heartbeat, cycle, idle,"
            " stop_seen, term, folded_id) VALUES (1, 1, 1, 'raw', 1, 0, 0, 0, 0, 1, 0)"
        )
        c.commit()
        self.n = 0
        self.last_id = int(
            c.execute("SELECT coalesce(max(id), 0) FROM worker_stretches").fetchone()[0]
        )
        c.commit()

    def cycle(self) -> float:
        import psycopg

        c, t0 = self.conn, time.perf_counter()
        c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        c.read_only = True
        now = c.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()[0]
        c.execute(
            "SELECT worker_id, pid, pid_start, host, pool, category, category_since,"
            " last_heartbeat, started_at, beats, exited_at FROM worker_status"
        ).fetchall()
        upto = c.execute("SELECT coalesce(max(id), 0) FROM worker_stretches").fetchone()[0]
        c.execute(
            "SELECT id, worker_id, category, started, ended, outcome FROM worker_stretches"
            " WHERE id > %s AND id <= %s ORDER BY id LIMIT 5000 OFFSET 0",
            (self.last_id, upto),
        ).fetchall()
        counts = c.execute(self.backlog_sql).fetchall()
        c.commit()
        self.last_id = upto
        c.isolation_level, c.read_only = None, None
        self.n += 1
        c.execute(
            "UPDATE raw_state SET run_id = 1, heartbeat = %s, cycle = %s, idle = 0,"
            " idle_since = NULL, verdict_since = NULL, not_idle_reason = %s, stop_seen = 0,"
            " expires_at = %s, folded_id = %s WHERE id = 1 AND term = 1",
            (now, self.n, "tasks pending", now + 3.0, upto),
        )
        c.execute(
            "INSERT INTO raw_snapshots (id, run_id, ts, cycle, workers_busy, workers_idle,"
            " workers_stale, workers_dead, backlog_pending, backlog_running, idle,"
            " cycle_seconds, writes_skipped, late)"
            " VALUES (%s, 1, %s, %s, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
            (self.n, now, self.n),
        )
        with c.cursor() as cur:
            cur.executemany(
                "INSERT INTO raw_counts (snapshot_id, pool, category, busy, pending, running)"
                " VALUES (%s, %s, %s, 0, %s, 0)",
                [(self.n, p, cat, n) for (p, cat), n in _pending(counts).items()],
            )
        c.commit()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.conn.close()


def _pending(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for kind, pool, category, _status, n, _mark in rows:
        if kind == "c":
            out[(str(pool), str(category))] = out.get((str(pool), str(category)), 0) + int(n)
    return out


def measure(workdir: str, sizes: Sizes) -> dict[str, Any]:
    why = postgres.unavailable()
    if why:
        return {"skipped": why, "workers": sizes.fleet_workers}
    settings = {"max_connections": str(MAX_CONNECTIONS)}
    with postgres.fresh_database(settings) as (server, url):
        return _measure(server, url, workdir, sizes)


def _measure(server: Any, url: str, workdir: str, sizes: Sizes) -> dict[str, Any]:
    import sqlalchemy as sa

    from sqlmon.backlog import TaskTable

    workers, processes = sizes.fleet_workers, sizes.fleet_processes
    per_process = workers // processes
    workers = per_process * processes
    name = url.split("@/")[1].split("?")[0]
    with server.connect(name) as conn:  # the backlog: pending tasks over the five categories
        conn.execute(
            "INSERT INTO tasks (category, pool, status, created_at)"
            " SELECT (%s::text[])[1 + i %% 5], (%s::text[])[1 + i %% 5], 'pending',"
            " EXTRACT(EPOCH FROM now())::float8 FROM generate_series(0, %s - 1) i",
            (list(POOLS), list(POOLS.values()), sizes.cycle_pending),
        )
        conn.execute("VACUUM ANALYZE")
    ctx = multiprocessing.get_context("spawn")
    terminate, stop = ctx.Event(), ctx.Event()
    ready, results = ctx.Queue(), ctx.Queue()
    scheduler = TimedScheduler(
        url, terminate=terminate, interval=1.0, log_level=logging.WARNING, start_method="spawn"
    )
    scheduler.timings = os.path.join(workdir, "pgfleet-cycles.txt")
    scheduler.start()
    assert scheduler.pid is not None
    t_start = time.perf_counter()
    procs = [
        ctx.Process(
            target=fleet_worker,
            args=(url, i, processes, per_process, 1000 + i, ready, stop, results),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    out: dict[str, Any] = {"workers": workers, "processes": processes}
    raw = None
    try:
        for _ in procs:
            ready.get(timeout=600)
        out["start_s"] = time.perf_counter() - t_start  # every heartbeat registered
        time.sleep(sizes.fleet_warmup_s)  # the joins judged; on a full run, the fold under way
        raw = _RawCycle(server, url, TaskTable().statement(sa.create_engine(url).dialect))
        postmaster = _postmaster_pid(server)
        pids = [p.pid for p in procs if p.pid is not None]
        cpu0 = (_cpu_seconds(scheduler.pid), _server_cpu(postmaster), _cpu(pids))
        machine0, load0 = _machine(), os.getloadavg()[0]
        w0, m0 = time.time(), time.monotonic()
        raw_s = []
        next_at = m0 + 0.5  # half way between two of the scheduler's cycles, roughly
        while time.monotonic() - m0 < sizes.fleet_seconds:
            time.sleep(max(0.0, next_at - time.monotonic()))
            raw_s.append(raw.cycle())
            next_at += 1.0
        cpu1 = (_cpu_seconds(scheduler.pid), _server_cpu(postmaster), _cpu(pids))
        machine1, load1 = _machine(), os.getloadavg()[0]
        w1, elapsed = time.time(), time.monotonic() - m0
        out["scheduler_rss_mb"] = _rss_mb(scheduler.pid)
    finally:
        stop.set()
        got = _collect(results, procs)
        for p in procs:
            p.join(60)
        terminate.set()
        scheduler.join(60)
        if raw is not None:
            raw.close()
    out["window_s"] = elapsed
    share = [(b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)]
    out["scheduler_cpu_share"], out["server_cpu_share"], out["workers_cpu_share"] = share
    # Everything the machine ran meanwhile, the fleet and whatever else: the noise's measure.
    out["machine_busy_share"] = (machine1[0] - machine0[0]) / (machine1[1] - machine0[1])
    # What other processes ran meanwhile (other jobs on a shared machine), in cores.
    out["others_cpu_share"] = (machine1[0] - machine0[0]) / elapsed - sum(share)
    out["load_average"] = (load0, load1)
    with open(scheduler.timings) as f:
        steps = [tuple(map(float, line.split())) for line in f]
    cycles = [s for at, s in steps if w0 <= at <= w1]
    out["cycle"] = {
        "cycles": len(cycles),
        "median_ms": median(cycles) * 1e3,
        "p95_ms": quantile(cycles, 0.95) * 1e3,
        "max_ms": max(cycles, default=float("nan")) * 1e3,
    }
    out["raw_cycle"] = {
        "cycles": len(raw_s),
        "median_ms": median(raw_s) * 1e3,
        "p95_ms": quantile(raw_s, 0.95) * 1e3,
    }
    out["cycle_ratio"] = ratio(out["cycle"]["median_ms"], out["raw_cycle"]["median_ms"])
    records = [r for g in got for r in g["records"] if w0 <= r[0] <= w1]
    lat = [r[1] for r in records]
    out["beats"] = {
        "in_window": len(records),
        "per_s": len(records) / elapsed,
        "p50_us": median(lat) * 1e6,
        "p99_us": quantile(lat, 0.99) * 1e6,
        "max_us": max(lat, default=float("nan")) * 1e6,
        "behind_schedule_p99_ms": quantile([r[2] for r in records], 0.99) * 1e3,
        "attempted": sum(g["attempted"] for g in got),
        "transitions": sum(g["transitions"] for g in got),
        "sqlmon_missed": sum(g["missed"] for g in got),
    }
    with server.connect(name) as conn:
        written, rows = conn.execute("SELECT sum(beats), count(*) FROM worker_status").fetchone()
        (stretches,) = conn.execute("SELECT count(*) FROM worker_stretches").fetchone()
        seen = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY cycle_seconds),"
            " max(workers_busy + workers_idle), max(workers_stale + workers_dead),"
            " sum(writes_skipped), sum(late) FROM snapshots"
            " WHERE ts BETWEEN %s AND %s",
            (w0, w1),
        ).fetchone()
    out["beats"]["written"] = int(written or 0)
    out["beats"]["missed"] = out["beats"]["attempted"] - out["beats"]["written"]
    out["worker_rows"] = rows
    out["stretches_recorded"] = stretches
    out["recorded_cycle_median_ms"] = (seen[0] or float("nan")) * 1e3
    out["judged_alive_max"] = seen[1]
    out["judged_stale_or_dead_max"] = seen[2]
    out["writes_skipped"] = seen[3]
    out["late_cycles"] = seen[4]
    return out


def render(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"PostgreSQL fleet: skipped, {r['skipped']}"
    c, raw, b = r["cycle"], r["raw_cycle"], r["beats"]
    return "\n".join(
        [
            f"PostgreSQL fleet, {r['workers']} workers in {r['processes']} processes at 1 Hz"
            f" ({b['per_s']:.0f} beats/s, {TRANSITIONS:.0%} changes of category),"
            f" {r['window_s']:.0f} s:",
            f"  scheduler cycle median {c['median_ms']:.1f} ms (target <= 20), p95"
            f" {c['p95_ms']:.1f} ms, max {c['max_ms']:.1f} ms over {c['cycles']} cycles;"
            f" raw psycopg, a quiet cycle's statements: median {raw['median_ms']:.1f} ms"
            f" (sqlmon / raw {r['cycle_ratio'] or float('nan'):.2f});"
            f" recorded cycle_seconds (before the write) median"
            f" {r['recorded_cycle_median_ms']:.1f} ms",
            f"  CPU of one core: scheduler {r['scheduler_cpu_share']:.1%} (RSS"
            f" {r['scheduler_rss_mb']:.0f} MB), server {r['server_cpu_share']:.1%}, workers"
            f" {r['workers_cpu_share']:.1%}, other processes {cores(r['others_cpu_share'])}; the"
            f" whole machine {r['machine_busy_share']:.0%} busy (of {os.cpu_count()} cores),"
            f" load average {r['load_average'][0]:.1f} at the start,"
            f" {r['load_average'][1]:.1f} at the end",
            f"  beats: {b['written']:,} written of {b['attempted']:,} attempted (missed"
            f" {b['missed']}, sqlmon counted {b['sqlmon_missed']}); latency p50"
            f" {b['p50_us']:.0f} us, p99 {b['p99_us']:.0f} us, max {b['max_us']:.0f} us; p99"
            f" behind schedule {b['behind_schedule_p99_ms']:.1f} ms; stretches recorded"
            f" {r['stretches_recorded']:,} of {b['transitions'] + r['workers']:,} closed"
            " (a change of category or a close closes one)",
            f"  judged: up to {r['judged_alive_max']} busy or idle, up to"
            f" {r['judged_stale_or_dead_max']} stale or dead; writes skipped"
            f" {r['writes_skipped']}, late cycles {r['late_cycles']}; start-up"
            f" {r['start_s']:.1f} s",
        ]
    )
