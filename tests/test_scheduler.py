"""The scheduler against real files: one cycle at a time, and as a real process."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from sqlmon import ConfigError, Heartbeat, Scheduler, TaskTable, config, guards, is_idle
from sqlmon import db as dbmod
from sqlmon.demo import claim, complete, enqueue

from . import procs
from .conftest import execute, sql, wait_for, write_lock_held


def add_tasks(db: str, *rows: tuple[str, str, str]) -> None:
    execute(
        db, "INSERT INTO tasks (category, pool, status, created_at) VALUES (?, ?, ?, 0)", list(rows)
    )


def test_one_cycle_records_snapshot_counts_events_and_the_idle_row(db: str) -> None:
    add_tasks(
        db,
        ("OCR", "gpu", "pending"),
        ("OCR", "gpu", "pending"),
        ("OCR", "gpu", "done"),
        ("SUMMARY", "cpu", "running"),
    )
    hb = Heartbeat(db, "cpu-1", "cpu")
    hb.beat("SUMMARY")
    s = Scheduler(db, interval=1.0)
    run_id = s.open(now=1000.0)
    cycle = s.step(now=1001.0, mono=1.0)
    assert cycle.not_idle_reason == (
        "1 task running in SUMMARY; 2 tasks pending in OCR; cpu-1 busy in SUMMARY"
    )
    assert sql(
        db,
        "SELECT run_id, cycle, workers_busy, workers_idle, backlog_pending, "
        "backlog_running, idle FROM snapshots",
    ) == [(run_id, 1, 1, 0, 2, 1, 0)]
    assert sql(
        db, "SELECT pool, category, busy, pending, running FROM snapshot_counts ORDER BY pool"
    ) == [("cpu", "SUMMARY", 1, 0, 1), ("gpu", "OCR", 0, 2, 0)]
    # The scheduler records liveness; what a worker did is the worker's own record.
    assert sql(db, "SELECT worker_id, event, category FROM worker_events ORDER BY id") == [
        ("cpu-1", "joined", "SUMMARY"),
    ]
    assert sql(db, "SELECT run_id, cycle, idle, not_idle_reason FROM scheduler_state") == [
        (run_id, 1, 0, cycle.not_idle_reason)
    ]
    s.close("test")
    assert sql(db, "SELECT end_reason, ended_at IS NOT NULL FROM runs") == [("test", 1)]


def test_idle_after_confirming_cycles_and_honoured_by_is_idle(db: str) -> None:
    s = Scheduler(db, interval=1.0, idle_confirm=2)
    s.open()
    t0 = time.time()
    assert not s.step().idle
    assert not is_idle(db)
    assert s.step(now=time.time(), mono=time.monotonic()).idle
    assert is_idle(db)
    assert is_idle(db, since=t0 - 1)
    assert not is_idle(db, since=time.time())  # no read began after that moment yet
    s.close("done")
    assert not is_idle(db)  # an ended run never reads as idle


def test_a_stale_idle_row_never_reads_as_idle(db: str) -> None:
    s = Scheduler(db, interval=0.2, stale_after=1.0, warn_after=1.0, idle_confirm=1)
    s.open()
    s.step()
    assert is_idle(db)
    # A scheduler on another host that vanished without closing: after max(3 x interval,
    # interval + 2 s) its row is stale.
    execute(db, "UPDATE scheduler_state SET host = 'elsewhere', heartbeat = heartbeat - 2.1")
    assert is_idle(db)
    execute(db, "UPDATE scheduler_state SET heartbeat = heartbeat - 0.2")
    assert not is_idle(db)


def test_write_is_skipped_not_stalled_while_someone_holds_the_lock(db: str) -> None:
    s = Scheduler(db, interval=1.0)
    s.open()
    with write_lock_held(db):
        s.step()
        assert s.writes_skipped == 1
    s.step()
    assert sql(db, "SELECT cycle, writes_skipped FROM snapshots") == [(2, 1)]
    s.close()


def _fill_wal(db: str, kib: int) -> None:
    """Commit about `kib` KiB of tasks from a connection that never checkpoints itself."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    for _ in range(kib // 4):
        conn.execute(
            "INSERT INTO tasks (category, pool, status, created_at, payload)"
            " VALUES ('OCR', 'gpu', 'done', 0, hex(randomblob(2000)))"
        )
    conn.close()


