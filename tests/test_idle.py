"""The idle row under a real pipeline: never idle while a task is pending or running."""

from __future__ import annotations

import multiprocessing
import time

from sqlmon import Scheduler, is_idle, wait_idle

from . import procs
from .conftest import execute, sql


def test_no_idle_before_a_scheduler_ever_ran(db: str) -> None:
    assert not is_idle(db)
    assert wait_idle(db, timeout=0.2) is False


def test_idle_race_with_claiming_workers(db: str) -> None:
    steps, chains = 4, 24
    execute(
        db,
        "INSERT INTO tasks (category, pool, status, created_at, payload) "
        "VALUES ('STEP-0', 'cpu', 'pending', 0, ?)",
        [(f"chain-{i}",) for i in range(chains)],
    )
    ctx = multiprocessing.get_context("spawn")
    stop, terminate = ctx.Event(), ctx.Event()
    workers = [
        ctx.Process(target=procs.chain_worker, args=(db, f"w{i}", "cpu", terminate, 0.01, steps))
        for i in range(4)
    ]
    scheduler = Scheduler(
        db,
        stop=stop,
        terminate=terminate,
        interval=0.05,
        stale_after=5.0,
        warn_after=5.0,
        start_method="spawn",
    )
    since = time.time()
    scheduler.start()
    for w in workers:
        w.start()
    try:
        assert wait_idle(db, timeout=120, since=since)
        # The moment wait_idle said done, the driver's own look at the task table agrees.
        assert sql(db, "SELECT count(*) FROM tasks WHERE status != 'done'") == [(0,)]
    finally:
        terminate.set()
        for p in [*workers, scheduler]:
            p.join(20)
    assert sql(db, "SELECT count(*) FROM tasks WHERE status = 'done'") == [(steps * chains,)]
    (last_done,) = sql(db, "SELECT max(finished_at) FROM tasks")[0]
    # Every idle verdict came from reads that began after the last task finished.
    assert sql(db, "SELECT count(*) FROM snapshots WHERE idle = 1 AND ts < ?", (last_done,)) == [
        (0,)
    ]
    assert sql(db, "SELECT count(*) FROM snapshots WHERE idle = 0") != [(0,)]
    assert [p.exitcode for p in [*workers, scheduler]] == [0] * 5


def test_wait_idle_ignores_a_verdict_older_than_its_call(db: str) -> None:
    s = Scheduler(db, interval=1.0, idle_confirm=1)
    s.open()
    s.step()
    assert is_idle(db)
    # Work enqueued just before wait_idle: the old verdict must not count.
    execute(db, "INSERT INTO tasks (category, pool, created_at) VALUES ('OCR', 'gpu', 0)")
    assert wait_idle(db, timeout=0.3) is False
    cycle = s.step()
    assert not cycle.idle and cycle.not_idle_reason == "1 task pending in OCR"
    s.close()


def test_a_foreign_file_gets_the_same_error_as_a_heartbeat(tmp_path) -> None:
    import pytest

    from sqlmon import DatabaseError, Heartbeat

    foreign = str(tmp_path / "app.db")
    execute(foreign, "CREATE TABLE users (id INTEGER PRIMARY KEY)")
    said = []
    for call in (lambda: Heartbeat(foreign, "w", "cpu"), lambda: is_idle(foreign)):
        with pytest.raises(DatabaseError) as exc:
            call()
        said.append(str(exc.value))
    assert said == [f"{foreign}: not a sqlmon database"] * 2
