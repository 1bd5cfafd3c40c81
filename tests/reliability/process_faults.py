"""Process faults: kills, pauses, lock holders, fork and
start-up storms, idle races, pid reuse. Each scenario is a function of its counts, returning an
Outcome; the CI tests call them small, scripts/soak.py large. Faults come from outside the code
under test: os.kill on real processes, the sqlite3 shell or psql, the kernel's pid allocator.

A scenario that takes a `backend` runs on SQLite and on PostgreSQL, with the same criteria
except where the backends differ by design (said where it happens).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sqlmon import Heartbeat, Scheduler, TaskTable, is_idle, wait_idle
from sqlmon import config as sqlmon_config

from . import targets
from .harness import (
    SQLITE,
    Activity,
    Backend,
    Clock,
    FileFlag,
    Flag,
    Outcome,
    Truth,
    TruthWriter,
    captured,
    check_database,
    connect,
    enqueue,
    events,
    false_idles,
    is_pg,
    kill,
    make_task_db,
    open_transactions,
    sessions_gone,
    snapshots,
    sql,
    stop_all,
    titled,
    wait_for,
    worker_errors,
    write_lock_held,
)

FORK = multiprocessing.get_context("fork")  # fast restarts; fork_safety covers the others
GUARD = 60.0  # s: waits give up after this (a hang is reported, never a pass criterion)
PG_FASTEST = 0.01  # s: the shortest scheduler interval the idle race polls PostgreSQL at


@dataclass
class Rig:
    """One scenario's database, task table, ground truth and clocks."""

    db: str
    tasks_db: str
    truth: Truth
    clock: Clock
    driver: TruthWriter

    @classmethod
    def make(cls, tmp: Path, *, separate_tasks: bool = False, backend: Backend = SQLITE) -> Rig:
        """`separate_tasks`: on SQLite, the task table in a file of its own, so that the
        pipeline's claims never wait for the monitor's write lock nor it for theirs. On
        PostgreSQL, where locks are per row, the task table is sqlmon's own `tasks` in the same
        database either way, read in the scheduler's snapshot."""
        db = backend.database(tmp)
        separate = separate_tasks and not is_pg(db)
        tasks_db = make_task_db(str(tmp / "tasks.db")) if separate else db
        truth = Truth(tmp / "truth")
        return cls(db, tasks_db, truth, Clock(db), truth.writer("driver"))

    @property
    def backlog(self) -> TaskTable | None:
        return TaskTable(database=self.tasks_db) if self.tasks_db != self.db else None

    def scheduler(self, **kwargs: Any) -> Scheduler:
        kwargs.setdefault("log_level", "ERROR")
        kwargs.setdefault("start_method", "fork")
        return Scheduler(self.db, backlog=self.backlog, **kwargs)

    def worker(
        self, worker_id: str, stop: Any, pool: str = "gpu", ctx: Any = None, **opts: Any
    ) -> Any:
        p = (ctx or FORK).Process(
            target=targets.pipeline_worker,
            args=(self.db, self.tasks_db, worker_id, pool, str(self.truth.dir), stop, opts),
            name=worker_id,
        )
        p.start()
        return p

    def finish(self, out: Outcome, procs: list[Any], terminate: Any = None) -> Outcome:
        """Stop everyone, then the checks every scenario ends with."""
        out.problems += stop_all(procs, terminate)
        self.clock.close()
        out.problems += check_database(self.db)
        out.problems += worker_errors(self.truth)
        for p in procs:
            if p.exitcode not in (0, None, -signal.SIGKILL):
                out.problems.append(f"{p.name} exited with {p.exitcode}")
        return out

    def summaries(self) -> list[dict[str, Any]]:
        return self.truth.records("summary")

    def wall(self, mono: float) -> float:
        return mono + (self.clock.samples[0])


def judging_cycles(
    cycle: Callable[[], Any], limit: int = 12, *, idle: bool = False
) -> Iterator[tuple[int, Any]]:
    """Run `cycle` up to `limit` times, numbering only the cycles that could judge: a late
    one (the driver's own work between steps, a stall of this loaded machine) judges no death
    and no idle by design, so a criterion in cycles does not count it. For an idle verdict
    (`idle`), a late cycle also ends the confirmation streak: the count starts again after it."""
    n = 0
    for _ in range(limit):
        c = cycle()
        if not c.late:
            n += 1
            yield n, c
        elif idle:
            n = 0


def _pending(tasks_db: str) -> int:
    return sql(tasks_db, "SELECT count(*) FROM tasks WHERE status = 'pending'")[0][0]


def _beat_figures(out: Outcome, rig: Rig) -> tuple[int, int]:
    summaries = rig.summaries()
    calls = sum(s["calls"] for s in summaries)
    missed = sum(s["missed"] for s in summaries)
    out.figures["beats"] = calls
    out.figures["missed"] = missed
    if summaries:
        out.figures["beat p99 ms"] = round(1000 * max(s["p99"] for s in summaries), 2)
        out.figures["beat max ms"] = round(1000 * max(s["max"] for s in summaries), 1)
    return calls, missed


# -- 1. scheduler kill storm -----------------------------------------------------------------


