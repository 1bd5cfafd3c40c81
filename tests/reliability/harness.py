"""The fault-injection harness: ground truth kept by the driver, and the checks run after every
scenario. sqlmon is judged against what the driver and its workers recorded, never against its
own view: the tasks' lives (from the commit that made each visible to the commit that ended it),
the beats, the kills, all on the shared monotonic clock.

A scenario runs on either backend: its databases come from a `Backend` (SQLite files, or
databases on a PostgreSQL server), and the driver and the pipeline reach them through their
plain drivers (`connect`: sqlite3 or psycopg), never through sqlmon.
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
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tests.pg import Databases

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


_SERVER_CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"


class Clock:
    """Wall clock to monotonic: the snapshots carry wall times, the ground truth monotonic
    ones. The wall clock is the database's (the server's on PostgreSQL, which may be another
    host's). The offset is sampled at start and end; the scenarios leave the clocks alone."""

    def __init__(self, db: str | None = None) -> None:
        self.db = db if db is not None and is_pg(db) else None
        self.reading = 0.0  # s: the widest half round trip of a server clock reading
        self.samples = [self._sample()]

    def _sample(self) -> float:
        if self.db is None:
            m0 = time.monotonic()
            w = time.time()
            m1 = time.monotonic()
        else:
            with connect(self.db) as conn:
                m0 = time.monotonic()
                (w,) = conn.execute(_SERVER_CLOCK).fetchone()
                m1 = time.monotonic()
        self.reading = max(self.reading, (m1 - m0) / 2)
        return float(w) - (m0 + m1) / 2

    def close(self) -> None:
        self.samples.append(self._sample())

    def now(self) -> float:
        """The database's wall clock now (unix s), as the offset at start says."""
        return time.monotonic() + self.samples[0]

    @property
    def error(self) -> float:
        """How far the offset drifted during the scenario (s): added to every margin."""
        return max(self.samples) - min(self.samples) + self.reading + 0.002

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


# -- backends: where a scenario's databases live ----------------------------------------------


def is_pg(db: str) -> bool:
    return db.startswith("postgresql")


class Backend(Protocol):
    """Where a scenario's databases live: `database(folder)` gives a fresh, initialised one."""

    name: str

    def database(self, folder: Path) -> str: ...


class SQLiteFiles:
    name = "sqlite"

    def database(self, folder: Path) -> str:
        from sqlmon import init_db

        folder.mkdir(parents=True, exist_ok=True)
        db = str(folder / "sqlmon.db")
        init_db(db)
        return db


