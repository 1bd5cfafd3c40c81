"""Process targets for the fault-injection suite: plain module-level functions, so that spawn
and forkserver can import them. Each records what it did in the ground truth and records any
exception before re-raising it: "no worker raised" is judged from those records.
"""

from __future__ import annotations

import os
import random
import time
import traceback
from typing import Any

from sqlmon import Heartbeat, Scheduler
from sqlmon.errors import DatabaseMissing, NotInitialised

from .harness import Plain, Truth, TruthWriter, connect

# `stop`, `go` and `stuck` are harness.Flag objects (shared bytes, no lock): safe to read in
# processes that the scenarios SIGKILL.
_CLAIM = (
    "UPDATE tasks SET status = 'running', worker_id = ?, started_at = ? WHERE id ="
    " (SELECT id FROM tasks WHERE status = 'pending' AND pool = ? ORDER BY id LIMIT 1{lock})"
    " RETURNING id, category, payload"
)
# SQLite's write lock lets one claim run at a time. On PostgreSQL two claims may pick the same
# row: the second then waits for the first and would claim it again, so each takes the oldest
# row that no other claim holds, as a PostgreSQL queue does.
_CLAIMS = {False: _CLAIM.format(lock=""), True: _CLAIM.format(lock=" FOR UPDATE SKIP LOCKED")}


class _Beats:
    """Beats through a Heartbeat, timing each call: a beat must never wait for a lock holder."""

    def __init__(self, hb: Heartbeat, writer: TruthWriter, log_each: bool = False) -> None:
        self.hb, self.writer, self.log_each = hb, writer, log_each
        self.calls = 0
        self.seconds: list[float] = []

    def __call__(self, category: str | None) -> None:
        missed = self.hb.missed
        t0 = time.perf_counter()
        self.hb.beat(category)
        self.seconds.append(time.perf_counter() - t0)
        self.calls += 1
        if self.log_each:
            self.writer.write("beat", ok=self.hb.missed == missed)

    def summary(self) -> dict[str, Any]:
        s = sorted(self.seconds) or [0.0]
        return {
            "calls": self.calls,
            "missed": self.hb.missed,
            "p99": s[int(0.99 * (len(s) - 1))],
            "max": s[-1],
        }


def pipeline_worker(
    db: str, tasks_db: str, worker_id: str, pool: str, truth_dir: str, stop: Any, opts: dict
) -> None:
    """A pipeline worker: claim the oldest pending task, hold its category while working
    (beating every `beat_every` s), complete it and enqueue its successor in one transaction.

    opts: min_interval, beat_every, work (s per task), claim_pause and done_pause (upper bounds
    of random pauses after the claim's commit and inside the completing transaction).
    """
    w = Truth(truth_dir).writer(f"worker-{worker_id}")
    try:
        rng = random.Random(f"{worker_id}-{os.getpid()}")
        hb = Heartbeat(db, worker_id, pool, min_interval=opts.get("min_interval", 0.0))
        beat = _Beats(hb, w, opts.get("log_beats", False))
        every = opts.get("beat_every", 0.05)
        conn = connect(tasks_db)
        claim = _CLAIMS[conn.pg]
        done = 0
        while not stop.is_set():
            conn.begin()
            row = conn.execute(claim, (worker_id, time.time(), pool)).fetchone()
            conn.commit()
            if row is None:
                beat(None)
                time.sleep(every)
                continue
            task, category, payload = row
            w.write("claim", task=task)
            if opts.get("claim_pause"):
                time.sleep(rng.uniform(0, opts["claim_pause"]))  # claimed, category not yet set
            beat(category)
            end = time.monotonic() + opts.get("work", 0.0) * rng.uniform(0.5, 1.5)
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(every, left))
                beat(category)
            _complete(conn, w, task, category, pool, int(payload or 0), rng, opts)
            done += 1
            beat(None)
        hb.close()
        w.write("summary", who=worker_id, completions=done, **beat.summary())
    except BaseException:
        w.write("error", who=worker_id, tb=traceback.format_exc())
        raise


def _complete(
    conn: Plain,
    w: TruthWriter,
    task: int,
    category: str,
    pool: str,
    depth: int,
    rng: random.Random,
    opts: dict,
) -> None:
    """Mark done and enqueue the successor in one transaction, as the demo pipeline does; the
    ground truth ends the task just before COMMIT and starts its successor once it returned."""
    conn.begin()
    now = time.time()
    conn.execute("UPDATE tasks SET status = 'done', finished_at = ? WHERE id = ?", (now, task))
    if opts.get("done_pause"):
        time.sleep(rng.uniform(0, opts["done_pause"]))  # done, successor not yet enqueued
    succ = None
    if depth > 0:
        succ = conn.execute(
            "INSERT INTO tasks (category, pool, created_at, payload) VALUES (?, ?, ?, ?)"
            " RETURNING id",
            (category, pool, now, str(depth - 1)),
        ).fetchone()[0]
    t = time.monotonic()
    conn.commit()
    w.write("done", t=t, task=task, succ=succ, t2=time.monotonic())