def kill_storm(
    tmp: Path,
    *,
    kills: int = 50,
    workers: int = 8,
    interval: float = 0.05,
    deadline: float | None = None,
    seed: int = 1,
) -> Outcome:
    """SIGKILL the scheduler at a random instant after each restart while 8 workers beat at
    20 Hz and drain tasks. After every kill the file is checked whole; at the end, every killed
    run is still open (ended abnormally), the next start says so, no verdict was idle while the
    pipeline had work, and the workers lost at most 0.1% of their beats."""
    rng = random.Random(seed)
    # The task table in its own file, as the README recommends: in the same file, the
    # pipeline's own claims make 8 workers on 2 cores miss ~0.5% of beats with no fault at all.
    rig = Rig.make(tmp, separate_tasks=True)
    out = Outcome("1 scheduler kill storm")
    stop = Flag()
    enqueue(rig.tasks_db, rig.driver, 30 * workers, depth=3)
    procs = [rig.worker(f"w{i}", stop, beat_every=0.05, work=0.05) for i in range(workers)]
    killed_runs: list[int] = []
    before_run = done = 0
    for k in range(kills):
        if deadline is not None and time.monotonic() > deadline:
            break
        if _pending(rig.tasks_db) < 4 * workers:
            enqueue(rig.tasks_db, rig.driver, 10 * workers, depth=3)
        s = rig.scheduler(interval=interval, stale_after=10.0)
        s.start()
        # Anywhere from before the run row exists to several cycles in: mid-read, mid-write.
        time.sleep(rng.uniform(0, 6 * interval))
        kill(s.pid)
        s.join()
        done += 1
        problems = check_database(rig.db)
        if problems:
            out.problems += [f"after kill {k + 1}: {p}" for p in problems]
            break
        run = sql(rig.db, "SELECT run_id, ended_at, end_reason FROM runs WHERE pid = ?", (s.pid,))
        if not run:
            before_run += 1
            continue
        run_id, ended_at, reason = run[-1]
        out.expect(ended_at is None and reason is None, f"killed run {run_id} reads as ended")
        killed_runs.append(run_id)
    out.tried = {"kills": done, "workers": workers}
    out.figures["kills before the run row"] = before_run

    # The next start names the killed run; then the pipeline drains and the verdict comes.
    final = rig.scheduler(interval=interval, stale_after=10.0)
    with captured() as logs:
        run_id = final.open()
    text = " ".join(r.getMessage() for r in logs)
    if killed_runs:
        out.expect(
            f"run {killed_runs[-1]} ended abnormally" in text,
            f"the next start did not report run {killed_runs[-1]} as ended abnormally: {text!r}",
        )
    lines = sum(1 for r in logs if "abnormally" in r.getMessage())
    out.expect(lines <= 1, f"the next start logged {lines} lines about killed runs")
    idle = False
    guard = time.monotonic() + GUARD
    while not idle and time.monotonic() < guard:
        time.sleep(interval)
        idle = final.step().idle
    out.expect(idle, "no idle verdict after the pipeline drained")
    final.close("terminate")
    stopped = stop_all(procs, stop)
    # Each killed run was ended as vanished by the scheduler that took the lease after it.
    unended = sql(
        rig.db,
        "SELECT count(*) FROM runs WHERE end_reason LIKE 'vanished%' AND run_id != ?",
        (run_id,),
    )
    out.expect(
        unended[0][0] == len(killed_runs),
        f"{unended[0][0]} runs ended as vanished, {len(killed_runs)} killed",
    )
    rig.finish(out, procs)
    out.problems += stopped
    out.problems += false_idles(rig.db, Activity.from_truth(rig.truth), rig.clock, 2)
    calls, missed = _beat_figures(out, rig)
    out.expect(calls > 0 and missed <= 0.001 * calls, f"{missed} of {calls} beats missed (> 0.1%)")
    out.figures["snapshots"] = len(snapshots(rig.db))
    return out


# -- 2. worker kills mid-claim and mid-beat ---------------------------------------------------


def _settle_truth(rig: Rig, worker_id: str) -> None:
    """A worker killed between its COMMIT and its ground-truth line left the truth short: the
    task it finished still looks alive, and the successor it enqueued unknown. The driver
    writes both from the database, before the next scheduler cycle reads anything."""
    records = rig.truth.records()
    ended = {r["task"] for r in records if r["k"] in ("done", "reaped")}
    known = {t for r in records if r["k"] == "enq" for t in r["ids"]}
    known |= {r["succ"] for r in records if r["k"] == "done" and r.get("succ") is not None}
    for (task,) in sql(
        rig.tasks_db, "SELECT id FROM tasks WHERE worker_id = ? AND status = 'done'", (worker_id,)
    ):
        if task not in ended:
            rig.driver.write("done", task=task, succ=None, t2=time.monotonic())
    unknown = [
        t
        for (t,) in sql(rig.tasks_db, "SELECT id FROM tasks WHERE status IN ('pending', 'running')")
        if t not in known
    ]
    if unknown:
        rig.driver.write("enq", ids=unknown)