def test_the_scheduler_commit_checkpoints_once_the_wal_holds_enough(db: str, monkeypatch) -> None:
    monkeypatch.setattr(config, "WAL_RESTART_BYTES", 1 << 30)  # only the commit checkpoints
    s = Scheduler(db, interval=1.0)
    s.open()
    s.step()
    before = os.path.getsize(db)
    _fill_wal(db, 1200)  # about 1,200 frames: past SCHEDULER_AUTOCHECKPOINT_PAGES
    assert os.path.getsize(db) == before  # all of it waits in the WAL
    s.step()  # its commit checkpoints (PASSIVE): the tasks move into the database file
    assert os.path.getsize(db) >= before + 1_000_000
    s.close()


def test_a_large_wal_starts_over_in_its_file_then_is_emptied_once_the_load_drops(
    db: str, monkeypatch
) -> None:
    monkeypatch.setattr(config, "WAL_RESTART_BYTES", 256 * 1024)
    modes: list[str | None] = []
    shrink = dbmod.shrink_wal
    monkeypatch.setattr(
        dbmod, "shrink_wal", lambda conn, passes: modes.append(shrink(conn, passes))
    )
    s = Scheduler(db, interval=1.0)
    s.open()
    _fill_wal(db, 600)
    size = os.path.getsize(db + "-wal")
    assert size > 256 * 1024
    # The WAL holds more than the restart size: it starts over, in the same file (emptying a
    # file that writers are appending to costs them more; see db.shrink_wal).
    s.step()
    assert modes == ["RESTART"]
    assert os.path.getsize(db + "-wal") >= size
    # The next cycle finds it holding little, the load gone: the file is given back.
    s.step()
    assert modes == ["RESTART", "TRUNCATE"]
    assert os.path.getsize(db + "-wal") == 0
    assert sql(db, "SELECT count(*) FROM tasks") == [(150,)]
    s.step()  # and the WAL is in use again after its truncation
    assert modes == ["RESTART", "TRUNCATE"]  # a small WAL is left alone
    assert sql(db, "SELECT max(cycle) FROM snapshots") == [(3,)]
    s.close()


@pytest.mark.parametrize("wal_reset_bug", [True, False], ids=["bug", "fixed"])
def test_with_the_wal_reset_bug_no_checkpoint_of_the_scheduler_follows_another_at_once(
    db: str, monkeypatch, wal_reset_bug: bool
) -> None:
    # A PASSIVE checkpoint right after one that copied everything, while another connection's
    # commit starts the WAL over, is how SQLite's WAL-reset bug corrupts a file. On an
    # affected SQLite a shrinking cycle's commit does not checkpoint, a second PASSIVE pass
    # follows only one that left frames behind, and a write kept out by another connection's
    # lock is followed by no checkpoint. On a fixed SQLite the commit checkpoints as ever.
    monkeypatch.setattr(config, "WAL_RESTART_BYTES", 256 * 1024)
    monkeypatch.setattr(guards, "has_wal_reset_bug", lambda: wal_reset_bug)
    file_at_shrink: list[int] = []  # the database file grows when a checkpoint copies into it
    shrink = dbmod.shrink_wal

    def recorded(conn, passes):  # type: ignore[no-untyped-def]
        file_at_shrink.append(os.path.getsize(db))
        return shrink(conn, passes)

    monkeypatch.setattr(dbmod, "shrink_wal", recorded)
    s = Scheduler(db, interval=1.0)
    s.open()
    seen: list[str] = []
    driver = s._conn.connection.driver_connection
    driver.set_trace_callback(lambda sql: seen.append(sql) if "wal_checkpoint(" in sql else None)
    passive, restart, truncate = (
        f"PRAGMA wal_checkpoint({m})" for m in ("PASSIVE", "RESTART", "TRUNCATE")
    )

    s.step()
    before = os.path.getsize(db)
    _fill_wal(db, 1200)  # past both the restart size and the commit's checkpoint threshold
    del seen[:]
    s.step()
    if wal_reset_bug:
        assert file_at_shrink == [before]  # the commit copied nothing
    else:
        assert file_at_shrink[0] >= before + 1_000_000  # the commit checkpointed
    assert seen == [passive, restart]
    del seen[:]
    s.step()
    assert seen == [passive, truncate]
    del seen[:]
    s.step()  # the file given back: only the commit checkpoints (no statement to trace)
    assert seen == []

    # A reader on an old snapshot keeps frames from being copied: a second pass, with the bug.
    _fill_wal(db, 600)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tasks").fetchone()
    del seen[:]
    s.step()
    assert seen == [passive] * (2 if wal_reset_bug else 1)
    reader.execute("COMMIT")
    reader.close()

    # The write kept out by another connection's lock: with the bug, no checkpoint at all.
    del seen[:]
    with write_lock_held(db):
        s.step()
        assert s.writes_skipped == 1
    assert seen == ([] if wal_reset_bug else [passive, restart])
    s.close()


