"""The fault-injection harness: ground truth kept by the driver, and the checks run after every
scenario. sqlmon is judged against what the driver and its workers recorded, never against its
own view: the tasks' lives (from the commit that made each visible to the commit that ended it),
the beats, the kills, all on the shared monotonic clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- ground truth ---------------------------------------------------------------------------


class Truth:
    """A folder of JSON-lines files, one per process: each record has a kind and a monotonic
    time `t`. Files are line-buffered, so a SIGKILL loses at most the line being written."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def writer(self, name: str) -> TruthWriter:
        return TruthWriter(self.dir / f"{name}-{os.getpid()}.jsonl")

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.dir.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # the line a SIGKILL cut short
                if kind is None or rec["k"] == kind:
                    out.append(rec)
        return sorted(out, key=lambda r: r["t"])


class TruthWriter:
    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 (held for the process)

    def write(self, kind: str, t: float | None = None, **fields: Any) -> None:
        t = time.monotonic() if t is None else t
        self.file.write(json.dumps({"k": kind, "t": t, "pid": os.getpid(), **fields}) + "\n")


class Clock:
    """Wall clock to monotonic: the snapshots carry wall times, the ground truth monotonic
    ones. The offset is sampled at start and end; the scenarios here leave the wall clock alone."""

    def __init__(self) -> None:
        self.samples = [self._sample()]

    @staticmethod
    def _sample() -> float:
        m0 = time.monotonic()
        w = time.time()
        m1 = time.monotonic()
        return w - (m0 + m1) / 2

    def close(self) -> None:
        self.samples.append(self._sample())

    @property
    def error(self) -> float:
        """How far the offset drifted during the scenario (s): added to every margin."""
        return max(self.samples) - min(self.samples) + 0.002

    def mono(self, wall: float) -> float:
        return wall - sum(self.samples) / len(self.samples)


class Activity:
    """When the pipeline had work, from the ground truth: each task from the moment its
    enqueue had committed to the moment its completing transaction began to commit. Each
    recorded life lies inside the true one, so a verdict found wrong against it is wrong."""

    def __init__(self, lives: Iterable[tuple[float, float]]) -> None:
        self.lives = sorted(lives)
        merged: list[list[float]] = []
        for a, b in self.lives:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.merged = merged
        self._starts = [m[0] for m in merged]

    @classmethod
    def from_truth(cls, truth: Truth) -> Activity:
        start: dict[int, float] = {}
        end: dict[int, float] = {}
        for rec in truth.records():
            if rec["k"] == "enq":
                for task in rec["ids"]:
                    start[task] = rec["t"]
            elif rec["k"] == "done":
                end[rec["task"]] = rec["t"]
                if rec.get("succ") is not None:
                    start[rec["succ"]] = rec["t2"]
            elif rec["k"] == "reaped":  # the driver ended an orphaned task
                end[rec["task"]] = rec["t"]
        return cls((t, end.get(task, float("inf"))) for task, t in start.items())

    @property
    def last_end(self) -> float:
        return self.merged[-1][1] if self.merged else -float("inf")

    def intersects(self, a: float, b: float) -> bool:
        if a > b:
            return False
        i = bisect_right(self._starts, b) - 1
        return i >= 0 and self.merged[i][1] >= a

    def covers(self, a: float, b: float) -> bool:
        i = bisect_right(self._starts, a) - 1
        return i >= 0 and self.merged[i][1] >= b


# -- the database, judged from outside --------------------------------------------------------