def worker_kills(
    tmp: Path,
    *,
    kills: int = 20,
    workers: int = 4,
    interval: float = 0.05,
    seed: int = 2,
    backend: Backend = SQLITE,
) -> Outcome:
    """SIGKILL workers at random instants of a tight claim / beat / complete loop, with the
    scheduler driven one cycle at a time. Each killed worker is reported dead within three
    judging cycles (the first after a kill usually still sees its last beats move), on the
    evidence of its pid, with the stretch it was in closed at the death; its claimed task keeps
    the system not idle until the driver ends it, and a worker restarted under the same id is a
    new incarnation whose row owes nothing to the old one. The survivors' rows count every beat
    they wrote, and every one they dropped as missed."""
    rng = random.Random(seed)
    rig = Rig.make(tmp, backend=backend)
    out = Outcome(titled("2 worker kills mid-claim and mid-beat", backend))
    # Restarted workers come from a forkserver: this process holds the scheduler's connection
    # by then, and a child forked from it could not use the database safely (sqlmon refuses).
    stop = FileFlag(tmp / "stop")
    restart = multiprocessing.get_context("forkserver")
    # Imported once by the forkserver, if this starts it, rather than by every restart.
    driver = ["psycopg"] if is_pg(rig.db) else []
    multiprocessing.set_forkserver_preload(["sqlmon", "tests.reliability.targets", *driver])
    enqueue(rig.tasks_db, rig.driver, 400 * workers)
    opts = {"beat_every": 0.005, "work": 0.004}
    procs = {f"w{i}": rig.worker(f"w{i}", stop, **opts) for i in range(workers)}
    every = list(procs.values())
    s = rig.scheduler(interval=interval, stale_after=5.0, warn_after=5.0)
    s.open()

    late = 0

    def cycle() -> Any:
        nonlocal late
        time.sleep(interval)
        c = s.step()
        late += c.late
        return c

    wait_for(lambda: sql(rig.db, "SELECT count(*) FROM worker_status")[0][0] == workers, GUARD)
    for _ in range(3):
        cycle()
    orphans: set[int] = set()
    restarts: list[tuple[str, int, int]] = []  # (worker, old pid, new pid)
    unseen = 0
    worst = 0
    for k in range(kills):
        wid = rng.choice(sorted(procs))
        p = procs[wid]
        time.sleep(rng.uniform(0, 0.02))
        seen = sql(rig.db, "SELECT pid FROM worker_status WHERE worker_id = ?", (wid,))
        killed_at = rig.clock.now()
        kill(p.pid)
        p.join()
        # On PostgreSQL the server may still be carrying out what the worker sent just before
        # its death (a COMMIT): the truth is read once its sessions have ended.
        out.expect(sessions_gone(rig.db, p.pid), f"kill {k + 1}: {wid}'s sessions outlived it")
        held = {
            t
            for (t,) in sql(
                rig.tasks_db,
                "SELECT id FROM tasks WHERE status = 'running' AND worker_id = ?",
                (wid,),
            )
        }
        orphans |= held
        if held:
            rig.driver.write("orphan", tasks=sorted(held))
        _settle_truth(rig, wid)
        old = p.pid
        if k % 2 == 0:  # restarted before the scheduler saw the death: replaced
            procs[wid] = p = rig.worker(wid, stop, ctx=restart, **opts)
            every.append(p)
        if seen and seen[0][0] == old:
            judged = 0
            for judged, _ in judging_cycles(cycle):
                dead = sql(
                    rig.db,
                    "SELECT ts, detail FROM worker_events"
                    " WHERE worker_id = ? AND event = 'dead' AND pid = ?",
                    (wid, old),
                )
                if dead:
                    worst = max(worst, judged)
                    out.problems += _death_recorded(rig, wid, old, killed_at, *dead[0])
                    break
                if judged == 3:
                    out.problems.append(
                        f"kill {k + 1}: {wid} (pid {old}) not reported dead in 3 judging cycles"
                    )
                    break
            else:
                out.problems.append(
                    f"kill {k + 1}: {wid} (pid {old}): only {judged} of 12 cycles could judge"
                )
        else:
            unseen += 1  # killed before its first beat: the row still named the older process
        if is_pg(rig.db):
            out.problems += [
                f"kill {k + 1}: {app} (pid {pid}) {state} for {age:.2f} s"
                for app, pid, state, age in open_transactions(rig.db)
            ]
        if k % 2 == 1:  # restarted after the scheduler reported the death
            procs[wid] = p = rig.worker(wid, stop, ctx=restart, **opts)
            every.append(p)
        restarts.append((wid, old, p.pid))
        wait_for(
            lambda w=wid, q=p: (
                sql(rig.db, "SELECT pid FROM worker_status WHERE worker_id = ?", (w,)) == [(q.pid,)]
            ),
            GUARD,
        )
        cycle()
        cycle()
    out.tried = {"kills": kills, "workers": workers}
    out.figures["cycles to dead (worst)"] = worst
    out.figures["kills before first beat"] = unseen
    out.figures["orphaned tasks"] = len(orphans)

    # Every restart is a new incarnation, and says so.
    for wid, old, new in restarts:
        joined = sql(
            rig.db,
            "SELECT detail FROM worker_events WHERE worker_id = ? AND event = 'joined' AND pid = ?",
            (wid, new),
        )
        out.expect(
            any(f"new incarnation (was pid {old})" in (d or "") for (d,) in joined)
            or old not in {e["pid"] for e in events(rig.db, wid)},
            f"{wid}: pid {new} not reported as a new incarnation of pid {old}",
        )

    # Drain: the orphaned tasks alone keep the system not idle.
    wait_for(
        lambda: _pending(rig.tasks_db) == 0,
        GUARD,
    )
    wait_for(
        lambda: (
            sql(rig.db, "SELECT count(*) FROM worker_status WHERE category IS NOT NULL")[0][0] == 0
        ),
        GUARD,
    )
    if orphans:
        for _ in range(4):
            c = cycle()
            out.expect(not c.idle, f"idle while {len(orphans)} orphaned tasks were running")
            out.expect("running" in (c.not_idle_reason or ""), f"reason: {c.not_idle_reason!r}")
        with connect(rig.tasks_db) as conn:
            conn.begin()
            for task in orphans:
                conn.execute("UPDATE tasks SET status = 'failed' WHERE id = ?", (task,))
            t = time.monotonic()
            conn.commit()
        for task in orphans:
            rig.driver.write("reaped", t=t, task=task)
    cycles_to_idle = 0
    for n, c in judging_cycles(cycle, idle=True):
        if c.idle:
            cycles_to_idle = n
            break
    out.expect(
        0 < cycles_to_idle <= 3, f"idle {cycles_to_idle or 'never'} judging cycles after the reap"
    )
    stop.set()
    stopped = stop_all(every)
    for _ in range(2):
        cycle()
    s.close("terminate")
    out.figures["late cycles"] = late
    out.problems += stopped
    rig.finish(out, every)
    out.problems += false_idles(rig.db, Activity.from_truth(rig.truth), rig.clock, 2)
    # Nothing of an old row leaks, and no survivor's beat is lost: each last incarnation's row
    # holds exactly the writes it made (its beats and its close), and counts the ones it
    # dropped.
    for summ in rig.summaries():
        row = sql(
            rig.db,
            "SELECT pid, beats, missed, category, exited_at FROM worker_status WHERE worker_id = ?",
            (summ["who"],),
        )[0]
        if row[0] != summ["pid"]:
            continue
        own = summ["calls"] - summ["missed"] + 1
        out.expect(row[1] == own, f"{summ['who']}: {row[1]} beats in its row, {own} written by it")
        out.expect(
            row[2] == summ["missed"], f"{summ['who']}: {row[2]} missed in its row, {summ['missed']}"
        )
        out.expect(row[3] is None and row[4] is not None, f"{summ['who']}: row {row} after close")
    _beat_figures(out, rig)
    return out


def _death_recorded(
    rig: Rig, wid: str, pid: int, killed_at: float, ts: float, detail: str | None
) -> list[str]:
    """A death judged on the evidence of the pid (gone, or taken over by a new incarnation),
    no earlier than the kill, and the stretch the worker was in closed by the scheduler at
    the death it found: between the kill and the dead event."""
    eps = rig.clock.error
    problems = []
    if detail not in (f"pid {pid} is gone", "replaced by a new incarnation"):
        problems.append(f"{wid} (pid {pid}) judged dead on other evidence: {detail!r}")
    if ts < killed_at - eps:
        problems.append(f"{wid} (pid {pid}) judged dead {killed_at - ts:.3f} s before its kill")
    closed = sql(
        rig.db,
        "SELECT ended FROM worker_stretches WHERE worker_id = ? AND pid = ? AND outcome = 'dead'",
        (wid, pid),
    )
    if len(closed) != 1:
        problems.append(f"{wid} (pid {pid}): {len(closed)} stretches closed at its death")
    elif not killed_at - eps <= closed[0][0] <= ts + eps:
        problems.append(
            f"{wid} (pid {pid}): its stretch closed {closed[0][0] - killed_at:+.3f} s from the"
            f" kill, the death judged {ts - killed_at:+.3f} s from it"
        )
    return problems


# -- 3. lock holders: the scheduler paused in its write, a person in the database's shell -----


# What a person holds from the database's shell: SQLite's one write lock; on PostgreSQL, the
# table (which also stops the scheduler's reads of it), or the workers' rows.
_HOLDS = {
    "sqlite": [("shell", "BEGIN IMMEDIATE")],
    "postgresql": [
        ("lock table", "BEGIN; LOCK TABLE worker_status IN ACCESS EXCLUSIVE MODE"),
        ("row locks", "BEGIN; SELECT worker_id FROM worker_status FOR UPDATE"),
    ],
}