def test_a_failing_prepared_statement_raises_as_sqlalchemy_does(db: str) -> None:
    # The scheduler's except clauses catch SQLAlchemy's errors: a statement run on the
    # driver's cursor must fail the same way.
    engine = dbmod.engine(db, "scheduler")
    with engine.connect() as conn:
        with dbmod.read(conn), pytest.raises(sa.exc.OperationalError, match="no such table"):
            dbmod.Prepared("SELECT * FROM nowhere").rows(conn)
        # Outside a transaction each statement would commit alone: refused.
        with pytest.raises(RuntimeError, match="inside db.read"):
            dbmod.Prepared("SELECT 1").rows(conn)
    engine.dispose()


def test_events_of_a_cycle_whose_write_was_skipped_are_written_with_the_next(db: str) -> None:
    # Found by the worker-kills scenario: a restart judged in a skipped cycle was never said to
    # be a new incarnation, the judge reporting each transition once.
    s = Scheduler(db, interval=1.0)
    s.open()
    hb = Heartbeat(db, "cpu-1", "cpu")
    hb.beat("OCR")
    with write_lock_held(db):
        skipped = s.step()
        assert s.writes_skipped == 1
        assert [e.event for e in skipped.events] == ["joined"]
    s.step()
    assert sql(db, "SELECT cycle, writes_skipped FROM snapshots") == [(2, 1)]
    assert sql(db, "SELECT event, category FROM worker_events ORDER BY id") == [("joined", "OCR")]
    assert sql(db, "SELECT worker_id, state FROM worker_states") == [("cpu-1", "alive")]
    # And those still unwritten when the run ends are written with its end.
    hb.close()
    with write_lock_held(db):
        s.step()
        assert s.writes_skipped == 1
    s.close("test")
    assert sql(db, "SELECT event, category FROM worker_events ORDER BY id")[-1] == ("exited", None)
    assert sql(db, "SELECT worker_id, state FROM worker_states") == [("cpu-1", "exited")]


def test_bad_configuration_is_refused_when_built(db: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="interval must be above 0"):
        Scheduler(db, interval=0)
    with pytest.raises(ConfigError, match="must be above the interval"):
        Scheduler(db, interval=2.0, stale_after=2.0)
    with pytest.raises(ConfigError, match="does not exist"):
        Scheduler(db, backlog=TaskTable("jobs"))
    with pytest.raises(ConfigError, match="has no column state"):
        Scheduler(db, backlog=TaskTable(status="state"))
    with pytest.raises(ConfigError, match="needs pools"):
        TaskTable(pool=None)


def test_task_table_in_its_own_file_is_read_only(db: str, tmp_path: Path) -> None:
    jobs = str(tmp_path / "jobs.db")
    execute(jobs, "CREATE TABLE jobs (job_id INTEGER PRIMARY KEY, kind TEXT, state TEXT)")
    execute(
        jobs,
        "INSERT INTO jobs (kind, state) VALUES (?, ?)",
        [("OCR", "queued"), ("OCR", "working"), ("SUMMARY", "queued"), ("OCR", "finished")],
    )
    before = Path(jobs).read_bytes()
    table = TaskTable(
        "jobs",
        category="kind",
        status="state",
        pool=None,
        id="job_id",
        pending=("queued",),
        running=("working",),
        pools={"OCR": "gpu", "SUMMARY": "cpu"},
        database=jobs,
    )
    s = Scheduler(db, backlog=table)
    s.open()
    with write_lock_held(jobs):  # a claim in progress never delays the monitor
        cycle = s.step()
    s.close()
    assert {k: (c.pending, c.running) for k, c in cycle.counts.items()} == {
        ("cpu", "SUMMARY"): (1, 0),
        ("gpu", "OCR"): (1, 1),
    }
    assert s.writes_skipped == 0
    assert Path(jobs).read_bytes() == before