def sql(path: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def check_database(path: str) -> list[str]:
    """What must hold after any fault: the file is whole and no cycle is half-written."""
    problems = []
    result = sql(path, "PRAGMA integrity_check")
    if result != [("ok",)]:
        problems.append(f"integrity_check: {result[:5]}")
    for query, problem in _WHOLE:
        (count,) = sql(path, query)[0]
        if count:
            problems.append(f"{count} {problem}")
    return problems


# Each query counts the rows that break one promise of a whole file.
_WHOLE = (
    (
        "SELECT count(*) FROM snapshot_counts c"
        " WHERE NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.id = c.snapshot_id)",
        "snapshot_counts rows without their snapshot",
    ),
    # A snapshot and its counts are written together: the counts must add up to the totals.
    (
        "SELECT count(*) FROM snapshots s WHERE backlog_pending + backlog_running !="
        " (SELECT coalesce(sum(pending + running), 0) FROM snapshot_counts c"
        "  WHERE c.snapshot_id = s.id)",
        "snapshots whose counts do not add up to their totals",
    ),
    # Events are written in the transaction of their cycle's snapshot, and each event's time is
    # kept inside its cycle's window: every event has a snapshot of its run at or after it.
    (
        "SELECT count(*) FROM worker_events e WHERE NOT EXISTS"
        " (SELECT 1 FROM snapshots s WHERE s.run_id = e.run_id AND s.ts >= e.ts)",
        "worker_events from a cycle whose snapshot is missing",
    ),
    (
        "SELECT count(*) FROM scheduler_state st"
        " WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = st.run_id)",
        "idle row(s) naming a run that does not exist",
    ),
)


@dataclass(frozen=True)
class Snap:
    id: int
    run_id: int
    ts: float
    cycle: int
    idle: int
    cycle_seconds: float
    late: int
    writes_skipped: int


def snapshots(path: str, run_id: int | None = None) -> list[Snap]:
    where = "" if run_id is None else f" WHERE run_id = {int(run_id)}"
    return [
        Snap(*row)
        for row in sql(
            path,
            "SELECT id, run_id, ts, cycle, idle, cycle_seconds, late, writes_skipped"
            f" FROM snapshots{where} ORDER BY run_id, cycle",
        )
    ]


def false_idles(path: str, activity: Activity, clock: Clock, idle_confirm: int) -> list[str]:
    """Idle snapshots that the ground truth contradicts.

    A cycle's read happened inside [ts, ts + cycle_seconds]. Its idle verdict is wrong when a
    task lived through that whole window, or, when the first snapshot of its confirmation
    streak is known, when any task lived at any moment between the end of the streak's first
    read and the start of its last (a task that came and went between two reads moves the
    high-water mark). Margins only ever shrink what counts as wrong.
    """
    eps = clock.error
    snaps = snapshots(path)
    by_cycle = {(s.run_id, s.cycle): s for s in snaps}
    wrong = []
    for s in snaps:
        if not s.idle:
            continue
        start = clock.mono(s.ts)
        end = start + s.cycle_seconds
        if activity.covers(start - eps, end + eps):
            wrong.append(
                f"run {s.run_id} cycle {s.cycle}: idle while a task lived through its read"
            )
            continue
        first = by_cycle.get((s.run_id, s.cycle - idle_confirm + 1))
        if first is not None and first is not s:
            a = clock.mono(first.ts) + first.cycle_seconds + eps
            if activity.intersects(a, start - eps):
                wrong.append(
                    f"run {s.run_id} cycle {s.cycle}: idle although a task lived inside its "
                    "confirmation window"
                )
    return wrong


def events(path: str, worker_id: str | None = None) -> list[dict[str, Any]]:
    where = "" if worker_id is None else " WHERE worker_id = ?"
    rows = sql(
        path,
        "SELECT id, run_id, ts, worker_id, event, category, pid, detail FROM worker_events"
        f"{where} ORDER BY id",
        () if worker_id is None else (worker_id,),
    )
    keys = ("id", "run_id", "ts", "worker_id", "event", "category", "pid", "detail")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def worker_errors(truth: Truth) -> list[str]:
    """Every exception a worker process raised (their targets record it before re-raising)."""
    return [
        f"{r.get('who', r['pid'])}: {r['tb'].strip().splitlines()[-1]}"
        for r in truth.records("error")
    ]


# -- the pipeline's own task table (not sqlmon's code) -------------------------------------

TASKS_DDL = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, category TEXT NOT NULL, pool TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', created_at REAL NOT NULL, started_at REAL,
    finished_at REAL, worker_id TEXT, payload TEXT);