_LOCK_HOLDERS = {
    "sqlite": "3 write lock held: scheduler paused, sqlite3 shell",
    "postgresql": "3 locks held: scheduler paused, psql",
}


@contextmanager
def _person_holds(db: str, statement: str) -> Iterator[bool]:
    """A person in the sqlite3 shell, or in psql, who runs `statement` and holds what it took
    until the block ends (COMMIT). Yields whether the shell said it holds it."""
    if is_pg(db):
        from tests.pg import attached

        server = attached(db)
        where = (
            f"host={server.host} port={server.port} user={server.user}"
            f" dbname={sa.make_url(db).database}"
        )
        argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", where]
    else:
        argv = ["sqlite3", "-cmd", ".timeout 10000", db]
    shell = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert shell.stdin is not None and shell.stdout is not None
    try:
        shell.stdin.write(f"{statement};\nSELECT 'held';\n")
        shell.stdin.flush()
        lines = iter(shell.stdout.readline, "")
        yield any(line.strip() == "held" for line in lines)
        shell.stdin.write("COMMIT;\n")
        shell.stdin.flush()
    finally:
        shell.stdin.close()
        shell.wait(GUARD)


def lock_holders(
    tmp: Path,
    *,
    pause: float = 2.0,
    hold: float = 2.0,
    workers: int = 4,
    interval: float = 0.05,
    seed: int = 3,
    backend: Backend = SQLITE,
) -> Outcome:
    """The scheduler stopped (SIGSTOP) inside its write transaction for `pause` s, then a person
    holding a lock from the database's shell for `hold` s: on SQLite the write lock (BEGIN
    IMMEDIATE in the sqlite3 shell); on PostgreSQL, in psql, the worker_status table (LOCK
    TABLE ... ACCESS EXCLUSIVE), then the workers' rows (SELECT ... FOR UPDATE). Beats wait
    at most their short lock timeout, are counted missed, never raise, and resume once the
    lock goes; the workers' throughput holds; the scheduler goes on cycling (on SQLite it
    skips the writes it cannot make) and never says idle; the cycle after the pause is
    marked late and judges neither dead nor idle."""
    rng = random.Random(seed)
    rig = Rig.make(tmp, separate_tasks=True, backend=backend)
    pg = is_pg(rig.db)
    holds = _HOLDS[backend.name]
    out = Outcome(titled(_LOCK_HOLDERS[backend.name], backend))
    stop, term = Flag(), Flag()
    # Enough work for every window (~200 tasks/s): a drained queue would read as a throughput
    # collapse and allow a true idle verdict. `ahead` is what the windows after the catch need.
    ahead = int(400 * (2 * max(pause, hold) + pause + len(holds) * (hold + 5) + 5))
    enqueue(rig.tasks_db, rig.driver, ahead + int(400 * max(pause, hold)))
    procs = [rig.worker(f"w{i}", stop, beat_every=0.02, work=0.02) for i in range(workers)]
    s = rig.scheduler(interval=interval, stale_after=0.5, warn_after=0.5, terminate=term)
    s.start()
    wait_for(lambda: len(snapshots(rig.db)) >= 10, GUARD)
    time.sleep(max(pause, hold))  # the baseline for throughput

    # a. SIGSTOP the scheduler until it is caught inside its write transaction. Its write holds
    # the lock for a sliver of each cycle, so the catch takes anywhere from a second to minutes:
    # the queue is topped up meanwhile, or it drains and both windows measure an idle pipeline.
    attempts = 0
    while True:
        attempts += 1
        kill(s.pid, signal.SIGSTOP)
        if write_lock_held(rig.db) or attempts >= 5000:
            break
        kill(s.pid, signal.SIGCONT)
        if attempts % 40 == 0 and _pending(rig.tasks_db) < ahead:
            enqueue(rig.tasks_db, rig.driver, ahead)
        time.sleep(rng.uniform(0, interval))
    caught = attempts < 5000
    out.expect(caught, "never caught the scheduler inside its write transaction")
    t0 = time.monotonic()
    time.sleep(pause)
    t1 = time.monotonic()
    kill(s.pid, signal.SIGCONT)
    resumed = rig.wall(t1)
    wait_for(lambda: len([x for x in snapshots(rig.db) if x.ts > resumed]) >= 5, GUARD)
    windows = [("paused", t0, t1, pause)]

    # b. A person holds a lock from the database's shell; once it goes, every worker beats.
    for name, statement in holds:
        time.sleep(max(pause, hold))  # the baseline for this window
        if _pending(rig.tasks_db) < ahead:
            enqueue(rig.tasks_db, rig.driver, ahead)
        with _person_holds(rig.db, statement) as taken:
            out.expect(taken, f"the shell did not take its lock ({name})")
            t2 = time.monotonic()
            time.sleep(hold)
            t3 = time.monotonic()
        windows.append((name, t2, t3, hold))
        beats = dict(sql(rig.db, "SELECT worker_id, beats FROM worker_status"))
        resumed_all = wait_for(
            lambda b=beats: all(
                n > b[w] for w, n in sql(rig.db, "SELECT worker_id, beats FROM worker_status")
            ),
            GUARD,
        )
        out.expect(resumed_all, f"beats did not resume once the lock went ({name})")
        released = rig.wall(t3)
        wait_for(lambda r=released: len([x for x in snapshots(rig.db) if x.ts > r]) >= 5, GUARD)
    stop.set()
    stopped = stop_all(procs)
    rig.finish(out, [*procs, s], term)
    out.problems += stopped
    out.tried = {"pause s": pause, "hold s": hold, "stop attempts": attempts}

    done = [r["t"] for r in rig.truth.records("done")]

    def rate(a: float, b: float) -> float:
        return sum(1 for t in done if a <= t < b) / (b - a)

    for name, a, b, span in windows:
        before = rate(a - span, a)
        ratio = rate(a, b) / before if before else 0.0
        out.figures[f"throughput {name}/before"] = round(ratio, 2)
        # Beats that each waited out the busy timeout cut it to ~10%; the machine's own noise
        # (2 shared cores, one 2 s window against the one before) moves it by a third either
        # way, and a busy neighbour for one window by more: 0.3 tells the two apart.
        out.expect(ratio >= 0.3, f"throughput fell to {ratio:.0%} while the lock was held ({name})")
    calls, missed = _beat_figures(out, rig)
    busy = sqlmon_config.WORKER_BUSY_TIMEOUT
    worst = max((x["max"] for x in rig.summaries()), default=0.0)
    # A beat that waited for the holder would have taken the whole pause.
    out.expect(worst < min(pause, hold) / 2, f"a beat took {worst:.2f} s (busy timeout {busy} s)")
    out.expect(missed > 0, "no beat was counted missed while the lock was held")
    # Every beat is in the row or counted missed (a beat dropped at its lock timeout wrote
    # nothing; one that got through wrote once).
    for summ in rig.summaries():
        row = sql(
            rig.db, "SELECT beats, missed FROM worker_status WHERE worker_id = ?", (summ["who"],)
        )
        own = summ["calls"] - summ["missed"] + 1
        out.expect(
            row == [(own, summ["missed"])],
            f"{summ['who']}: row has (beats, missed) {row}, it wrote {own} and missed"
            f" {summ['missed']}",
        )
    snaps = snapshots(rig.db)
    after = [x for x in snaps if x.ts > resumed]
    if caught and after:
        first = after[0]
        out.expect(first.late == 1, f"the cycle after the pause was not marked late: {first}")
        out.expect(first.idle == 0, "the cycle after the pause judged idle")
        verdicts = sql(
            rig.db,
            "SELECT worker_id, event FROM worker_events WHERE run_id = ? AND ts = ?"
            " AND event IN ('stale', 'dead')",
            (first.run_id, first.ts),
        )
        # On SQLite the workers could not beat while the paused scheduler held the lock: no
        # finding about them can come from the cycle that measured the pause.
        out.expect(not verdicts, f"the cycle after the pause judged {verdicts}")
    dead = sql(rig.db, "SELECT count(*) FROM worker_events WHERE event = 'dead'")[0][0]
    out.expect(dead == 0, f"{dead} dead events for live workers")
    out.figures["stale events"] = sql(
        rig.db, "SELECT count(*) FROM worker_events WHERE event = 'stale'"
    )[0][0]
    for name, a, b, _span in windows[1:]:
        if pg:
            # The scheduler waits at most its lock timeout for what a person holds: its cycles
            # go on (a read that cannot have the table fails, and the cycle says not idle).
            began = sum(1 for x in snaps if rig.wall(a) < x.ts < rig.wall(b))
            out.figures[f"cycles during the hold ({name})"] = began
            out.expect(began >= 2, f"the scheduler hung while the lock was held ({name})")
        else:
            # The first write after the hold counts the cycles it skipped; that cycle began
            # during it.
            skipped = max((x.writes_skipped for x in snaps if x.ts > rig.wall(a)), default=0)
            out.figures["writes skipped"] = skipped
            out.expect(skipped > 0, "the scheduler did not count its skipped writes")
    out.expect(not any(x.idle for x in snaps), "an idle verdict while tasks were pending")
    return out