def beating_worker(
    db: str, worker_id: str, truth_dir: str, stop: Any, every: float, stuck: Any, stuck_for: float
) -> None:
    """Beat every `every` s, logging each beat; when `stuck` is set, spend `stuck_for` s in
    computation that holds the GIL (no beat can happen), then carry on."""
    w = Truth(truth_dir).writer(f"worker-{worker_id}")
    try:
        hb = Heartbeat(db, worker_id, "cpu", min_interval=0.0)
        beat = _Beats(hb, w, log_each=True)
        while not stop.is_set():
            beat("SUMMARY")
            if stuck.is_set():
                stuck.clear()
                w.write("stuck")
                _hold_gil(stuck_for)
                w.write("unstuck")
            time.sleep(every)
        hb.close()
        w.write("summary", who=worker_id, **beat.summary())
    except BaseException:
        w.write("error", who=worker_id, tb=traceback.format_exc())
        raise


def _hold_gil(seconds: float) -> None:
    # Big-integer arithmetic runs in C without releasing the GIL: no other Python code of this
    # process runs meanwhile, as in a worker stuck in a long extension call.
    end = time.monotonic() + seconds
    x = 3**200_000
    while time.monotonic() < end:
        x = (x * x) % (7**200_000)


def use_inherited(hb: Heartbeat, n: int, truth_dir: str) -> None:
    """Beat `n` times through a Heartbeat built (and used) in the parent, then close."""
    w = Truth(truth_dir).writer(f"child-{hb.worker_id}")
    try:
        for i in range(n):
            hb.beat(f"c{i % 2}")
        hb.close()
        w.write("child", who=hb.worker_id, writes=n + 1, missed=hb.missed)
    except BaseException:
        w.write("error", who=hb.worker_id, tb=traceback.format_exc())
        raise


def storm_worker(db: str, worker_id: str, truth_dir: str, go: Any, stop: Any) -> None:
    """Start with everyone else: build the Heartbeat as soon as the database is ready (a missing
    or uninitialised database is refused at construction, so a worker that may start first
    retries), then beat until stop."""
    w = Truth(truth_dir).writer(f"worker-{worker_id}")
    try:
        go.wait()
        tries = 0
        while True:
            tries += 1
            try:
                hb = Heartbeat(db, worker_id, "cpu", min_interval=0.0)
                break
            except (DatabaseMissing, NotInitialised):
                time.sleep(0.005)
        w.write("built", who=worker_id, tries=tries)
        while not stop.is_set():
            hb.beat(None)
            time.sleep(0.05)
        hb.close()
        w.write("summary", who=worker_id, missed=hb.missed)
    except BaseException:
        w.write("error", who=worker_id, tb=traceback.format_exc())
        raise


def storm_init(db: str, truth_dir: str, go: Any) -> None:
    from sqlmon import init_db

    w = Truth(truth_dir).writer("init")
    try:
        go.wait()
        init_db(db)
        w.write("init")
    except BaseException:
        w.write("error", who="init_db", tb=traceback.format_exc())
        raise


def storm_scheduler(db: str, truth_dir: str, go: Any, terminate: Any, kwargs: dict) -> None:
    """The scheduler's process in a start-up storm: Scheduler() refuses a database that is not
    ready, so it retries until init_db is done, then runs in the foreground."""
    w = Truth(truth_dir).writer("scheduler")
    try:
        go.wait()
        while True:
            try:
                s = Scheduler(db, terminate=terminate, **kwargs)
                break
            except (DatabaseMissing, NotInitialised):
                time.sleep(0.005)
        w.write("scheduler built")
        s.run()
    except BaseException:
        w.write("error", who="scheduler", tb=traceback.format_exc())
        raise


def naive_idle_checker(db: str, tasks_db: str, truth_dir: str, stop: Any) -> None:
    """The control: "pending = 0 and no busy worker", read in two statements, as fast as it
    can. Each verdict is recorded with the monotonic window of its two reads."""
    w = Truth(truth_dir).writer("naive")
    try:
        tconn, wconn = connect(tasks_db), connect(db)
        while not stop.is_set():
            t0 = time.monotonic()
            pending = tconn.execute("SELECT count(*) FROM tasks WHERE status = 'pending'")
            pending = pending.fetchone()[0]
            busy = wconn.execute(
                "SELECT count(*) FROM worker_status"
                " WHERE category IS NOT NULL AND exited_at IS NULL"
            ).fetchone()[0]
            t1 = time.monotonic()
            if pending == 0 and busy == 0:
                w.write("naive", t=t0, t1=t1)
            time.sleep(0.0005)
    except BaseException:
        w.write("error", who="naive", tb=traceback.format_exc())
        raise


def sleeper(seconds: float) -> None:
    """An unrelated process (it takes over a dead worker's pid)."""
    time.sleep(seconds)
