"""The read-only queries over a recorded run (tests/recorded.py)."""

from __future__ import annotations

import os
import time

import pytest

from sqlmon import db as dbmod
from sqlmon import queries
from tests.recorded import WEIRD, History, history_copy


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return history_copy(tmp_path_factory, "history")


def test_runs_ended_and_vanished(history: History):
    with queries.connect(history.path) as conn, dbmod.read(conn):
        runs = queries.list_runs(conn, time.time())
    assert [(r.run_id, r.state, r.snapshots, r.end_reason) for r in runs] == [
        (1, "ended", 20, "terminate"),
        (2, "vanished", 2, None),
    ]
    assert runs[0].length == pytest.approx(20.5)
    assert runs[1].length == pytest.approx(2.0)  # to its last snapshot


def test_status_after_the_run(history: History):
    with queries.connect(history.path) as conn, dbmod.read(conn):
        st = queries.status(conn, history.t0 + 40)
    assert st.scheduler is not None and not st.verdict.alive
    states = {w.worker_id: w.state for w in st.workers}
    assert states == {
        "cpu-1": "exited",
        "cpu-2": "dead",
        "gpu-1": "exited",
        "gpu-2": "exited",
        WEIRD: "exited",
    }


def test_history_and_event_filters_are_bound(history: History):
    t0 = history.t0
    with queries.connect(history.path) as conn, dbmod.read(conn):
        snaps = queries.run_snapshots(conn, 1, since=t0 + 5, until=t0 + 9)
        assert [s.cycle for s in snaps] == [5, 6, 7, 8, 9]
        assert [s.cycle for s in queries.run_snapshots(conn, 1, limit=3)] == [18, 19, 20]
        stale = queries.events(conn, worker="gpu-2", event="stale")
        assert [(e.ts - t0, e.run_id) for e in stale] == [(13, 1)]
        assert queries.events(conn, worker="gpu-2' OR '1'='1") == []
        weird = queries.events(conn, worker=WEIRD, event="joined")
        assert [e.worker_id for e in weird] == [WEIRD]


def test_connect_never_creates_a_file(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(Exception, match="no such database"):
        with queries.connect(str(missing)):
            pass
    assert not missing.exists()
    assert os.listdir(tmp_path) == []