# -- 6. fork safety -------------------------------------------------------------------------


def fork_safety(
    tmp: Path,
    *,
    fork: int = 180,
    spawn: int = 6,
    forkserver: int = 14,
    beats: int = 5,
    parallel: int = 4,
) -> Outcome:
    """Heartbeats built and used in the parent, then handed to children under fork, spawn and
    forkserver (a spawned child costs a fresh interpreter importing SQLAlchemy, ~2 s of CPU, so
    CI runs few of them; the soak many). Each child's row must carry the child's pid and
    exactly its own writes (its beats went through a connection it opened), and the parent's
    own heartbeat must lose
    nothing (no child used or closed the parent's connection). A handed-on heartbeat, used again
    in the parent, finds its row taken over by the child and leaves it be."""
    rig = Rig.make(tmp)
    out = Outcome("6 fork safety")
    multiprocessing.set_forkserver_preload(["sqlmon", "tests.reliability.targets"])
    plan = ["fork"] * fork + ["spawn"] * spawn + ["forkserver"] * forkserver
    random.Random(6).shuffle(plan)
    parent = Heartbeat(rig.db, "parent", "cpu", min_interval=0.0)
    writes = 0
    for start in range(0, len(plan), parallel):
        batch = []
        for i in range(start, min(len(plan), start + parallel)):
            method = plan[i]
            hb = Heartbeat(rig.db, f"child-{i}", "cpu", min_interval=0.0)
            hb.beat("parent-side")  # the parent opens a connection first: the dangerous case
            p = multiprocessing.get_context(method).Process(
                target=targets.use_inherited,
                args=(hb, beats, str(rig.truth.dir)),
                name=f"child-{i}",
            )
            p.start()
            batch.append((hb, p, method))
            parent.beat(f"p{i % 2}")
            writes += 1
        for hb, p, method in batch:
            p.join(GUARD)
            out.expect(p.exitcode == 0, f"{p.name} ({method}) exited with {p.exitcode}")
            row = sql(
                rig.db,
                "SELECT pid, beats, exited_at FROM worker_status WHERE worker_id = ?",
                (hb.worker_id,),
            )
            expected = [(p.pid, beats + 1)]
            out.expect(
                [r[:2] for r in row] == expected and row[0][2] is not None,
                f"{p.name} ({method}): row {row}, expected pid and writes {expected[0]}",
            )
            # The parent's connection still works after the child: its next write reaches the
            # database and finds the row taken over by the child, which it leaves alone.
            hb.beat("parent-again")
            out.expect(
                (hb.displaced or "").startswith(f"taken over by pid {p.pid} "),
                f"{hb.worker_id}: the parent's write found {hb.displaced!r}, not the child's row",
            )
            hb.close()
    parent.close()
    writes += 1
    out.expect(parent.missed == 0, f"the parent missed {parent.missed} beats")
    got = sql(rig.db, "SELECT beats, pid FROM worker_status WHERE worker_id = 'parent'")
    out.expect(got == [(writes, os.getpid())], f"parent row {got}, {writes} writes made")
    out.tried = {"fork": fork, "spawn": spawn, "forkserver": forkserver}
    out.figures["parent writes"] = writes
    return rig.finish(out, [])


# -- 7. start-up storm ----------------------------------------------------------------------