CREATE INDEX IF NOT EXISTS ix_tasks_active ON tasks (pool, category, status)
    WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS ix_tasks_claim ON tasks (pool, id) WHERE status = 'pending';
"""


def make_task_db(path: str) -> str:
    """A separate task-table file, as the README recommends for production pipelines."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(TASKS_DDL)
    finally:
        conn.close()
    return path


def enqueue(
    tasks_db: str,
    writer: TruthWriter,
    n: int,
    *,
    pool: str = "gpu",
    categories: tuple[str, ...] = ("OCR",),
    depth: int = 0,
) -> list[int]:
    """Enqueue `n` tasks (each with `depth` successors to come) and record when they became
    visible: after the commit returned."""
    conn = sqlite3.connect(tasks_db, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()
        ids = [
            conn.execute(
                "INSERT INTO tasks (category, pool, created_at, payload) VALUES (?, ?, ?, ?)",
                (categories[i % len(categories)], pool, now, str(depth)),
            ).lastrowid
            for i in range(n)
        ]
        conn.execute("COMMIT")
    finally:
        conn.close()
    writer.write("enq", ids=ids)
    return [int(i) for i in ids if i is not None]


def active_tasks(tasks_db: str) -> int:
    return sql(tasks_db, "SELECT count(*) FROM tasks WHERE status IN ('pending', 'running')")[0][0]


# -- processes ----------------------------------------------------------------------------


class Flag:
    """An Event for processes that may be SIGKILLed: a byte of shared memory, no lock. A
    multiprocessing.Event is a Condition on a lock: a process killed while inside is_set() or
    wait() leaves it held or miscounted, and the next set() blocks forever."""

    def __init__(self) -> None:
        import multiprocessing

        self._v = multiprocessing.get_context("fork").RawValue("b", 0)

    def set(self) -> None:
        self._v.value = 1

    def clear(self) -> None:
        self._v.value = 0

    def is_set(self) -> bool:
        return bool(self._v.value)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._v.value:
            left = 0.005 if deadline is None else min(0.005, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True


class FileFlag:
    """A Flag that any start method can carry (a path, not shared memory), for processes
    started from a forkserver: set when the file exists."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def set(self) -> None:
        open(self.path, "a").close()

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.005 if deadline is None else min(0.005, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_all(procs: Iterable[Any], terminate: Any = None, timeout: float = 20.0) -> list[str]:
    """Set terminate, join everyone; a process that will not end is killed and reported."""
    if terminate is not None:
        terminate.set()
    problems = []
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            problems.append(f"{p.name} did not end within {timeout:.0f} s of terminate")
            p.kill()
            p.join()
    return problems


def wait_for(predicate: Any, timeout: float, every: float = 0.01) -> bool:
    """Poll `predicate` until true; False after `timeout` s (a guard against hangs, not a
    pass criterion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


@contextmanager
def captured(logger: str = "sqlmon") -> Iterator[list[logging.LogRecord]]:
    """The log records that `logger` emits inside the block (for an in-process scheduler)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(logging.DEBUG)
    log = logging.getLogger(logger)
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


# -- outcomes -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a scenario tried (the faults it injected), what it measured, what broke."""

    scenario: str
    tried: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def held(self) -> bool:
        return not self.problems

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
    )


def render(outcomes: list[Outcome], seconds: float) -> str:
    """The soak's table: one row per scenario run."""
    from tabulate import tabulate

    rows = [
        [
            o.scenario,
            _fmt(o.tried),
            _fmt(o.figures),
            "skipped: " + o.skipped
            if o.skipped
            else "yes"
            if o.held
            else "NO: " + "; ".join(o.problems[:3]),
        ]
        for o in outcomes
    ]
    table = tabulate(rows, headers=["scenario", "tried", "figures", "held"], tablefmt="github")
    return f"{table}\n\n{len(outcomes)} scenario runs in {seconds:.0f} s"
