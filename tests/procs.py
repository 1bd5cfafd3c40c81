"""Process targets for the tests: plain module-level functions, so spawn can import them."""

from __future__ import annotations

import time

from sqlmon import Heartbeat


def beat_n(hb: Heartbeat, n: int, category: str | None, result) -> None:
    """Beat `n` times through a Heartbeat built in the parent, then close; report misses."""
    for i in range(n):
        hb.beat(f"{category}-{i % 2}" if category else None)
    hb.close()
    result.put((hb.worker_id, hb.missed))


def beat_until(db: str, worker_id: str, pool: str, category: str | None, stop, every: float = 0.05):
    """A worker that beats every `every` s until `stop` is set, then closes."""
    hb = Heartbeat(db, worker_id, pool, min_interval=0.0)
    while not stop.is_set():
        hb.beat(category)
        stop.wait(every)
    hb.close()


def beat_then_hang(db: str, worker_id: str, pool: str, category: str | None) -> None:
    """Beat once, then hang without beating (a stuck worker); the test kills it."""
    hb = Heartbeat(db, worker_id, pool)
    hb.beat(category)
    time.sleep(3600)


def chain_worker(db: str, worker_id: str, pool: str, terminate, gap: float, steps: int) -> None:
    """A pipeline worker with the race windows left wide open: it claims a task, waits `gap`
    before saying so in its heartbeat, and enqueues a successor in the same transaction that
    marks a task done."""
    import sqlite3

    hb = Heartbeat(db, worker_id, pool, min_interval=0.0)
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    while not terminate.is_set():
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "UPDATE tasks SET status = 'running', worker_id = ?, started_at = ? WHERE id = "
            "(SELECT id FROM tasks WHERE status = 'pending' ORDER BY id LIMIT 1) "
            "RETURNING id, category, payload",
            (worker_id, time.time()),
        ).fetchone()
        conn.execute("COMMIT")
        if row is None:
            hb.beat(None)
            terminate.wait(0.005)
            continue
        task_id, category, payload = row
        time.sleep(gap)  # claimed, not yet in the heartbeat
        hb.beat(category)
        time.sleep(gap)
        step = int(category.split("-")[1])
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE tasks SET status = 'done', finished_at = ? WHERE id = ?", (time.time(), task_id)
        )
        if step + 1 < steps:
            conn.execute(
                "INSERT INTO tasks (category, pool, status, created_at, payload) "
                "VALUES (?, ?, 'pending', ?, ?)",
                (f"STEP-{step + 1}", pool, time.time(), payload),
            )
        conn.execute("COMMIT")
        hb.beat(None)
    hb.close()
    conn.close()


def alternate(
    db: str, worker_id: str, busy: float, idle: float, seconds: float, fail_every: int, out: str
) -> None:
    """A worker alternating `busy` s in a task and `idle` s between tasks for about `seconds`;
    every `fail_every`-th task raises ValueError. It writes its own record to `out` (JSON): its
    first and last moment and each task's start and end, read around the busy block."""
    import json

    hb = Heartbeat(db, worker_id, "cpu")
    begun = time.time()
    hb.beat(None)
    tasks, failed, n = [], 0, 0
    while time.time() < begun + seconds:
        n += 1
        a = time.time()
        try:
            with hb.busy("WORK"):
                time.sleep(busy)
                if fail_every and n % fail_every == 0:
                    raise ValueError("task failed")
        except ValueError:
            failed += 1
        tasks.append((a, time.time()))
        time.sleep(idle)
    hb.close()
    record = {"begun": begun, "ended": time.time(), "tasks": tasks, "failed": failed}
    with open(out, "w") as f:
        json.dump(record, f)


def busy_then_hang(db: str, worker_id: str, started) -> None:
    """Beat idle, enter a task and hang in it without beating (the test SIGKILLs it)."""
    hb = Heartbeat(db, worker_id, "gpu")
    hb.beat(None)
    time.sleep(0.2)
    with hb.busy("STUCK"):
        started.put(time.time())
        time.sleep(3600)


def _skewed(offset: float) -> float:
    return time.time() + offset


def beat_as(
    db: str,
    worker_id: str,
    host: str,
    skew: float,
    category: str | None,
    stop,
    boot_id: str | None = None,
):
    """A worker on another host (by name, and boot id if given) whose wall clock is `skew` s
    off; beats every 0.1 s until `stop` is set, then closes."""
    import functools

    hb = Heartbeat(
        db,
        worker_id,
        "cpu",
        min_interval=0.0,
        host=host,
        boot_id=boot_id,
        clock=functools.partial(_skewed, skew),
    )
    while not stop.is_set():
        hb.beat(category)
        stop.wait(0.1)
    hb.close()
