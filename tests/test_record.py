"""The workers' own record of their stretches, read back by the report, the view and the
events, with real worker and scheduler processes. Ground truth is what the worker process
itself timed around each task (tests/procs.py), never what sqlmon says."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from sqlmon import Heartbeat, Scheduler, queries
from sqlmon import db as dbmod
from sqlmon.report import Report, run_report
from tests import procs
from tests.conftest import sql, wait_for

CTX = multiprocessing.get_context("spawn")


def _scheduler(db: str, interval: float = 1.0) -> tuple[Scheduler, object]:
    terminate = CTX.Event()
    s = Scheduler(
        db,
        stop=CTX.Event(),
        terminate=terminate,
        interval=interval,
        stale_after=max(10.0, 3 * interval),
        warn_after=max(10.0, 3 * interval),
        start_method="spawn",
    )
    s.start()
    wait_for(
        lambda: (
            sql(db, "SELECT count(*) FROM snapshots WHERE run_id = (SELECT max(run_id) FROM runs)")[
                0
            ][0]
            >= 1
        )
    )
    return s, terminate


def _stop(s: Scheduler, terminate) -> None:
    terminate.set()
    s.join(30)
    assert s.exitcode == 0


def _report(db: str, run_id: int) -> Report:
    with queries.connect(db) as conn, dbmod.read(conn):
        run = queries.find_run(conn, time.time(), run_id)
        return run_report(conn, run.run_id, state=run.state, end=run.end)


def _alternate(db: str, tmp_path: Path, worker: str, seconds: float, fail_every: int = 0):
    out = str(tmp_path / f"{worker}.json")
    p = CTX.Process(
        target=procs.alternate, args=(db, worker, 0.030, 0.020, seconds, fail_every, out)
    )
    p.start()
    return p, out


def test_utilisation_tasks_and_failures_match_the_workers_own_timing(db: str, tmp_path: Path):
    s, terminate = _scheduler(db)
    p, out = _alternate(db, tmp_path, "w-1", 10.0, fail_every=7)
    p.join(60)
    assert p.exitcode == 0
    time.sleep(1.5)  # a cycle after the worker's exit, so the run holds all of it
    _stop(s, terminate)
    truth = json.loads(Path(out).read_text())
    tasks = truth["tasks"]
    busy = sum(b - a for a, b in tasks)
    wall = truth["ended"] - truth["begun"]
    assert busy / wall == pytest.approx(0.6, abs=0.05)  # the driver's own sanity

    r = _report(db, 1)
    (w,) = r.workers
    assert w.utilisation == pytest.approx(busy / wall, abs=0.02)
    assert w.seen_seconds == pytest.approx(wall, abs=0.05)
    # One busy stretch per task, exactly; the ones that raised are failed, not done.
    assert (w.tasks_done + w.failed, w.failed) == (len(tasks), truth["failed"])
    assert truth["failed"] == len(tasks) // 7
    (k,) = r.categories
    assert (k.category, k.tasks_done, k.failed) == ("WORK", w.tasks_done, w.failed)
    assert k.busy_seconds == pytest.approx(w.busy_seconds)
    assert k.per_second == pytest.approx(len(tasks) * 6 / 7 / k.active_seconds, rel=0.01)
    assert (w.stale_seconds, w.dead_seconds, w.died_in_task) == (0.0, 0.0, 0)

    # The view says the same, per worker: busy seconds and counts.
    ((view_busy, view_done, view_failed),) = sql(
        db,
        "SELECT sum(seconds), sum(outcome = 'ok'), sum(outcome = 'failed') "
        "FROM worker_intervals WHERE run_id = 1 AND worker_id = 'w-1' AND state = 'busy'",
    )
    assert view_busy == pytest.approx(w.busy_seconds, abs=1e-6)
    assert (view_done, view_failed) == (w.tasks_done, w.failed)

    # Events: time order, stretch starts and failures beside the scheduler's liveness events.
    with queries.connect(db) as conn, dbmod.read(conn):
        events = queries.events(conn, run_id=1)
        latest = queries.events(conn, run_id=1, limit=5)
        failures = queries.events(conn, worker="w-1", event="failed")
    assert [(e.ts, e.event) for e in events] == sorted(
        ((e.ts, e.event) for e in events), key=lambda x: x[0]
    )
    kinds = [e.event for e in events]
    assert kinds[0] == "joined" or kinds[0] == "idle"
    assert kinds.count("busy") == len(tasks) and "exited" in kinds
    assert latest == events[-5:]
    assert len(failures) == truth["failed"]
    assert {(e.detail, e.category) for e in failures} == {("ValueError", "WORK")}


def test_a_killed_workers_open_stretch_closes_at_its_detected_death(db: str):
    s, terminate = _scheduler(db, interval=0.2)
    started = CTX.Queue()
    p = CTX.Process(target=procs.busy_then_hang, args=(db, "g-1", started))
    p.start()
    entered = started.get(timeout=30)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    wait_for(
        lambda: sql(db, "SELECT count(*) FROM worker_stretches WHERE outcome = 'dead'") == [(1,)]
    )
    time.sleep(0.5)
    _stop(s, terminate)
    ((category, began, ended),) = sql(
        db, "SELECT category, started, ended FROM worker_stretches WHERE outcome = 'dead'"
    )
    ((death,),) = sql(db, "SELECT ts FROM worker_events WHERE event = 'dead'")
    assert category == "STUCK" and began == pytest.approx(entered, abs=0.05)
    assert ended == pytest.approx(death, abs=1e-6)
    r = _report(db, 1)
    (w,) = r.workers
    assert (w.died_in_task, w.tasks_done, w.failed) == (1, 0, 0)
    assert w.busy_seconds == pytest.approx(death - began, abs=1e-6)
    assert w.dead_seconds == pytest.approx(r.end - death, abs=1e-6)
    assert [d.worker_id for d in r.dead] == ["g-1"]


def test_consecutive_same_category_tasks_are_separate_stretches(db: str):
    hb = Heartbeat(db, "c-1", "cpu", min_interval=0.0)
    hb.beat("A")  # a stretch in A, then a task in A: two stretches
    with hb.busy("A"):
        pass
    for _ in range(200):
        with hb.busy("A"):
            pass
    hb.close()
    rows = sql(db, "SELECT category, outcome FROM worker_stretches ORDER BY started")
    assert [c for c, _ in rows].count("A") == 202
    assert rows[0] == ("A", "ok") and rows[1] == ("A", "ok")


def test_each_run_counts_only_its_own_time_across_a_scheduler_restart(db: str, tmp_path: Path):
    first, _ = _scheduler(db)
    p, out = _alternate(db, tmp_path, "w-1", 6.0)
    time.sleep(2.5)
    os.kill(first.pid, signal.SIGKILL)
    first.join(10)
    second, terminate = _scheduler(db)
    p.join(60)
    assert p.exitcode == 0
    time.sleep(1.5)
    _stop(second, terminate)
    truth = json.loads(Path(out).read_text())
    wall = truth["ended"] - truth["begun"]
    reports = [_report(db, 1), _report(db, 2)]
    assert [r.state for r in reports] == ["vanished", "ended"]
    seen = 0.0
    for r in reports:
        for w in r.workers:
            assert w.seen_seconds <= r.length + 1e-6
            assert w.busy_seconds <= w.seen_seconds
            seen += w.seen_seconds
    assert 0 < seen <= wall + 0.01
    # Between the first run's last sign of life and the second's start, no run counts.
    gap = reports[1].started_at - reports[0].end
    assert seen == pytest.approx(wall - gap, abs=0.1)
    done = sum(w.tasks_done for r in reports for w in r.workers)
    assert done <= len(truth["tasks"])