def startup_storm(tmp: Path, *, storms: int = 3, workers: int = 32, inits: int = 4) -> Outcome:
    """The database does not exist; `workers` workers, the scheduler and `inits` init_db calls
    start at once. The schema is created once and only once (every init_db succeeds, one
    version row), WAL is on, every worker registers and the scheduler sees each join.

    Heartbeat() refuses a missing or uninitialised database (a misconfiguration raises when it
    is built), so a worker that may start before init_db retries construction; so does the
    scheduler's process."""
    out = Outcome("7 start-up storm")
    tries = []
    for n in range(storms):
        where = tmp / f"storm-{n}"
        where.mkdir(parents=True)
        db = str(where / "sqlmon.db")
        truth = Truth(where / "truth")
        go, stop, term = Flag(), Flag(), Flag()
        procs = [
            FORK.Process(target=targets.storm_worker, args=(db, f"w{i}", str(truth.dir), go, stop))
            for i in range(workers)
        ]
        procs += [
            FORK.Process(target=targets.storm_init, args=(db, str(truth.dir), go))
            for _ in range(inits)
        ]
        procs.append(
            FORK.Process(
                target=targets.storm_scheduler,
                args=(db, str(truth.dir), go, term, {"interval": 0.05, "log_level": "ERROR"}),
            )
        )
        for p in procs:
            p.start()
        go.set()

        def joined(path: str = db) -> bool:
            try:
                got = sql(
                    path,
                    "SELECT count(DISTINCT worker_id) FROM worker_events WHERE event = 'joined'",
                )
            except sqlite3.Error:
                return False
            return got[0][0] == workers

        ok = wait_for(joined, GUARD, every=0.05)
        out.expect(ok, f"storm {n}: the scheduler did not see every worker join")
        stop.set()
        out.problems += stop_all(procs, term)
        out.problems += [f"storm {n}: {e}" for e in worker_errors(truth)]
        out.expect(
            all(p.exitcode == 0 for p in procs),
            f"storm {n}: exit codes {[p.exitcode for p in procs]}",
        )
        out.expect(len(truth.records("init")) == inits, f"storm {n}: not every init_db returned")
        out.expect(
            sql(db, "SELECT count(*) FROM sqlmon_alembic_version")[0][0] == 1
            if sql(db, "SELECT 1 FROM sqlite_master WHERE name = 'sqlmon_alembic_version'")
            else False,
            f"storm {n}: the version table is not one row",
        )
        out.expect(sql(db, "PRAGMA journal_mode") == [("wal",)], f"storm {n}: WAL is off")
        with open(db, "rb") as f:
            header = f.read(20)
        out.expect(header[18:20] == b"\x02\x02", f"storm {n}: the file header is not WAL")
        rows = sql(db, "SELECT count(*) FROM worker_status")[0][0]
        out.expect(rows == workers, f"storm {n}: {rows} of {workers} workers registered")
        out.problems += [f"storm {n}: {p}" for p in check_database(db)]
        tries += [r["tries"] for r in truth.records("built")]
    out.tried = {"storms": storms, "workers": workers, "init_db calls": inits}
    out.figures["max construction tries"] = max(tries, default=0)
    return out


# -- 8. idle race, adversarial ----------------------------------------------------------------


def idle_race(
    tmp: Path,
    *,
    intervals: tuple[float, ...] = (0.002, 0.25),
    chains: int = 2,
    depth: int = 60,
    workers: int = 2,
    pause: float = 0.01,
    backend: Backend = SQLITE,
) -> Outcome:
    """Workers pause between a claim's commit and their category write, and inside the
    transaction that completes a task and enqueues its successor; the scheduler polls as fast
    as it can, then slowly. No idle verdict may contradict the ground truth, wait_idle may
    not return before the last task is done, and the naive check (pending = 0 and no busy
    worker, in two statements) must be caught reporting false idles.

    No more chains than workers: then nothing is pending once every chain's task is claimed,
    so a claim's pause while the other worker is not busy either is a window where idle is
    false but looks true (117-300 seen per run). With more chains than workers those windows
    only open in the last few tasks, and the control saw one false idle or none in a run
    about one time in four."""
    out = Outcome(titled("8 idle race, adversarial", backend))
    naive_total = naive_false = verdicts = 0
    if backend.name == "postgresql":
        # A cycle there is several round trips (2-4 ms, 15 ms on a loaded machine): polled
        # faster than it can keep up, every cycle would come late, and a late cycle judges no
        # idle. As fast as it can is then every 10 ms.
        intervals = tuple(max(i, PG_FASTEST) for i in intervals)
    for n, interval in enumerate(intervals):
        rig = Rig.make(tmp / f"interval-{n}", backend=backend)
        stop, term = Flag(), Flag()
        s = rig.scheduler(interval=interval, stale_after=max(1.0, 4 * interval), terminate=term)
        s.start()
        wait_for(lambda r=rig: len(snapshots(r.db)) >= 3, GUARD)
        naive = FORK.Process(
            target=targets.naive_idle_checker, args=(rig.db, rig.tasks_db, str(rig.truth.dir), stop)
        )
        naive.start()
        since = rig.clock.now()
        enqueue(rig.tasks_db, rig.driver, chains, depth=depth)
        procs = [
            rig.worker(f"w{i}", stop, beat_every=0.01, claim_pause=pause, done_pause=pause)
            for i in range(workers)
        ]
        idle = wait_idle(rig.db, timeout=GUARD, since=since)
        returned = time.monotonic()
        out.expect(idle, f"interval {interval}: wait_idle timed out")
        left = sql(
            rig.tasks_db, "SELECT count(*) FROM tasks WHERE status IN ('pending', 'running')"
        )
        out.expect(
            left == [(0,)], f"interval {interval}: wait_idle returned with {left[0][0]} tasks left"
        )
        stop.set()
        rig.finish(out, [*procs, naive, s], term)
        activity = Activity.from_truth(rig.truth)
        out.expect(activity.last_end <= returned, f"interval {interval}: wait_idle returned early")
        out.problems += [
            f"interval {interval}: {p}" for p in false_idles(rig.db, activity, rig.clock, 2)
        ]
        eps = rig.clock.error
        naive = rig.truth.records("naive")
        wrong = sum(1 for r in naive if activity.covers(r["t"] - eps, r["t1"] + eps))
        out.expect(wrong > 0, f"interval {interval}: the naive control saw no false idle")
        naive_total += len(naive)
        naive_false += wrong
        out.figures[f"naive false idles at {interval} s"] = wrong
        verdicts += len(snapshots(rig.db))
    out.tried = {
        "tasks": len(intervals) * chains * (depth + 1),
        "scheduler intervals": len(intervals),
    }
    out.figures.update(
        {
            "scheduler verdicts": verdicts,
            "naive idles": naive_total,
            "naive false idles": naive_false,
        }
    )
    return out


# -- 9. stale idle row -------------------------------------------------------------------------