def test_names_from_configuration_are_quoted(db: str, tmp_path: Path) -> None:
    jobs = str(tmp_path / "odd.db")
    execute(jobs, 'CREATE TABLE "my tasks" ("the kind" TEXT, "select" TEXT, "group" TEXT)')
    execute(jobs, "INSERT INTO \"my tasks\" VALUES ('OCR', 'it''s queued', 'gpu')")
    table = TaskTable(
        "my tasks",
        category="the kind",
        status="select",
        pool="group",
        id=None,
        pending=("it's queued",),
        database=jobs,
    )
    s = Scheduler(db, backlog=table)
    s.open()
    assert s.step().not_idle_reason == "1 task pending in OCR"
    s.close()


def _start(db: str, method: str, **kw):
    ctx = multiprocessing.get_context(method)
    stop, terminate = ctx.Event(), ctx.Event()
    s = Scheduler(
        db,
        stop=stop,
        terminate=terminate,
        interval=0.1,
        stale_after=1.0,
        warn_after=1.0,
        start_method=method,
        **kw,
    )
    s.start()
    return s, stop, terminate


def _cycles(db: str) -> int:
    rows = sql(db, "SELECT max(cycle) FROM snapshots WHERE run_id = (SELECT max(run_id) FROM runs)")
    return rows[0][0] or 0


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process_under_each_start_method_sees_stop_and_ends_on_terminate(
    db: str, method: str, capfd
) -> None:
    s, stop, terminate = _start(db, method)
    wait_for(lambda: _cycles(db) >= 2)
    stop.set()
    wait_for(lambda: sql(db, "SELECT stop_seen FROM scheduler_state") == [(1,)])
    assert s.is_alive()  # stop is the pipeline's business: the monitor keeps watching
    terminate.set()
    s.join(10)
    assert s.exitcode == 0
    assert sql(db, "SELECT end_reason FROM runs") == [("terminate",)]
    if method == "spawn":
        # A fresh interpreter inherits no logging set-up: the HUD still reaches the terminal.
        # (Under fork it goes wherever the parent's handlers go, here pytest's; a forkserver
        # child writes to the stderr of whichever test started the server.)
        assert "cycle 1 | backlog: none | workers: 0 active, 0 idle" in capfd.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_the_run_cleanly(db: str, sig: signal.Signals, capfd) -> None:
    s, _, terminate = _start(db, "spawn")
    wait_for(lambda: _cycles(db) >= 2)
    os.kill(s.pid, sig)
    s.join(10)
    assert s.exitcode == 0
    assert sql(db, "SELECT end_reason FROM runs") == [(sig.name,)]
    assert "Traceback" not in capfd.readouterr().err


def test_sigkill_leaves_the_database_whole_and_the_next_run_starts(db: str, caplog) -> None:
    s, _, terminate = _start(db, "fork")
    wait_for(lambda: is_idle(db))
    os.kill(s.pid, signal.SIGKILL)
    s.join(10)
    assert sql(db, "PRAGMA integrity_check") == [("ok",)]
    assert sql(
        db,
        "SELECT count(*) FROM snapshot_counts WHERE snapshot_id NOT IN (SELECT id FROM snapshots)",
    ) == [(0,)]
    assert sql(db, "SELECT end_reason, ended_at FROM runs") == [(None, None)]
    assert not is_idle(db)  # dead on this host: known at once, before the row goes stale
    s2 = Scheduler(db, interval=0.1, stale_after=1.0, warn_after=1.0)
    with caplog.at_level("WARNING", logger="sqlmon"):
        s2.open()
    assert "run 1 ended abnormally" in caplog.text
    assert sql(db, "SELECT run_id, idle, not_idle_reason FROM scheduler_state") == [
        (2, 0, "scheduler starting")
    ]
    s2.close()