class PostgreSQL:
    """Fresh databases on a PostgreSQL server (tests/pg.py), dropped by `drop()`."""

    name = "postgresql"

    def __init__(self, databases: Databases) -> None:
        self.databases = databases
        self.made: list[str] = []

    def database(self, folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        name = self.databases.create(initialised=True)
        self.made.append(name)
        return self.databases.server.url(name)

    def drop(self) -> None:
        while self.made:
            name = self.made.pop()
            let_go(self.databases.server.url(name))
            self.databases.drop(name)


SQLITE = SQLiteFiles()


def titled(scenario: str, backend: Backend) -> str:
    """A scenario's name in the soak's table: the backend is named unless it is SQLite."""
    return scenario if backend.name == "sqlite" else f"{scenario} ({backend.name})"


class Plain:
    """A connection of the plain driver, as the pipeline or a person holds one: sqlite3 for a
    file, psycopg for a PostgreSQL URL. Each statement commits alone unless inside `begin()`
    ... `commit()`; queries take `?` placeholders on both. On PostgreSQL the session is named
    after this process (`pipeline <pid>`), so that the driver can wait for a killed process's
    sessions to end."""

    def __init__(self, db: str, timeout: float = 30.0) -> None:
        self.pg = is_pg(db)
        if self.pg:
            import psycopg
            import sqlalchemy as sa

            from tests.pg import attached

            server = attached(db)
            self.conn: Any = psycopg.connect(
                host=server.host,
                port=server.port,
                user=server.user,
                dbname=sa.make_url(db).database,
                autocommit=True,
                application_name=f"pipeline {os.getpid()}",
            )
        else:
            self.conn = sqlite3.connect(db, timeout=timeout, isolation_level=None)

    def execute(self, query: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        if self.pg:
            # No parameters, no placeholders: a '%' in the query stays itself.
            return self.conn.execute(query.replace("?", "%s"), params or None)
        return self.conn.execute(query, params)

    def begin(self) -> None:
        # SQLite: take the write lock up front, as any writer must (a deferred transaction
        # that upgrades fails at once when the lock is held). PostgreSQL locks rows as it goes.
        self.execute("BEGIN" if self.pg else "BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Plain:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def connect(db: str, timeout: float = 30.0) -> Plain:
    return Plain(db, timeout)


def sessions_gone(db: str, pid: int, timeout: float = 60.0) -> bool:
    """On PostgreSQL, wait until the server has ended the sessions of process `pid` (killed):
    its pipeline connection and its heartbeat's (worker_status.backend). What it sent before
    its death, a COMMIT included, has then been carried out. SQLite has no server: a dead
    process's writes are in the file or not."""
    if not is_pg(db):
        return True
    backends = [
        int(b.split("@")[0])
        for (b,) in sql(
            db, "SELECT backend FROM worker_status WHERE pid = ? AND backend IS NOT NULL", (pid,)
        )
    ]
    return wait_for(
        lambda: (
            not sql(
                db,
                "SELECT 1 FROM pg_stat_activity WHERE application_name = ? OR pid = ANY(?::int[])",
                (f"pipeline {pid}", backends),
            )
        ),
        timeout,
        every=0.002,
    )


# -- the database, judged from outside --------------------------------------------------------


def sql(db: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of `query` (`?` placeholders), read with the plain driver."""
    if not is_pg(db):
        with connect(db) as conn:
            return [tuple(row) for row in conn.execute(query, params).fetchall()]
    # A PostgreSQL connection costs the server a process, ~10 ms on a loaded machine: the
    # driver keeps one per database for its polls.
    conn = _held.get(db)
    if conn is None or conn.conn.broken or conn.conn.closed:
        conn = _held[db] = connect(db)
    try:
        return [tuple(row) for row in conn.execute(query, params).fetchall()]
    except BaseException:
        _held.pop(db, None)
        conn.close()
        raise


_held: dict[str, Plain] = {}


def let_go(db: str) -> None:
    """Close the driver's held connection to `db` (before the database is dropped)."""
    conn = _held.pop(db, None)
    if conn is not None:
        conn.close()


_inherited: list[Plain] = []


def _forget_held() -> None:
    # A child forked from the driver must never use the driver's connections, nor close them
    # (that ends the server's session, which the driver still uses): it keeps them, unused,
    # until it exits.
    _inherited.extend(_held.values())
    _held.clear()


os.register_at_fork(after_in_child=_forget_held)


def check_database(db: str) -> list[str]:
    """What must hold after any fault: the database is whole and no cycle is half-written."""
    if is_pg(db):
        problems = _server_whole(db)
    else:
        result = sql(db, "PRAGMA integrity_check")
        problems = [] if result == [("ok",)] else [f"integrity_check: {result[:5]}"]
    for query, problem in _WHOLE:
        (count,) = sql(db, query)[0]
        if count:
            problems.append(f"{count} {problem}")
    return problems


def _server_whole(db: str) -> list[str]:
    """On PostgreSQL a client's death cannot damage the files (the server writes them); what
    must hold is that every table and view reads, and that no session of sqlmon's sits inside
    a transaction (an open one holds its locks, and its snapshot holds back vacuum)."""
    from sqlmon.schema import metadata

    problems = []
    views = [v for (v,) in sql(db, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")]
    for name in [*metadata.tables, *views]:
        try:
            sql(db, f'SELECT count(*) FROM "{name}"')
        except Exception as exc:  # noqa: BLE001 (any failure to read is the finding)
            problems.append(f"{name} does not read: {exc}")
    problems += [
        f"{app} (pid {pid}) left {state} for {age:.1f} s"
        for app, pid, state, age in open_transactions(db)
    ]
    return problems


def open_transactions(db: str) -> list[tuple[str, int, str, float]]:
    """sqlmon's sessions on this database that sit inside a transaction, between statements:
    (application name, server pid, state, seconds since the transaction began)."""
    return sql(
        db,
        "SELECT application_name, pid, state,"
        " extract(epoch FROM clock_timestamp() - xact_start)::float8"
        " FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'sqlmon-%' AND state LIKE 'idle in transaction%'",
    )


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


def write_lock_held(db: str) -> bool:
    """Whether a paused scheduler holds the lock of its write transaction, probed twice in a
    row without waiting (a worker's write holds a lock for microseconds; a paused scheduler for
    as long as it is paused). SQLite: BEGIN IMMEDIATE fails at once. PostgreSQL: the idle row,
    which every write transaction of the scheduler updates first, is locked."""
    for attempt in range(2):
        if not _probe_locked(db):
            return False
        if attempt == 0:
            time.sleep(0.005)
    return True


def _probe_locked(db: str) -> bool:
    if is_pg(db):
        import psycopg

        try:
            sql(db, "SELECT 1 FROM scheduler_state FOR UPDATE NOWAIT")
        except psycopg.errors.LockNotAvailable:
            return True
        return False
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


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
    with connect(tasks_db) as conn:
        conn.begin()
        now = time.time()
        ids = [
            conn.execute(
                "INSERT INTO tasks (category, pool, created_at, payload) VALUES (?, ?, ?, ?)"
                " RETURNING id",
                (categories[i % len(categories)], pool, now, str(depth)),
            ).fetchone()[0]
            for i in range(n)
        ]
        conn.commit()
    writer.write("enq", ids=ids)
    return [int(i) for i in ids]


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
