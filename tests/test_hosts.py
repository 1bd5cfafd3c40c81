"""Workers on many hosts, simulated on one machine against a real PostgreSQL server: worker
processes say which host and boot they run on; the scheduler, which cannot check their pids,
judges their deaths by a reboot of their host, by their server connection closing, or by their
silence, and never by their clocks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sqlmon import Scheduler

from . import procs
from .conftest import sql

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]

INTERVAL = 0.2


@contextmanager
def workers(db: str, *specs: tuple[str, str, str | None]) -> Iterator[dict[str, object]]:
    """Worker processes (id, host, boot id), each in OCR and beating every 0.1 s, registered
    before this yields them; killed on the way out."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()  # never set
    started = {}
    for wid, host, boot in specs:
        p = ctx.Process(target=procs.beat_as, args=(db, wid, host, 0, "OCR", stop, boot))
        p.start()
        started[wid] = p
    try:
        deadline = time.monotonic() + 60
        ids = tuple(started)
        while sql(db, "SELECT count(*) FROM worker_status WHERE worker_id = ANY(?)", (list(ids),))[
            0
        ][0] < len(ids):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield started
    finally:
        # Killed, not told to stop: an Event's set() waits on every process waiting for it,
        # and a stopped or killed one never answers.
        for p in started.values():
            p.kill()
            p.join(30)


def steps(sched: Scheduler, seconds: float) -> list:
    """Cycles for `seconds` of real time, at the scheduler's interval."""
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(sched.step())
        time.sleep(INTERVAL)
    return out


def states(db: str) -> dict[str, tuple[str, str | None]]:
    return {
        w: (state, evidence)
        for w, state, evidence in sql(db, "SELECT worker_id, state, evidence FROM worker_states")
    }


def scheduler(db: str, **kw) -> Scheduler:
    settings = dict(interval=INTERVAL, stale_after=1.0, warn_after=2.0, dead_after=30.0)
    sched = Scheduler(db, **{**settings, **kw})
    sched.open()
    return sched


def test_a_rebooted_host_kills_its_older_rows_at_once(pg_db: str) -> None:
    sched = scheduler(pg_db)
    try:
        with workers(pg_db, ("a1", "gpu-1", "boot-A"), ("a2", "gpu-1", "boot-A")) as before:
            sched.step()
            # The machine freezes and comes back rebooted: its old processes never beat again
            # (stopped, so that their connections stay open and show nothing).
            for p in before.values():
                os.kill(p.pid, signal.SIGSTOP)
            with workers(pg_db, ("b1", "gpu-1", "boot-B")):
                cycles = steps(sched, 1.0)  # far inside dead_after (30 s)
        judged = states(pg_db)
        assert judged["a1"] == judged["a2"] == ("dead", "boot_id_changed")
        assert judged["b1"][0] == "alive"
        deaths = [e for c in cycles for e in c.events if e.event == "dead"]
        assert sorted(e.worker_id for e in deaths) == ["a1", "a2"]
        assert all(e.detail == "gpu-1 rebooted since it started" for e in deaths)
    finally:
        sched.close("test over")
    # Their open stretches end at the death the scheduler found.
    closed = sql(pg_db, "SELECT worker_id, outcome FROM worker_stretches WHERE worker_id LIKE 'a%'")
    assert sorted(closed) == [("a1", "dead"), ("a2", "dead")]


def test_a_killed_worker_on_another_host_is_dead_when_its_connection_closes(pg_db: str) -> None:
    sched = scheduler(pg_db)
    try:
        with workers(pg_db, ("w1", "cpu-7", None), ("w2", "cpu-7", None)) as running:
            sched.step()
            assert all(r[0] is not None for r in sql(pg_db, "SELECT backend FROM worker_status"))
            running["w1"].kill()
            running["w1"].join(30)
            cycles = steps(sched, 2.0)
        dead = [e for c in cycles for e in c.events if e.event == "dead"]
        assert [e.worker_id for e in dead] == ["w1"]
        assert dead[0].detail.startswith("its database connection (server pid ")
        assert states(pg_db)["w1"] == ("dead", "backend_gone")
        # Still in OCR when it died, yet proven dead: it does not hold the system from idle.
        assert not any("w1" in (c.not_idle_reason or "") for c in cycles[-3:])
    finally:
        sched.close("test over")


def test_silence_alone_is_a_death_that_still_holds_idle_back(pg_db: str) -> None:
    sched = scheduler(pg_db, dead_after=1.5)
    try:
        with workers(pg_db, ("w", "far-away", None)) as running:
            sched.step()
            os.kill(running["w"].pid, signal.SIGSTOP)  # frozen: its connection stays open
            cycles = steps(sched, 3.0)
            assert states(pg_db)["w"] == ("dead", "no_beats")
            # It may yet be working where nothing can check: never idle meanwhile.
            assert not any(c.idle for c in cycles)
            assert "w silent for" in cycles[-1].not_idle_reason
            assert cycles[-1].not_idle_reason.endswith("in OCR")
            os.kill(running["w"].pid, signal.SIGCONT)
            after = steps(sched, 1.0)
        assert any(e.event == "recovered" for c in after for e in c.events)
    finally:
        sched.close("test over")
