"""`run_report` on a history whose every event time is known (see test_inspect_history)."""

from __future__ import annotations

import time

import pytest

from sqlmon import db as dbmod
from sqlmon import queries
from sqlmon.report import BacklogPeak, run_report
from tests.recorded import WEIRD, History, history_copy


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return history_copy(tmp_path_factory, "report")


def _report(history: History, run_id: int):
    with queries.connect(history.path) as conn, dbmod.read(conn):
        run = queries.find_run(conn, time.time(), run_id)
        return run_report(conn, run.run_id, state=run.state, end=run.end)


def test_report_of_the_ended_run(history: History):
    t0 = history.t0
    r = _report(history, 1)
    assert (r.state, r.length, r.end_reason) == ("ended", pytest.approx(20.5), "terminate")
    # Cycle 8 saw the last task done and began confirming; cycle 9 said idle for good.
    assert r.drained_at == pytest.approx(t0 + 9) and r.time_to_drain == pytest.approx(9)
    workers = {w.worker_id: w for w in r.workers}
    assert set(workers) == {"cpu-1", "cpu-2", "gpu-1", "gpu-2", WEIRD}
    gpu1 = workers["gpu-1"]
    assert (gpu1.busy_seconds, gpu1.seen_seconds) == (pytest.approx(3.0), pytest.approx(18.0))
    assert gpu1.utilisation == pytest.approx(3 / 18)
    assert (gpu1.stale_episodes, gpu1.longest_gap) == (0, None)
    assert (gpu1.idle_seconds, gpu1.tasks_done, gpu1.failed) == (pytest.approx(15.0), 1, 0)
    assert workers["cpu-1"].busy_seconds == pytest.approx(2.0)
    gpu2 = workers["gpu-2"]
    assert (gpu2.stale_episodes, gpu2.longest_gap) == (
        1,
        pytest.approx(13.0),  # 3 s stale on top of stale_after (10 s)
    )
    # Its 3 stale seconds are taken out of the idle stretch they fell in.
    assert (gpu2.idle_seconds, gpu2.stale_seconds, gpu2.seen_seconds) == (
        pytest.approx(15.0),
        pytest.approx(3.0),
        pytest.approx(18.0),
    )
    # cpu-2 died in SUMMARY: its stretch counts up to the death found at t0 + 1, in the run.
    cpu2 = workers["cpu-2"]
    assert (cpu2.busy_seconds, cpu2.died_in_task, cpu2.tasks_done) == (pytest.approx(1.0), 1, 0)
    assert cpu2.dead_seconds == pytest.approx(19.5)
    categories = {c.category: c for c in r.categories}
    ocr, summary = categories["OCR"], categories["SUMMARY"]
    assert ocr.busy_seconds == pytest.approx(3.0)
    # Stretches count what workers did (one OCR stretch); the task table what it says.
    assert (ocr.tasks_done, ocr.task_table_done, ocr.failed) == (1, 3, 0)
    assert (summary.tasks_done, summary.task_table_done) == (1, 1)
    assert (ocr.active_seconds, ocr.per_second) == (pytest.approx(3.0), pytest.approx(1 / 3))
    assert r.peaks == [
        BacklogPeak("cpu", "SUMMARY", 1, pytest.approx(t0 + 1)),
        BacklogPeak("gpu", "OCR", 3, pytest.approx(t0 + 1)),
    ]
    assert [(e.worker_id, e.started - t0, e.seconds, e.outcome, e.recovered) for e in r.stale] == [
        ("gpu-2", pytest.approx(13), pytest.approx(3), "recovered", True)
    ]
    assert [(d.worker_id, d.at - t0) for d in r.dead] == [("cpu-2", pytest.approx(1))]
    c = r.cycles
    assert (c.cycles, c.writes_skipped, c.late) == (20, 0, 0)
    # One slow cycle (the first, compiling its statements) can lift the mean above the p95.
    assert 0 < c.mean <= c.max and 0 < c.p95 <= c.max


def test_report_of_a_vanished_run_runs_to_its_last_snapshot(history: History):
    r = _report(history, 2)
    assert r.state == "vanished" and r.end == pytest.approx(history.t0 + 32)
    assert r.cycles.cycles == 2 and r.end_reason is None