def test_dead_and_stale_workers_with_real_processes(db: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    alive = ctx.Process(target=procs.beat_until, args=(db, "alive", "cpu", None, stop))
    stuck = ctx.Process(target=procs.beat_then_hang, args=(db, "stuck", "gpu", "OCR"))
    doomed = ctx.Process(target=procs.beat_then_hang, args=(db, "doomed", "gpu", "OCR"))
    for p in (alive, stuck, doomed):
        p.start()
    wait_for(lambda: sql(db, "SELECT count(*) FROM worker_status") == [(3,)])
    # Stepped by hand every 0.1 s: a 1 s interval keeps a slow step on a busy machine from
    # counting as a late cycle (which judges no death).
    s = Scheduler(db, interval=1.0, stale_after=1.5, warn_after=1.5)
    s.open()
    try:
        s.step()
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join()
        states = {}
        deadline = time.monotonic() + 20
        while states != {"alive": "idle", "stuck": "stale", "doomed": "dead"}:
            assert time.monotonic() < deadline, states
            time.sleep(0.1)
            states = {w.worker_id: w.state for w in s.step().workers}
        cycle = s.step()
        assert cycle.not_idle_reason.startswith("stuck stale for")
    finally:
        s.close()
        stop.set()
        stuck.kill()
        for p in (alive, stuck):
            p.join(10)
    assert sql(
        db,
        "SELECT worker_id, event FROM worker_events WHERE event IN ('stale', 'dead') "
        "ORDER BY worker_id",
    ) == [("doomed", "dead"), ("stuck", "stale")]


def test_hud_is_logged_through_the_sqlmon_logger(db: str, caplog) -> None:
    add_tasks(db, ("OCR", "gpu", "pending"))
    s = Scheduler(db)
    s.open()
    with caplog.at_level("INFO", logger="sqlmon"):
        s.step()
    s.close()
    assert "cycle 1 | backlog: GPU 1 pending / 0 running | workers: 0 active, 0 idle" in caplog.text
    assert "0 GPU workers busy" not in caplog.text  # nobody busy: no line to say so
    assert "1 task pending in OCR" in caplog.text


def test_hud_every_0_turns_the_hud_off(db: str, caplog) -> None:
    s = Scheduler(db, hud_every=0)
    s.open()
    with caplog.at_level("INFO", logger="sqlmon"):
        for i in range(3):
            s.step(now=1000.0 + i, mono=500.0 + i)
    s.close()
    assert not [r for r in caplog.records if r.name == "sqlmon.hud"]


def test_demo_pipeline_helpers_claim_atomically(db: str) -> None:
    engine = dbmod.engine(db, "tool")
    with engine.connect() as conn:
        enqueue(conn, [{"category": "OCR", "pool": "gpu", "created_at": 0, "payload": "v/1"}])
        task = claim(conn, "gpu-1", "gpu")
        assert task is not None and claim(conn, "gpu-2", "gpu") is None
        complete(conn, task[0], task[1], task[2])
    engine.dispose()
    assert sql(db, "SELECT category, status FROM tasks ORDER BY id") == [
        ("OCR", "done"),
        ("PLATE_SMOOTH", "pending"),
    ]


def test_terminate_can_be_set_after_the_scheduler_was_killed_while_waiting(db: str) -> None:
    import threading

    s, stop, terminate = _start(db, "fork")
    wait_for(lambda: _cycles(db) >= 3)  # from here on it spends most of its time waiting
    os.kill(s.pid, signal.SIGKILL)
    s.join(10)
    # multiprocessing.Event.wait would have left a sleeper that set() waits for, for ever.
    setter = threading.Thread(target=terminate.set, daemon=True)
    setter.start()
    setter.join(10)
    assert not setter.is_alive(), "terminate.set() hangs after the scheduler was killed"
    assert terminate.is_set()


def test_hud_is_logged_no_more_often_than_hud_every(db: str, caplog) -> None:
    s = Scheduler(db, interval=0.1, stale_after=1.0, warn_after=1.0, hud_every=1.0)
    s.open()
    with caplog.at_level("INFO", logger="sqlmon"):
        for i in range(25):  # 2.4 s of cycles at 0.1 s, on a clock passed in
            s.step(now=1000.0 + i / 10, mono=500.0 + i / 10)
    s.close()
    huds = [r for r in caplog.records if r.getMessage().startswith("cycle ")]
    assert [r.getMessage().split(" |")[0] for r in huds] == ["cycle 1", "cycle 11", "cycle 21"]
