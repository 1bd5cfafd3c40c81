"""The environment-fault scenarios, each a function of its scale (counts, seconds)
that returns a harness.Outcome: what it injected, what it measured, what did not hold. The CI
tests (test_env_faults.py) run them small; scripts/soak.py runs them long.

Faults come from outside the code under test: a full tmpfs, libfiu's fiu-run / fiu-ctrl,
libfaketime, a read transaction held by another program. Ground truth is what each process
records itself (env_targets.py) and what the driver sees in the file with plain sqlite3.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmon import init_db, is_idle

from .harness import Outcome, check_database, sql, wait_for

REPO = Path(__file__).resolve().parents[2]
SQLMON = str(Path(sys.executable).parent / "sqlmon")  # the console script of this environment


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out: str
    log: str

    def result(self) -> dict[str, Any]:
        try:
            return dict(json.loads(Path(self.out).read_text()))
        except (OSError, ValueError):
            return {"raised": f"{self.name} wrote no result (exit {self.popen.returncode})"}

    def children(self) -> list[dict[str, Any]]:
        """The result files of a fleet's forked workers."""
        found = []
        numbered = [p for p in glob.glob(self.out + ".*") if p.rsplit(".", 1)[1].isdigit()]
        for path in sorted(numbered, key=lambda p: int(p.rsplit(".", 1)[1])):
            try:
                found.append(dict(json.loads(Path(path).read_text())))
            except (OSError, ValueError):
                found.append({"raised": f"{path}: no result"})
        return found

    def log_text(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Run:
    """The processes of one scenario, in a work folder, stopped together by a stop file."""

    work: Path
    procs: list[Proc] = field(default_factory=list)

    @property
    def stop_file(self) -> str:
        return str(self.work / "STOP")

    def start(
        self,
        target: str,
        name: str,
        wrap: list[str] | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Proc:
        out, log = str(self.work / f"{name}.json"), str(self.work / f"{name}.log")
        kwargs = {"stop_file": self.stop_file, "out": out, **kwargs}
        cmd = [
            *(wrap or []),
            sys.executable,
            "-m",
            "tests.reliability.env_targets",
            target,
            json.dumps(kwargs),
        ]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        with open(log, "wb") as f:
            popen = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env, cwd=REPO
            )
        proc = Proc(name, popen, out, log)
        self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop everyone; return the problems (a process that raised or had to be killed)."""
        Path(self.stop_file).touch()
        problems = []
        for p in self.procs:
            try:
                p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
                problems.append(f"{p.name} did not stop within {timeout:.0f} s")
        for p in self.procs:
            for r in [p.result(), *p.children()]:
                raised = r.get("raised")
                if raised:
                    problems.append(f"{p.name} raised: {raised.strip().splitlines()[-1]}")
            if "Traceback" in p.log_text():
                problems.append(f"{p.name} printed a traceback: {_last_traceback(p.log_text())}")
        return problems


def _last_traceback(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    tail = [line for line in lines if not line.startswith(" ")]
    return tail[-1] if tail else "?"


@contextlib.contextmanager
def workdir(prefix: str, base: Path | None = None) -> Iterator[Path]:
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"sqlmon-{prefix}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_fleet(run: Run, n: int, env: dict[str, str] | None = None, **kwargs: Any) -> Proc:
    """`n` workers w0..w{n-1}, forked from one process."""
    specs = [{"worker_id": f"w{i}", **kwargs} for i in range(n)]
    return run.start("fleet", "fleet", env=env, workers=specs)


def scheduler_settings(interval: float, stale_after: float) -> dict[str, Any]:
    return {
        "interval": interval,
        "stale_after": stale_after,
        "warn_after": stale_after,
        "hud_every": 3600.0,
    }


def started(db: str, workers: int, timeout: float = 30.0) -> bool:
    """The scheduler has written a cycle and every worker has written a row."""

    def ready() -> bool:
        try:
            cycles = sql(db, "SELECT coalesce(max(cycle), 0) FROM scheduler_state")[0][0]
            rows = sql(db, "SELECT count(*) FROM worker_status")[0][0]
        except sqlite3.Error:
            return False
        return cycles >= 1 and rows >= workers

    return wait_for(ready, timeout)


def cycle_now(db: str) -> int:
    return int(sql(db, "SELECT coalesce(max(cycle), 0) FROM scheduler_state")[0][0])


def count_lines(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def events_of(db: str, kinds: tuple[str, ...]) -> list[tuple[str, str, str | None]]:
    marks = ",".join("?" * len(kinds))
    return [
        (w, e, d)
        for w, e, d in sql(
            db,
            f"SELECT worker_id, event, detail FROM worker_events WHERE event IN ({marks})",
            kinds,
        )
    ]


def beats_accounted(db: str, results: list[dict[str, Any]]) -> list[str]:
    """Every beat a worker tried is either in the file or counted missed: nothing vanishes.
    A worker's beats column counts its successful writes; its last one is close()."""
    problems = []
    stored = dict(sql(db, "SELECT worker_id, beats FROM worker_status"))
    for r in results:
        if "beats" not in r:
            continue
        tried = r["beats"] + 1  # the beats, then close()
        if stored.get(r["worker"], 0) + r["missed"] != tried:
            problems.append(
                f"{r['worker']}: {tried} writes tried, {stored.get(r['worker'])} stored, "
                f"{r['missed']} counted missed"
            )
    return problems


# -- 14: disk full ------------------------------------------------------------------------------


def _fill(path: Path) -> int:
    """Write a ballast file until the filesystem is full; return its size."""
    block = b"\0" * 65536
    size = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                size += f.write(block)
            except OSError:
                break
        with contextlib.suppress(OSError):
            while size % 4096 == 0 and f.write(b"\0" * 512):  # the last crumbs of space too
                size += 512
    return size


def _truncate_wal(db: str) -> None:
    # A WAL reused from its start needs no new space: empty it, as a quiet moment would.
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def disk_full(
    folder: Path,
    workers: int = 4,
    episodes: int = 1,
    full_seconds: float = 4.0,
    interval: float = 0.5,
    every: float = 0.05,
    size: str = "4m",
) -> Outcome:
    """The database on a small tmpfs, filled by a ballast file while the scheduler and workers
    run, then freed: no process raises, misses are counted, the idle row never reads idle while
    the scheduler cannot write, beats resume within a cycle, the file is whole."""
    from sqlmon import config

    o = Outcome("14 disk full")
    with workdir("diskfull", folder) as work:
        mnt = work / "mnt"
        mnt.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            o.skipped = "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): " + (
                mounted.stderr.strip() or f"mount exit {mounted.returncode}"
            )
            return o
        try:
            _disk_full(o, mnt, work, workers, episodes, full_seconds, interval, every, config)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return o


def _disk_full(o, mnt, work, workers, episodes, full_seconds, interval, every, config) -> None:  # type: ignore[no-untyped-def]
    db = str(mnt / "x.db")
    init_db(db)
    run = Run(work)
    sched = run.start(
        "scheduler",
        "scheduler",
        db=db,
        settings=scheduler_settings(interval, 4 * interval),
        scaled={},
    )
    fleet = start_fleet(run, workers, db=db, every=every, category=None)
    fresh = config.fresh_for(interval)
    idle_while_full, resume_cycles, full_hits = [], [], 0
    try:
        if not started(db, workers) or not wait_for(lambda: is_idle(db), 30):
            o.problems.append("the pipeline did not start and settle to idle")
            return
        for _ in range(episodes):
            _truncate_wal(db)
            ballast = mnt / "ballast"
            _fill(ballast)
            t_full = time.monotonic()
            while time.monotonic() - t_full < full_seconds:
                # Past the idle row's freshness, a scheduler that cannot write is never idle.
                if time.monotonic() - t_full > fresh + interval and is_idle(db):
                    idle_while_full.append(round(time.monotonic() - t_full, 2))
                time.sleep(0.05)
            before = dict(sql(db, "SELECT worker_id, beats FROM worker_status"))
            full_hits += sum(1 for _ in before)
            ballast.unlink()
            t_free, cycle_at_free = time.monotonic(), cycle_now(db)
            moved = wait_for(
                lambda before=before: all(
                    b > before[w] for w, b in sql(db, "SELECT worker_id, beats FROM worker_status")
                ),
                30,
            )
            resume_cycles.append(round((time.monotonic() - t_free) / interval, 2))
            written = wait_for(lambda c=cycle_at_free: cycle_now(db) > c, 30)
            o.expect(moved and written, "beats or cycles did not resume after space was freed")
            o.expect(wait_for(lambda: is_idle(db), 30), "never idle again after space was freed")
    finally:
        o.problems.extend(run.stop())
    results = fleet.children()
    missed = sum(r.get("missed", 0) for r in results)
    o.tried = {"episodes": episodes, "workers": workers, "seconds_full": full_seconds * episodes}
    log = sched.log_text()
    skip_lines = count_lines(log, "scheduler skipped writing cycle")
    hb_lines = sum(count_lines(p.log_text(), "heartbeat of .* dropped") for p in run.procs)
    skipped = sql(db, "SELECT coalesce(sum(writes_skipped), 0) FROM snapshots")[0][0]
    o.figures = {
        "beats": sum(r.get("beats", 0) for r in results),
        "missed": missed,
        "writes_skipped": skipped,
        "scheduler_log_lines": skip_lines,
        "worker_log_lines": hb_lines,
        "max_cycles_to_resume": max(resume_cycles, default=0),
    }
    o.expect(missed > 0, "no beat was missed: the disk never filled up")
    o.expect(skipped > 0, "the scheduler never skipped a write: the disk never filled up")
    o.expect(
        not idle_while_full,
        f"is_idle said idle while the scheduler could not write: {idle_while_full}",
    )
    per_minute = episodes * (1 + int(full_seconds // 60))
    o.expect(
        skip_lines <= per_minute, f"{skip_lines} scheduler log lines for {episodes} episode(s)"
    )
    o.expect(hb_lines <= per_minute * workers, f"{hb_lines} heartbeat log lines")
    o.expect(all(c <= 1 for c in resume_cycles), f"beats resumed only after {resume_cycles} cycles")
    o.problems.extend(beats_accounted(db, results))
    o.problems.extend(check_database(db))


# -- 15: injected I/O errors ------------------------------------------------------------------

FIU_POINTS = (
    "posix/io/rw/pread",
    "posix/io/rw/pwrite",
    "posix/io/sync/fsync",
    "posix/io/sync/fdatasync",
)


def _fiu_ctrl(prefix: str, commands: list[str], pids: list[int]) -> list[str]:
    """Send libfiu commands to running processes; return the pids it could not reach."""
    failed = []
    for pid in pids:
        args = ["fiu-ctrl", "-f", prefix]
        for c in commands:
            args += ["-c", c]
        done = subprocess.run([*args, str(pid)], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            failed.append(f"{pid}: {done.stderr.strip()}")
    return failed


def io_errors(
    folder: Path,
    workers: int = 4,
    seconds: float = 5.0,
    probability: float = 0.002,
    interval: float = 0.5,
    every: float = 0.05,
) -> Outcome:
    """Reads, writes and syncs of the scheduler and the workers fail at random (libfiu,
    injected from outside once they run): no process crashes, every error is counted where
    sqlmon counts it, the idle row never says idle on a failed read, the file stays whole."""
    o = Outcome("15 I/O errors")
    if not (shutil.which("fiu-run") and shutil.which("fiu-ctrl")):
        o.skipped = "fiu-run / fiu-ctrl not installed (Debian package fiu-utils)"
        return o
    with workdir("fiu", folder) as work:
        db = str(work / "x.db")
        init_db(db)
        run = Run(work)
        prefix = str(work / "fiu")
        wrap = ["fiu-run", "-x", "-f", prefix]
        sched = run.start(
            "scheduler",
            "scheduler",
            wrap=wrap,
            db=db,
            settings=scheduler_settings(interval, 4 * interval),
            scaled={},
        )
        for i in range(workers):
            run.start(
                "worker", f"w{i}", wrap=wrap, db=db, worker_id=f"w{i}", every=every, category=None
            )
        pids = [p.popen.pid for p in run.procs]
        enable = [f"enable_random name={p},probability={probability}" for p in FIU_POINTS]
        try:
            if not started(db, workers):
                o.problems.append("the pipeline did not start")
                return o
            o.problems.extend(_fiu_ctrl(prefix, enable, pids))
            time.sleep(seconds)
            o.problems.extend(_fiu_ctrl(prefix, [f"disable name={p}" for p in FIU_POINTS], pids))
            o.expect(wait_for(lambda: is_idle(db), 30), "never idle again once the faults stopped")
        finally:
            o.problems.extend(run.stop())
        results = [p.result() for p in run.procs if p.name.startswith("w")]
        log = sched.log_text()
        o.tried = {"workers": workers, "seconds": seconds, "probability": probability}
        o.figures = {
            "beats": sum(r.get("beats", 0) for r in results),
            "missed": sum(r.get("missed", 0) for r in results),
            "writes_skipped": sql(db, "SELECT coalesce(sum(writes_skipped), 0) FROM snapshots")[0][
                0
            ],
            "cycles": sql(db, "SELECT count(*) FROM snapshots")[0][0],
        }
        # The scheduler tells the errors it met, by stage and kind, when its run ends.
        met = re.findall(r"database errors met: (.*)", log)
        for kind, n in re.findall(r"(\w+: [^,]+?) x(\d+)", met[-1] if met else ""):
            o.figures[kind] = int(n)
        o.expect(
            o.figures["missed"] > 0 or bool(met), "no error reached sqlmon: nothing was injected"
        )
        o.problems.extend(beats_accounted(db, results))
        o.problems.extend(check_database(db))
    return o


# -- 13: wall-clock jumps -----------------------------------------------------------------------

CLI_COMMANDS = ("status", "runs", "history", "events", "timeline", "report", "check", "idle")


def _libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


def _clock(lib: str, rc: Path) -> dict[str, str]:
    # libfaketime itself (the faketime wrapper's FAKETIME would take priority over the file):
    # the file can be rewritten mid-run, and the monotonic clock is left alone.
    return {
        "LD_PRELOAD": lib,
        "FAKETIME_TIMESTAMP_FILE": str(rc),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def clock_jumps(
    folder: Path,
    workers: int = 3,
    phase_seconds: float = 1.5,
    interval: float = 0.25,
    every: float = 0.05,
) -> Outcome:
    """±1 hour wall-clock jumps on the scheduler's side (from its start: every worker's last
    beat looks an hour old), on the workers' side, and mid-run: no stale, recovered or dead
    event, cycles and events stay in order, the CLI shows the odd times rather than failing."""
    o = Outcome("13 wall-clock jumps")
    lib = _libfaketime()
    if lib is None or not shutil.which("faketime"):
        o.skipped = "libfaketime not installed (Debian package faketime)"
        return o
    with workdir("clock", folder) as work:
        db = str(work / "x.db")
        init_db(db)
        sched_rc, workers_rc = work / "scheduler.rc", work / "workers.rc"
        workers_rc.write_text("+0\n")
        sched_rc.write_text("+1h\n")
        run = Run(work)
        start_fleet(
            run,
            workers,
            env=_clock(lib, workers_rc),
            db=db,
            every=every,
            category="OCR",
            switch_every=7,
        )
        stale_after = 4 * interval
        try:
            if not wait_for(
                lambda: sql(db, "SELECT count(*) FROM worker_status")[0][0] >= workers, 30
            ):
                o.problems.append("the workers did not start")
                return o
            run.start(
                "scheduler",
                "scheduler",
                env=_clock(lib, sched_rc),
                db=db,
                settings=scheduler_settings(interval, stale_after),
                scaled={},
            )
            if not started(db, workers):
                o.problems.append("the scheduler did not start")
                return o
            jumps = [
                (sched_rc, "+1h"),
                (sched_rc, "-1h"),
                (workers_rc, "+1h"),
                (workers_rc, "-1h"),
                (sched_rc, "+0"),
                (workers_rc, "+0"),
            ]
            time.sleep(phase_seconds)
            for rc, offset in jumps:
                rc.write_text(offset + "\n")
                time.sleep(phase_seconds)
        finally:
            o.problems.extend(run.stop())
        o.tried = {"jumps": 7, "workers": workers, "seconds": phase_seconds * 7}
        bad = events_of(db, ("stale", "recovered", "dead"))
        o.expect(not bad, f"events caused by the jumps: {bad[:5]}")
        cycles = [c for (c,) in sql(db, "SELECT cycle FROM snapshots ORDER BY id")]
        o.expect(cycles == sorted(set(cycles)), "snapshot cycles out of order")
        ts = [t for (t,) in sql(db, "SELECT ts FROM snapshots ORDER BY id")]
        backward = sum(1 for a, b in zip(ts, ts[1:], strict=False) if b < a)
        o.figures = {
            "cycles": len(cycles),
            "events": sql(db, "SELECT count(*) FROM worker_events")[0][0],
            "snapshot_ts_steps_back": backward,
        }
        # Each cycle's events lie inside its window, in order, whatever the workers' clocks said.
        disorder = sql(
            db,
            "SELECT count(*) FROM worker_events a JOIN worker_events b ON b.id > a.id"
            " AND b.worker_id = a.worker_id AND b.run_id = a.run_id"
            " WHERE b.ts < a.ts AND abs(b.ts - a.ts) < 1800",
        )[0][0]
        o.expect(disorder == 0, f"{disorder} pairs of events out of order within a clock phase")
        o.problems.extend(check_database(db))
        o.problems.extend(_cli_shows(db, work, lib))
    return o


def _cli_shows(db: str, work: Path, lib: str) -> list[str]:
    """The odd times recorded by jumped clocks are shown, not fatal: every listing in process
    (fast), and the commands that compare with their own clock under a jumped one."""
    from typer.testing import CliRunner

    from sqlmon.cli import app

    problems = []
    for command in ("runs", "history", "events", "timeline", "report", "status"):
        got = CliRunner().invoke(app, [command, db], env={"COLUMNS": "100"})
        if (
            got.exit_code not in (0, 1)
            or got.exception
            and not isinstance(got.exception, SystemExit)
        ):
            problems.append(f"sqlmon {command}: exit {got.exit_code}: {got.exception!r}")
    for offset, command in (("+1h", "status"), ("-1h", "check")):
        rc = work / f"cli{offset}.rc"
        rc.write_text(offset + "\n")
        got = subprocess.run(
            [SQLMON, command, db],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **_clock(lib, rc), "COLUMNS": "100"},
        )
        if got.returncode not in (0, 1) or "Traceback" in got.stderr:
            last = (got.stderr.strip().splitlines() or [""])[-1]
            problems.append(f"sqlmon {command} at {offset}: exit {got.returncode}: {last}")
    return problems


# -- 4: long readers ----------------------------------------------------------------------------


def _p99(timed: list[list[float]], inside: tuple[float, float], want_inside: bool) -> float:
    values = sorted(s for t, s, _m in timed if (inside[0] <= t <= inside[1]) == want_inside)
    return values[min(len(values) - 1, int(0.99 * len(values)))] if values else 0.0


def _wal_bytes(db: str) -> int:
    try:
        return os.path.getsize(db + "-wal")
    except OSError:
        return 0


def long_reader(
    folder: Path,
    workers: int = 8,
    hold: float = 4.0,
    baseline: float = 2.0,
    interval: float = 0.5,
    every: float = 0.05,
    wal_warn_bytes: int = 1_000_000,
    journal_limit: int = 256 * 1024,
) -> Outcome:
    """Another program holds one read transaction for `hold` s while workers beat: no beat is
    missed (p99 before and during are the figures), the scheduler warns once when the WAL
    passes its threshold, and the WAL shrinks back within two cycles of the reader's end.
    Then `sqlmon watch` runs with the scheduler: neither keeps a read open (a TRUNCATE
    checkpoint, which waits for every reader, gets through)."""
    o = Outcome("4 long readers")
    # Scaled together: the warning, the size past which a caught-up checkpoint restarts the
    # WAL, and the size a restarted WAL is truncated back to.
    scaled = {
        "WAL_WARN_BYTES": wal_warn_bytes,
        "WAL_RESTART_BYTES": journal_limit,
        "JOURNAL_SIZE_LIMIT_BYTES": journal_limit,
    }
    with workdir("reader", folder) as work:
        db = str(work / "x.db")
        init_db(db)
        (work / "s").mkdir()
        (work / "w").mkdir()
        pipeline, monitor = Run(work / "w"), Run(work / "s")
        sched = monitor.start(
            "scheduler",
            "scheduler",
            db=db,
            settings=scheduler_settings(interval, 10.0),
            scaled=scaled,
        )
        fleet = start_fleet(
            pipeline,
            workers,
            db=db,
            every=every,
            category="OCR",
            scaled=scaled,
        )
        peak, shrink_cycles, shrink_intervals, watch_ok = 0, None, None, False
        try:
            if not started(db, workers):
                o.problems.append("the pipeline did not start")
                return o
            time.sleep(baseline)
            reader = pipeline.start("reader", "reader", db=db, hold=hold)
            wait_for(lambda: os.path.exists(reader.out + ".ready"), 30)
            t_start = time.monotonic()
            while not os.path.exists(reader.out):
                peak = max(peak, _wal_bytes(db))
                time.sleep(0.05)
            t_end, cycle_end = time.monotonic(), cycle_now(db)
            if wait_for(lambda: _wal_bytes(db) <= wal_warn_bytes, 30, every=0.01):
                shrink_cycles = cycle_now(db) - cycle_end
                shrink_intervals = round((time.monotonic() - t_end) / interval, 2)
            time.sleep(interval)
        finally:
            o.problems.extend(pipeline.stop())
        try:
            watch_ok = _watch_ends_its_reads(o, db, interval)
        finally:
            o.problems.extend(monitor.stop())
        results = fleet.children()
        # Each worker's first beats open its connection: start-up, not the steady state.
        timed = [pair for r in results for pair in r.get("timed", [])[5:]]
        warnings = count_lines(sched.log_text(), "the WAL has grown")
        o.tried = {"workers": workers, "reader_seconds": hold}
        o.figures = {
            "wal_peak_mb": round(peak / 1e6, 2),
            "p99_ms_before": round(1000 * _p99(timed, (t_start, t_end), False), 2),
            "p99_ms_during": round(1000 * _p99(timed, (t_start, t_end), True), 2),
            "missed": sum(r.get("missed", 0) for r in results),
            "missed_during": sum(m for t, _s, m in timed if t_start <= t <= t_end),
            "wal_warnings": warnings,
            "cycles_to_shrink": shrink_cycles if shrink_cycles is not None else -1,
            "intervals_to_shrink": shrink_intervals if shrink_intervals is not None else -1,
        }
        o.expect(peak > wal_warn_bytes, f"the WAL never passed {wal_warn_bytes} bytes: no test")
        o.expect(
            o.figures["missed_during"] == 0,
            f"{o.figures['missed_during']} beats missed behind the reader",
        )
        o.expect(warnings == 1, f"{warnings} WAL warnings for one long reader")
        # Counted in the scheduler's own cycles (each ends by keeping the WAL small), not in time.
        o.expect(
            shrink_cycles is not None and shrink_cycles <= 2,
            f"the WAL shrank back after {shrink_cycles} cycles, not within two",
        )
        o.expect(watch_ok, "sqlmon watch or the scheduler kept a read transaction open")
        o.problems.extend(beats_accounted(db, results))
        o.problems.extend(check_database(db))
    return o


def _watch_ends_its_reads(o: Outcome, db: str, interval: float) -> bool:
    watch = subprocess.Popen(
        [SQLMON, "watch", db, "--interval", str(interval)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "100"},
    )
    ok = True
    try:
        time.sleep(3 * interval + 2.0)  # its start-up, then a few redraws
        o.expect(watch.poll() is None, f"sqlmon watch exited early ({watch.returncode})")
        conn = sqlite3.connect(db, timeout=10, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            for _ in range(3):
                busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                ok = ok and busy == 0
                time.sleep(interval)
        finally:
            conn.close()
    finally:
        watch.send_signal(signal.SIGINT)
        try:
            _, err = watch.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            watch.kill()
            _, err = watch.communicate()
            o.problems.append("sqlmon watch did not stop on Ctrl-C")
        if b"Traceback" in err:
            o.problems.append("sqlmon watch printed a traceback on Ctrl-C")
    return ok


# -- 5: contention ------------------------------------------------------------------------------

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


def unsafe_transactions(lines: list[str]) -> tuple[int, list[str]]:
    """From "connection<TAB>statement" trace lines: how many transactions wrote, and those that
    wrote without BEGIN IMMEDIATE (a deferred read-then-write fails at once with SQLITE_BUSY)."""
    begun: dict[str, str | None] = {}
    wrote: dict[str, bool] = {}
    checked, unsafe = 0, []
    for line in lines:
        conn, _, sql_text = line.partition("\t")
        words = sql_text.split()
        head = words[0].upper() if words else ""
        if head == "BEGIN":
            begun[conn], wrote[conn] = sql_text.upper(), False
        elif head in ("COMMIT", "END", "ROLLBACK"):
            if begun.get(conn) is not None and wrote.get(conn):
                checked += 1
                if begun[conn] not in ("BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"):
                    unsafe.append(f"{conn}: {begun[conn]} then a write")
            begun[conn] = None
        elif begun.get(conn) is not None and head in _WRITES:
            wrote[conn] = True
    return checked, unsafe


def _read_then_write(db: str, begin: str, tries: int, pause: float) -> tuple[int, float]:
    """The control: `tries` read-then-write transactions; (failures, longest wait of one)."""
    failures, slowest = 0, 0.0
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    try:
        for _ in range(tries):
            t0 = time.monotonic()
            try:
                conn.execute(begin)
                conn.execute("SELECT max(beats) FROM worker_status").fetchone()
                time.sleep(pause)  # other writers commit meanwhile
                conn.execute("UPDATE scheduler_state SET stop_seen = stop_seen")
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                failures += 1
                slowest = max(slowest, time.monotonic() - t0)
                conn.execute("ROLLBACK")
    finally:
        conn.close()
    return failures, slowest


def _status_loop(db: str, until: float, out: list[tuple[int, str]]) -> None:
    while time.monotonic() < until:
        got = subprocess.run(
            [SQLMON, "status", db],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "100"},
        )
        out.append((got.returncode, got.stdout + got.stderr))


def contention(
    folder: Path,
    writers: int = 16,
    hz: float = 50.0,
    seconds: float = 10.0,
    interval: float = 0.5,
    status_loops: int = 2,
    control_tries: int = 20,
) -> Outcome:
    """16 writers at 50 Hz, the scheduler and `sqlmon status` loops: no "database is locked"
    reaches a caller; every transaction that writes begins with BEGIN IMMEDIATE (SQLite's own
    statement trace); a deferred read-then-write control fails at once, proving the harness
    sees that failure, where the same with BEGIN IMMEDIATE waits its turn."""
    import threading

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from . import env_targets

    o = Outcome("5 contention")
    with workdir("contention", folder) as work:
        db = str(work / "x.db")
        traces = work / "traces"
        traces.mkdir()
        listener = env_targets.trace_statements(str(traces / "init.trace"))
        try:
            init_db(db)
        finally:
            event.remove(Engine, "connect", listener)
        run = Run(work)
        run.start(
            "scheduler",
            "scheduler",
            db=db,
            settings=scheduler_settings(interval, 10.0),
            scaled={},
            trace=str(traces / "scheduler.trace"),
        )
        fleet = start_fleet(
            run,
            writers,
            db=db,
            every=1.0 / hz,
            category="OCR",
            switch_every=25,
            trace=str(traces / "workers.trace"),
        )
        statuses: list[tuple[int, str]] = []
        try:
            if not started(db, writers, timeout=60):
                o.problems.append("the pipeline did not start")
                return o
            until = time.monotonic() + seconds
            loops = [
                threading.Thread(target=_status_loop, args=(db, until, statuses))
                for _ in range(status_loops)
            ]
            for t in loops:
                t.start()
            deferred = _read_then_write(db, "BEGIN", control_tries, 0.02)
            immediate = _read_then_write(db, "BEGIN IMMEDIATE", control_tries, 0.02)
            for t in loops:
                t.join()
        finally:
            o.problems.extend(run.stop())
        results = fleet.children()
        lines = [
            line for f in sorted(traces.glob("*.trace")) for line in f.read_text().splitlines()
        ]
        checked, unsafe = unsafe_transactions(lines)
        locked = [text for code, text in statuses if "locked" in text]
        o.tried = {
            "writers": writers,
            "hz": hz,
            "seconds": seconds,
            "status_runs": len(statuses),
            "controls": 2 * control_tries,
        }
        o.figures = {
            "beats": sum(r.get("beats", 0) for r in results),
            "missed": sum(r.get("missed", 0) for r in results),
            "writes_skipped": sql(db, "SELECT coalesce(sum(writes_skipped), 0) FROM snapshots")[0][
                0
            ],
            "write_transactions_traced": checked,
            "deferred_failures": deferred[0],
            "deferred_slowest_s": round(deferred[1], 3),
            "immediate_failures": immediate[0],
        }
        o.expect(checked > 0, "no write transaction was traced: the trace saw nothing")
        o.expect(not unsafe, f"write transactions without BEGIN IMMEDIATE: {unsafe[:3]}")
        o.expect(not locked, f"'database is locked' reached sqlmon status: {locked[:1]}")
        o.expect(all(code in (0, 1) for code, _ in statuses), "sqlmon status failed")
        # The negative control: the harness can see the failure it looks for.
        o.expect(deferred[0] > 0, "the deferred read-then-write control never failed")
        o.expect(deferred[1] < 2.5, "the deferred control waited: SQLITE_BUSY was not at once")
        o.expect(immediate[0] == 0, f"{immediate[0]} BEGIN IMMEDIATE controls failed")
        control_trace = ["c\tBEGIN", "c\tSELECT 1", "c\tUPDATE t SET x = 1", "c\tCOMMIT"]
        o.expect(unsafe_transactions(control_trace)[1] != [], "the trace check flags nothing")
        o.problems.extend(beats_accounted(db, results))
        o.problems.extend(check_database(db))
    return o


# -- for the soak (scripts/soak.py) and the CI tests: (scenario, CI counts, soak counts) ---------

SCENARIOS: list[tuple[Any, dict[str, Any], dict[str, Any]]] = [
    (
        long_reader,
        {"workers": 6, "hold": 3.0, "baseline": 1.5, "interval": 0.5},
        # The real thresholds: a 64 MB warning, a 16 MB journal size limit, two minutes.
        {
            "workers": 16,
            "hold": 120.0,
            "baseline": 10.0,
            "interval": 1.0,
            "wal_warn_bytes": 64 * 1024 * 1024,
            "journal_limit": 16 * 1024 * 1024,
        },
    ),
    (
        contention,
        {"writers": 16, "hz": 50.0, "seconds": 10.0, "interval": 0.5},
        {"writers": 16, "hz": 50.0, "seconds": 60.0, "interval": 1.0, "control_tries": 200},
    ),
    (
        clock_jumps,
        {"workers": 3, "phase_seconds": 1.0, "interval": 0.25},
        {"workers": 8, "phase_seconds": 15.0, "interval": 1.0},
    ),
    (
        disk_full,
        {"workers": 4, "episodes": 1, "full_seconds": 4.0, "interval": 0.5},
        {"workers": 8, "episodes": 5, "full_seconds": 20.0, "interval": 1.0},
    ),
    (
        io_errors,
        {"workers": 3, "seconds": 4.0, "probability": 0.03, "interval": 0.5},
        {"workers": 8, "seconds": 120.0, "probability": 0.002, "interval": 1.0},
    ),
]