def stale_idle_row(tmp: Path, *, repeats: int = 3, interval: float = 0.1) -> Outcome:
    """After an idle verdict the main process enqueues a task and the scheduler is killed
    before its next cycle: is_idle and wait_idle never report idle (while the corpse is a
    zombie, after it is reaped); a restarted scheduler writes not idle until the task is done."""
    rig = Rig.make(tmp)
    out = Outcome("9 stale idle row")
    for r in range(repeats):
        s = rig.scheduler(interval=interval, terminate=Flag())
        s.start()
        out.expect(wait_for(lambda: is_idle(rig.db), GUARD), f"repeat {r}: never idle")
        kill(s.pid, signal.SIGSTOP)  # no further cycle can begin
        since = time.time()
        enqueue(rig.tasks_db, rig.driver, 1)
        # Asked about the time since the enqueue, the idle row cannot say idle, dead or alive.
        checks = {
            "is_idle(since)": is_idle(rig.db, since=since),
            "wait_idle()": wait_idle(rig.db, timeout=3 * interval),
        }
        kill(s.pid)
        os.waitid(os.P_PID, s.pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped: a zombie
        checks["is_idle() zombie"] = is_idle(rig.db)
        checks["wait_idle(since=0) zombie"] = wait_idle(rig.db, timeout=3 * interval, since=0.0)
        s.join()
        checks["is_idle() reaped"] = is_idle(rig.db)
        bad = [k for k, v in checks.items() if v]
        out.expect(not bad, f"repeat {r}: idle reported after the enqueue: {bad}")
        term = Flag()
        s2 = rig.scheduler(interval=interval, terminate=term)
        s2.start()
        run = wait_for(
            lambda p=s2.pid: (
                sql(
                    rig.db,
                    "SELECT count(*) FROM snapshots JOIN runs USING (run_id) WHERE runs.pid = ?",
                    (p,),
                )[0][0]
                >= 4
            ),
            GUARD,
        )
        out.expect(run, f"repeat {r}: the restarted scheduler wrote no cycles")
        state = sql(rig.db, "SELECT idle, not_idle_reason FROM scheduler_state")[0]
        out.expect(state[0] == 0 and "pending" in (state[1] or ""), f"repeat {r}: state {state}")
        stop = Flag()
        since = time.time()
        w = rig.worker(f"w{r}", stop)
        out.expect(wait_idle(rig.db, timeout=GUARD, since=since), f"repeat {r}: never idle again")
        stop.set()
        out.problems += stop_all([w, s2], term)
    rig.finish(out, [])
    out.problems += false_idles(rig.db, Activity.from_truth(rig.truth), rig.clock, 2)
    out.tried = {"kills after an idle verdict": repeats}
    return out


# -- 10. flapping load -------------------------------------------------------------------------


def flapping(tmp: Path, *, seconds: float = 6.0, interval: float = 0.1, seed: int = 10) -> Outcome:
    """A task arrives every 0.2-0.6 intervals for `seconds`: no idle verdict during the run;
    idle within idle_confirm + 1 cycles of true quiescence."""
    rng = random.Random(seed)
    rig = Rig.make(tmp)
    out = Outcome("10 flapping load")
    stop, term = Flag(), Flag()
    s = rig.scheduler(interval=interval, terminate=term)
    s.start()
    w = rig.worker("w0", stop, beat_every=0.01, work=0.1 * interval)
    wait_for(lambda: len(snapshots(rig.db)) >= 3, GUARD)
    end = time.monotonic() + seconds
    arrivals = []
    while time.monotonic() < end:
        enqueue(rig.tasks_db, rig.driver, 1)
        arrivals.append(time.monotonic())
        time.sleep(rng.uniform(0.2, 0.6) * interval)
    wait_for(
        lambda: (
            sql(rig.tasks_db, "SELECT count(*) FROM tasks WHERE status IN ('pending', 'running')")[
                0
            ][0]
            == 0
        ),
        GUARD,
    )
    quiet = time.monotonic()
    wait_for(lambda: any(x.idle and x.ts > rig.wall(quiet) for x in snapshots(rig.db)), GUARD)
    stop.set()
    rig.finish(out, [w, s], term)
    activity = Activity.from_truth(rig.truth)
    out.problems += false_idles(rig.db, activity, rig.clock, 2)
    snaps = snapshots(rig.db)
    last = rig.clock.samples[0] + activity.last_end
    first = rig.clock.samples[0] + arrivals[0]
    during = [x for x in snaps if x.idle and first < x.ts < last]
    gap = max((b - a for a, b in zip(arrivals, arrivals[1:], strict=False)), default=0.0)
    out.figures["longest arrival gap / interval"] = round(gap / interval, 2)
    if gap < interval:  # a longer gap could be a true quiescence, judged by false_idles alone
        out.expect(not during, f"{len(during)} idle verdicts during the run")
    # Quiet once the last completion's COMMIT returned (its `t` is taken just before), counted
    # in cycles that could judge: a late cycle says no idle by design.
    # A late cycle also ends the idle confirmation streak: the count starts again after it.
    quiet = rig.wall(max((r["t2"] for r in rig.truth.records("done")), default=0.0))
    after = [x for x in snaps if x.ts > max(last, quiet) + rig.clock.error]
    first_idle = next((i for i, x in enumerate(after) if x.idle), None)
    cycles = None
    if first_idle is not None:
        start = max((i + 1 for i, x in enumerate(after[:first_idle]) if x.late), default=0)
        cycles = after[first_idle].cycle - after[start].cycle + 1
    out.expect(
        cycles is not None and cycles <= 3, f"idle {cycles} judging cycles after quiescence (> 3)"
    )
    out.tried = {"tasks": len(arrivals), "seconds": seconds}
    out.figures["cycles to idle"] = cycles or -1
    out.figures["idle verdicts during run"] = len(during)
    return out


# -- 11. starved or paused workers ----------------------------------------------------------


def paused_workers(
    tmp: Path, *, pause: float = 1.5, interval: float = 0.1, stale_after: float = 0.5
) -> Outcome:
    """One worker stopped with SIGSTOP and one stuck in computation that holds the GIL, each
    for `pause` s: stale no earlier than stale_after after its last beat and within two cycles
    of that, recovered by the first cycle that reads after its first new beat, never dead."""
    rig = Rig.make(tmp)
    out = Outcome("11 starved or paused workers")
    stop, term, stuck, never = Flag(), Flag(), Flag(), Flag()
    s = rig.scheduler(
        interval=interval, stale_after=stale_after, warn_after=stale_after, terminate=term
    )
    s.start()
    procs = [
        FORK.Process(
            target=targets.beating_worker,
            args=(rig.db, wid, str(rig.truth.dir), stop, 0.02, ev, pause),
            name=wid,
        )
        for wid, ev in (("stopped", never), ("gil", stuck))
    ]
    for p in procs:
        p.start()
    wait_for(lambda: len(snapshots(rig.db)) >= 5, GUARD)
    t_stop = time.monotonic()
    kill(procs[0].pid, signal.SIGSTOP)
    stuck.set()
    time.sleep(pause)
    t_cont = time.monotonic()
    kill(procs[0].pid, signal.SIGCONT)
    wait_for(
        lambda: (
            sql(rig.db, "SELECT count(*) FROM worker_events WHERE event = 'recovered'")[0][0] >= 2
        ),
        GUARD,
    )
    time.sleep(3 * interval)
    stop.set()
    rig.finish(out, [*procs, s], term)
    eps = rig.clock.error
    wall = rig.clock.samples[0]
    snaps = snapshots(rig.db)
    beats = rig.truth.records("beat")
    for p in procs:
        mine = [b for b in beats if b["pid"] == p.pid]
        if p.name == "stopped":
            start, end = t_stop, t_cont
        else:
            start = next(r["t"] for r in rig.truth.records("stuck"))
            end = next(r["t"] for r in rig.truth.records("unstuck"))
        last = max(b["t"] for b in mine if b["t"] <= start)
        first = min(b["t"] for b in mine if b["t"] >= end and b["ok"])
        evs = events(rig.db, p.name)
        stale = [e for e in evs if e["event"] == "stale"]
        rec = [e for e in evs if e["event"] == "recovered"]
        out.expect(not [e for e in evs if e["event"] == "dead"], f"{p.name}: reported dead")
        if len(stale) != 1 or len(rec) != 1:
            out.problems.append(f"{p.name}: {len(stale)} stale and {len(rec)} recovered events")
            continue
        ts = stale[0]["ts"] - wall
        out.expect(
            ts >= last + stale_after - eps, f"{p.name}: stale {ts - last:.2f} s after its last beat"
        )
        due = wall + start + stale_after + eps
        late = [x for x in snaps if due < x.ts < stale[0]["ts"]]
        out.expect(len(late) <= 1, f"{p.name}: stale only {len(late) + 1} cycles after it was due")
        reads = [x for x in snaps if x.ts > wall + first + eps]
        out.expect(
            bool(reads) and rec[0]["ts"] <= reads[0].ts,
            f"{p.name}: not recovered by the first cycle after its beats resumed",
        )
        out.figures[f"{p.name}: stale after s"] = round(ts - last, 2)
        out.figures[f"{p.name}: cycles to recovered"] = sum(
            1 for x in snaps if wall + first < x.ts <= rec[0]["ts"]
        )
    out.tried = {"SIGSTOP s": pause, "GIL held s": pause}
    return out


# -- 12. pid reuse -----------------------------------------------------------------------------

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def _take_pid(pid: int, tries: int = 200) -> Any:
    """Start an unrelated process under `pid`, through the kernel's next-pid knob (root)."""
    for _ in range(tries):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        p = FORK.Process(target=targets.sleeper, args=(60.0,), name="unrelated")
        p.start()
        if p.pid == pid:
            return p
        p.kill()
        p.join()
    return None


def pid_reuse(tmp: Path, *, repeats: int = 3, interval: float = 0.05) -> Outcome:
    """A dead worker's pid taken over by an unrelated process before the scheduler looks
    again: still reported dead (pid and start time), within two judging cycles."""
    out = Outcome("12 pid reuse")
    try:
        with open(NS_LAST_PID, "w") as f:
            f.write(open(NS_LAST_PID).read())
    except OSError as exc:
        out.skipped = f"cannot steer pid allocation ({NS_LAST_PID}: {exc.strerror})"
        return out
    rig = Rig.make(tmp)
    s = rig.scheduler(interval=interval, stale_after=5.0, warn_after=5.0)
    s.open()
    reused = 0
    # Workers come from a forkserver: this process holds the scheduler's connection, and a
    # child forked from it could not use the database safely (sqlmon refuses).
    server = multiprocessing.get_context("forkserver")
    for r in range(repeats):
        stop, never = FileFlag(tmp / f"stop-{r}"), FileFlag(tmp / f"never-{r}")
        wid = f"w{r}"
        w = server.Process(
            target=targets.beating_worker,
            args=(rig.db, wid, str(rig.truth.dir), stop, 0.02, never, 0.0),
            name=wid,
        )
        w.start()
        wait_for(
            lambda q=w: (
                sql(rig.db, "SELECT pid FROM worker_status WHERE worker_id = ?", (q.name,))
                == [(q.pid,)]
            ),
            GUARD,
        )
        for _ in range(3):
            time.sleep(interval)
            s.step()
        kill(w.pid)
        w.join()
        other = _take_pid(w.pid)
        if other is None:
            out.problems.append(f"repeat {r}: could not start a process under pid {w.pid}")
            continue
        reused += 1
        cycles = 0

        def cycle() -> Any:
            time.sleep(interval)
            return s.step()

        for c, _ in judging_cycles(cycle):
            if sql(
                rig.db, "SELECT 1 FROM worker_events WHERE worker_id = ? AND event = 'dead'", (wid,)
            ):
                cycles = c
                break
            if c == 2:
                break
        out.expect(
            0 < cycles <= 2,
            f"repeat {r}: pid {w.pid} reused, dead after {cycles or 'no'} judging cycles",
        )
        out.figures["cycles to dead (worst)"] = max(
            out.figures.get("cycles to dead (worst)", 0), cycles
        )
        other.kill()
        other.join()
    s.close("terminate")
    out.tried = {"pids reused": reused}
    return rig.finish(out, [])


# -- the registry scripts/soak.py reads ----------------------------------------------------------

# (scenario, CI counts, soak counts). The soak scales the kill storm by its time budget.
SCENARIOS: list[tuple[Any, dict[str, Any], dict[str, Any]]] = [
    (kill_storm, {"kills": 150}, {"kills": 2000}),
    (worker_kills, {"kills": 20}, {"kills": 150}),
    (lock_holders, {"pause": 2.0, "hold": 2.0}, {"pause": 10.0, "hold": 30.0}),
    (fork_safety, {}, {"fork": 500, "spawn": 20, "forkserver": 100}),
    (startup_storm, {"storms": 3}, {"storms": 10}),
    (idle_race, {}, {"intervals": (0.001, 1.0), "depth": 400}),
    (stale_idle_row, {"repeats": 3}, {"repeats": 20}),
    (flapping, {"seconds": 6.0, "interval": 0.1}, {"seconds": 90.0, "interval": 1.0}),
    (paused_workers, {}, {"pause": 10.0, "interval": 1.0, "stale_after": 3.0}),
    (pid_reuse, {"repeats": 3}, {"repeats": 30}),
]
