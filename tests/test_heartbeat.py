"""The worker side: writes at once on a change, coalesces repeats, never raises once built."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sqlmon import Heartbeat
from sqlmon.errors import DatabaseMissing, NotInitialised

from . import procs
from .conftest import sql, write_lock_held

ROW = (
    "SELECT pid, pool, category, beats, exited_at IS NOT NULL FROM worker_status "
    "WHERE worker_id = ?"
)


def test_beat_writes_changes_at_once_and_coalesces_repeats(db: str) -> None:
    hb = Heartbeat(db, "gpu-1", "gpu", min_interval=60.0)
    assert sql(db, "SELECT count(*) FROM worker_status") == [(0,)]  # building writes nothing
    hb.beat()
    assert sql(db, ROW, ("gpu-1",)) == [(os.getpid(), "gpu", None, 1, 0)]
    hb.beat("OCR")
    assert sql(db, ROW, ("gpu-1",)) == [(os.getpid(), "gpu", "OCR", 2, 0)]
    for _ in range(100):
        hb.beat("OCR")  # inside min_interval: nothing to write
    assert sql(db, ROW, ("gpu-1",)) == [(os.getpid(), "gpu", "OCR", 2, 0)]
    hb.close()
    assert sql(db, ROW, ("gpu-1",)) == [(os.getpid(), "gpu", None, 3, 1)]
    assert hb.missed == 0


def test_repeated_beat_writes_again_after_min_interval(db: str) -> None:
    hb = Heartbeat(db, "w", "cpu", min_interval=0.05)
    hb.beat("A")
    time.sleep(0.06)
    hb.beat("A")
    assert sql(db, "SELECT beats FROM worker_status") == [(2,)]


def test_busy_goes_back_to_idle_even_on_error(db: str) -> None:
    hb = Heartbeat(db, "w", "cpu")
    with pytest.raises(RuntimeError), hb.busy("SUMMARY"):
        assert sql(db, "SELECT category FROM worker_status") == [("SUMMARY",)]
        raise RuntimeError("the task failed")
    assert sql(db, "SELECT category FROM worker_status") == [(None,)]


def test_category_since_marks_the_change_not_the_latest_beat(db: str) -> None:
    hb = Heartbeat(db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    (since,) = sql(db, "SELECT category_since FROM worker_status")[0]
    time.sleep(0.01)
    hb.beat("A")
    assert sql(db, "SELECT category_since, last_heartbeat > category_since FROM worker_status") == [
        (since, 1)
    ]


def test_enum_categories_are_stored_by_name(db: str) -> None:
    import enum

    class TaskCategory(enum.Enum):
        OCR = 3

    hb = Heartbeat(db, "w", "gpu")
    hb.beat(TaskCategory.OCR)
    assert sql(db, "SELECT category FROM worker_status") == [("OCR",)]


def test_misconfiguration_raises_when_built(tmp_path: Path) -> None:
    with pytest.raises(DatabaseMissing):
        Heartbeat(tmp_path / "none.db", "w", "cpu")
    assert not (tmp_path / "none.db").exists()
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(NotInitialised):
        Heartbeat(tmp_path / "empty.db", "w", "cpu")


def test_locked_database_drops_the_beat_counts_it_and_never_raises(db: str) -> None:
    hb = Heartbeat(db, "w", "cpu")
    hb.beat("A")
    with write_lock_held(db):
        hb.beat("B")  # waits its short busy timeout, then drops the beat
        assert hb.missed == 1
    hb.beat("B")  # the next beat tries again
    assert sql(db, "SELECT category FROM worker_status") == [("B",)]
    assert hb.missed == 1


def test_a_lock_let_go_while_the_beat_waits_lets_the_beat_through(db: str, monkeypatch) -> None:
    hb = Heartbeat(db, "w", "cpu")
    hb.beat("A")
    sleeps = []
    with write_lock_held(db) as holder:

        def let_go(seconds: float) -> None:  # the holder lets go during the beat's first wait
            sleeps.append(seconds)
            if holder.in_transaction:
                holder.execute("ROLLBACK")

        monkeypatch.setattr(time, "sleep", let_go)
        hb.beat("B")
    assert sleeps == [20e-6]  # it waited once, in the heartbeat's own first step
    assert hb.missed == 0
    assert sql(db, "SELECT category FROM worker_status") == [("B",)]


def test_a_sleep_that_fails_while_waiting_drops_the_beat(db: str, monkeypatch) -> None:
    hb = Heartbeat(db, "w", "cpu")
    hb.beat("A")
    sleeps = []

    def broken(seconds: float) -> None:  # as seen under libfaketime
        sleeps.append(seconds)
        raise OSError("sleep failed")

    monkeypatch.setattr(time, "sleep", broken)
    with write_lock_held(db):
        hb.beat("B")
        assert sleeps == [20e-6]  # it did try to wait, once
        assert hb.missed == 1


def test_deleted_database_file_never_raises(db: str, tmp_path: Path, monkeypatch) -> None:
    from sqlmon import config

    monkeypatch.setattr(config, "FILE_CHECK_EVERY", 0.0)  # a look before every write
    hb = Heartbeat(db, "w", "cpu")
    hb.beat("A")
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)
    Path(db).mkdir()  # the path now names a directory: every write fails
    hb.beat("B")
    hb.beat("C")
    assert hb.missed == 2


def test_beats_never_go_silently_into_a_deleted_file(db: str, monkeypatch) -> None:
    from sqlmon import config, init_db

    monkeypatch.setattr(config, "FILE_CHECK_EVERY", 0.2)
    hb = Heartbeat(db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)
    hb.beat("B")  # inside the bound: it may go into the deleted inode...
    time.sleep(0.25)
    hb.beat("C")  # ...and the next look finds the file gone: both are counted missed
    assert hb.missed == 2
    assert hb.lost == 1  # the stretch A closed by B went into the gone file
    init_db(db)  # a new file at the same path: the heartbeat moves to it
    hb.beat("D")
    assert hb.missed == 2
    assert sql(db, "SELECT worker_id, category, missed, lost FROM worker_status") == [
        ("w", "D", 2, 1)
    ]
    # The stretch C closed, kept while the file was gone, went in with the first write.
    assert [r[0] for r in sql(db, "SELECT category FROM worker_stretches ORDER BY started")] == [
        "B",
        "C",
    ]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_heartbeat_built_in_parent_works_in_children(db: str, method: str) -> None:
    ctx = multiprocessing.get_context(method)
    hb = Heartbeat(db, "parent", "cpu", min_interval=0.0)
    hb.beat("PARENT")  # the parent holds an open connection across the fork
    results = ctx.Queue()
    children = []
    for i in range(3):
        child_hb = Heartbeat(db, f"{method}-{i}", "cpu", min_interval=0.0)
        children.append(ctx.Process(target=procs.beat_n, args=(child_hb, 50, "C", results)))
    for p in children:
        p.start()
    for p in children:
        p.join(60)
    assert [p.exitcode for p in children] == [0, 0, 0]
    assert sorted(results.get(timeout=5) for _ in children) == [
        (f"{method}-{i}", 0) for i in range(3)
    ]
    rows = sql(
        db,
        "SELECT worker_id, beats, exited_at IS NOT NULL FROM worker_status "
        "WHERE worker_id != 'parent' ORDER BY worker_id",
    )
    assert rows == [(f"{method}-{i}", 51, 1) for i in range(3)]
    hb.beat("AFTER")  # the parent's own connection still works after the children
    assert sql(db, "SELECT category FROM worker_status WHERE worker_id = 'parent'") == [("AFTER",)]
    assert sql(db, "PRAGMA integrity_check") == [("ok",)]


def test_import_sqlmon_loads_neither_typer_nor_tabulate() -> None:
    code = (
        "import sys, sqlmon; "
        "heavy = ('typer', 'tabulate', 'alembic', 'click', 'sqlmon.scheduler', "
        "'prometheus_client', 'http.server', 'sqlmon.serve', 'sqlmon.metrics'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dropped_beats_are_logged_at_most_once_a_minute(db: str, caplog) -> None:
    hb = Heartbeat(db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    with write_lock_held(db), caplog.at_level("WARNING", logger="sqlmon"):
        for i in range(5):
            hb.beat(f"B{i}")
    assert hb.missed == 5
    assert [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()] == [
        "heartbeat of w dropped (1 so far): database is locked"
    ]


def test_stretches_wait_for_a_write_bounded_and_the_loss_is_counted(
    db: str, monkeypatch, caplog
) -> None:
    from sqlmon import config

    monkeypatch.setattr(config, "UNWRITTEN_STRETCHES", 5)
    hb = Heartbeat(db, "w", "cpu", min_interval=0.0)
    hb.beat(None)
    with write_lock_held(db), caplog.at_level("WARNING", logger="sqlmon"):
        for i in range(12):
            hb.beat(f"T{i}")  # each change closes a stretch that cannot be written
    assert hb.missed == 12 and hb.lost == 7  # 12 closed, the newest 5 kept
    hb.beat(None)  # the lock is free: this change's stretch joins the kept ones, 5 at most
    assert hb.lost == 8
    assert sql(db, "SELECT missed, lost FROM worker_status") == [(12, 8)]
    kept = [r[0] for r in sql(db, "SELECT category FROM worker_stretches ORDER BY started")]
    assert kept == ["T7", "T8", "T9", "T10", "T11"]
    losses = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert losses == ["heartbeat of w: 1 stretch(es) lost so far, more than 5 waited for a write"]


def test_the_exit_waits_out_a_longer_lock_and_what_it_cannot_write_is_counted_lost(
    db: str, monkeypatch
) -> None:
    from sqlmon import config

    hb = Heartbeat(db, "w", "cpu", min_interval=0.0)
    hb.beat("A")
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    hb.beat("B")  # dropped after its 0.1 s: stretch A waits for the next write
    assert (hb.missed, hb.lost) == (1, 0)
    # The holder lets go after 0.5 s, longer than a beat waits: the exit still gets in.
    threading.Timer(0.5, holder.execute, ("ROLLBACK",)).start()
    hb.close()
    holder.close()
    assert (hb.missed, hb.lost) == (1, 0)
    assert sql(db, "SELECT category FROM worker_stretches ORDER BY started") == [("A",), ("B",)]
    assert sql(db, "SELECT exited_at IS NOT NULL FROM worker_status") == [(1,)]

    monkeypatch.setattr(config, "CLOSE_BUSY_TIMEOUT", 0.2)
    hb = Heartbeat(db, "v", "cpu", min_interval=0.0)
    hb.beat("A")
    with write_lock_held(db):
        hb.beat("B")
        hb.close()  # never gets the lock: A and B are lost, and counted
    assert (hb.missed, hb.lost) == (2, 2)
