"""`sqlmon demo`: a dashcam-like pipeline on the bundled task table, watched by the scheduler.

GPU workers run VEHICLE_DETECT -> PLATE_DETECT -> OCR per frame and CPU workers PLATE_SMOOTH ->
SUMMARY; each task enqueues its successor in the same transaction that marks it done. The
worker functions are plain module-level functions so that spawn and forkserver can import them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from . import db as dbmod
from . import flags
from .heartbeat import Heartbeat
from .idle import wait_idle
from .migrate import init_db
from .scheduler import Scheduler
from .schema import tasks

log = logging.getLogger(__name__)

GPU, CPU = "gpu", "cpu"
NEXT = {
    "VEHICLE_DETECT": "PLATE_DETECT",
    "PLATE_DETECT": "OCR",
    "OCR": "PLATE_SMOOTH",
    "PLATE_SMOOTH": "SUMMARY",
}
POOL = {"VEHICLE_DETECT": GPU, "PLATE_DETECT": GPU, "OCR": GPU, "PLATE_SMOOTH": CPU, "SUMMARY": CPU}
WORK_SECONDS = {  # mean simulated work per task at --length 1
    "VEHICLE_DETECT": 0.08,
    "PLATE_DETECT": 0.06,
    "OCR": 0.05,
    "PLATE_SMOOTH": 0.12,
    "SUMMARY": 0.2,
}


@dataclass(frozen=True)
class DemoSettings:
    db: str
    gpu_workers: int = 3
    cpu_workers: int = 5
    videos: int = 3
    frames: int = 16
    length: float = 1.0  # scales every task's simulated work
    stuck: bool = False
    interval: float = 0.5
    stale_after: float = 3.0
    warn_after: float = 5.0
    timeout: float = 120.0  # s to wait for idle before giving up
    start_method: str | None = None


def enqueue(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    with dbmod.write(conn):
        conn.execute(sa.insert(tasks), rows)


def workload(videos: int, frames: int, now: float) -> list[dict[str, Any]]:
    """One VEHICLE_DETECT task per frame of each video; the rest follow as tasks complete."""
    return [
        {
            "category": "VEHICLE_DETECT",
            "pool": GPU,
            "created_at": now,
            "payload": f"video-{v + 1}/frame-{f + 1:03d}",
        }
        for v in range(videos)
        for f in range(frames)
    ]


# On PostgreSQL two workers can pick the same oldest task at once: the row lock makes the later
# one skip it (SKIP LOCKED) or, having waited, find it no longer pending. SQLite's write lock
# already runs claims one at a time, and its dialect leaves FOR UPDATE out.
_CLAIM = (
    sa.update(tasks)
    .where(
        tasks.c.id
        == sa.select(tasks.c.id)
        .where(tasks.c.status == "pending", tasks.c.pool == sa.bindparam("b_pool"))
        .order_by(tasks.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery(),
        tasks.c.status == "pending",
    )
    .values(status="running", worker_id=sa.bindparam("b_worker"), started_at=sa.bindparam("b_now"))
    .returning(tasks.c.id, tasks.c.category, tasks.c.payload)
)


def claim(conn: sa.Connection, worker_id: str, pool: str) -> tuple[int, str, str] | None:
    """Take the oldest pending task of `pool`, atomically."""
    with dbmod.write(conn):
        row = conn.execute(
            _CLAIM, {"b_pool": pool, "b_worker": worker_id, "b_now": time.time()}
        ).first()
    return None if row is None else (row[0], row[1], row[2])


def complete(conn: sa.Connection, task_id: int, category: str, payload: str) -> None:
    """Mark a task done and enqueue its successor, in one transaction: never a gap to see."""
    now = time.time()
    successor = NEXT.get(category)
    video = payload.split("/")[0]
    frames = tasks.c.payload.like(f"{video}/%")
    with dbmod.write(conn):
        if successor == "SUMMARY":
            # Two frames of a video finishing at once on PostgreSQL: each takes the video's
            # rows first, in id order (so neither holds one the other waits for), and the later
            # one then counts the earlier one done. One summary, never none. SQLite's write
            # lock already runs them one at a time.
            conn.execute(sa.select(tasks.c.id).where(frames).order_by(tasks.c.id).with_for_update())
        conn.execute(
            sa.update(tasks).where(tasks.c.id == task_id).values(status="done", finished_at=now)
        )
        if successor == "SUMMARY":
            # One summary per video, once its last frame is smoothed.
            active = conn.execute(
                sa.select(sa.func.count())
                .select_from(tasks)
                .where(tasks.c.status.in_(("pending", "running")), frames)
            ).scalar_one()
            if active:
                return
            payload = video
        if successor is not None:
            conn.execute(
                sa.insert(tasks).values(
                    category=successor, pool=POOL[successor], created_at=now, payload=payload
                )
            )


def worker_main(
    db: str, worker_id: str, pool: str, terminate: Any, length: float, hang: float
) -> None:
    """A demo worker: claim, beat, work, complete; beat while idle; exit on terminate."""
    # Ctrl-C reaches the whole process group: the main process stops the workers through
    # terminate, as on any other stop, so that each closes its heartbeat (exited, not dead).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hb = Heartbeat(db, worker_id, pool)
    engine = dbmod.engine(db, "tool")
    rng = random.Random(worker_id)
    try:
        with engine.connect() as conn:
            while not terminate.is_set():
                task = claim(conn, worker_id, pool)
                if task is None:
                    hb.beat(None)
                    flags.wait(terminate, 0.05)
                    continue
                task_id, category, payload = task
                with hb.busy(category):
                    if hang:
                        # --stuck: hang inside a task without beating, then recover.
                        time.sleep(hang)
                        hang = 0.0
                    work = WORK_SECONDS[category] * length * rng.uniform(0.5, 1.5)
                    flags.wait(terminate, work)
                    complete(conn, task_id, category, payload)
    finally:
        hb.close()
        engine.dispose()


@dataclass(frozen=True)
class DemoResult:
    """What a demo run came to; the summary reads the rest from the database."""

    idle: bool  # the idle verdict came before the timeout
    seconds: float  # from the start to the verdict (or the timeout)
    run_id: int | None  # None: the scheduler started no run
    exit_codes: dict[str, int | None]  # each process's, by name


def run(settings: DemoSettings) -> DemoResult:
    """Run the whole demo; return what the summary prints."""
    init_db(settings.db)
    ctx = multiprocessing.get_context(settings.start_method)
    stop, terminate = ctx.Event(), ctx.Event()
    # The monitor goes last, so that its history holds every worker's exit.
    monitor_done = ctx.Event()
    with dbmod.connect(settings.db, "tool") as conn:
        enqueue(conn, workload(settings.videos, settings.frames, time.time()))
        started = dbmod.clock(conn)  # the idle verdict's clock: the server's on PostgreSQL
    scheduler = Scheduler(
        settings.db,
        stop=stop,
        terminate=monitor_done,
        interval=settings.interval,
        stale_after=settings.stale_after,
        warn_after=settings.warn_after,
        start_method=settings.start_method,
    )
    hang = settings.warn_after + 2 * settings.interval + 1.0 if settings.stuck else 0.0
    workers: list[Any] = [
        ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(
                settings.db,
                f"{pool}-{i + 1}",
                pool,
                terminate,
                settings.length,
                hang if (pool, i) == (GPU, 0) else 0.0,
            ),
            name=f"{pool}-{i + 1}",
        )
        for pool, n in ((GPU, settings.gpu_workers), (CPU, settings.cpu_workers))
        for i in range(n)
    ]
    interrupted = False
    try:
        scheduler.start()
        for w in workers:
            w.start()
        ticking = time.monotonic()
        idle = wait_idle(settings.db, timeout=settings.timeout, since=started)
        seconds = time.monotonic() - ticking
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # A second Ctrl-C while stopping would leave children running: held off until done.
        held = _hold_sigint()
        try:
            stop.set()  # the pipeline's own flags: set by the main process, never by sqlmon
            terminate.set()
            _join([w for w in workers if w.pid is not None])
            # The cycle in flight may have read worker_status before the last exit: the second
            # one from now began after the joins, so it sees every exit. After Ctrl-C the
            # scheduler, in the same process group, is ending its run by itself.
            if not interrupted:
                _cycles_pass(settings.db, 2, timeout=6 * settings.interval)
            monitor_done.set()
            if scheduler.pid is not None:
                _join([scheduler])
        finally:
            if held is not None:
                signal.signal(signal.SIGINT, held)
    return DemoResult(
        idle=idle,
        seconds=seconds,
        run_id=_latest_run(settings.db),
        exit_codes={p.name: p.exitcode for p in [*workers, scheduler]},
    )


def _hold_sigint() -> Any:
    """Ignore SIGINT (only the main thread may); return the handler to put back, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def _join(processes: list[Any]) -> None:
    for p in processes:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()


def _cycles_pass(db: str, n: int, timeout: float) -> None:
    """Wait until the scheduler completes `n` more cycles (or `timeout` s pass)."""
    from .schema import scheduler_state

    engine = dbmod.engine(db, "read")
    query = sa.select(scheduler_state.c.run_id, scheduler_state.c.cycle)
    try:
        with engine.connect() as conn:
            with dbmod.read(conn):
                first = conn.execute(query).first()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                time.sleep(0.05)
                with dbmod.read(conn):
                    now = conn.execute(query).first()
                if now is None:
                    continue
                # A run that started meanwhile counts its cycles from 0.
                base = first.cycle if first is not None and first.run_id == now.run_id else 0
                if now.cycle >= base + n:
                    return
    finally:
        engine.dispose()


def _latest_run(db: str) -> int | None:
    from .schema import runs

    with dbmod.connect(db, "read") as conn, dbmod.read(conn):
        return conn.execute(sa.select(sa.func.max(runs.c.run_id))).scalar()


def default_db() -> str:
    return os.path.join(os.getcwd(), "sqlmon-demo.db")
