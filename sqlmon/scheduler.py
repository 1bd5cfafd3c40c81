"""The scheduler: a process that watches worker_status and the backlog about once a second,
records history, logs the HUD and keeps the idle row. It never writes worker_status or the
task table, and never sets a shutdown flag.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

import sqlalchemy as sa

from . import config, flags, hud, identity, liveness, store, stretches
from . import db as dbmod
from .backlog import TaskTable
from .errors import ConfigError, DatabaseError, LeaseLost, SchedulerRunning, SqlmonError
from .judge import Close, Cycle, Event, Judge, Judged, Observation
from .migrate import check_database, describe
from .pacing import pace
from .walkeeper import WalKeeper

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by the SIGTERM / SIGINT handler while the loop waits, to wake it at once."""


class Scheduler(multiprocessing.Process):
    """The monitor process. Start it with `.start()`, or run it in the foreground with `.run()`,
    or drive it one cycle at a time with `open()`, `step(now, mono)` and `close()`.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | sa.URL,
        *,
        stop: Any = None,
        terminate: Any = None,
        interval: float = config.INTERVAL,
        stale_after: float = config.STALE_AFTER,
        warn_after: float = config.WARN_AFTER,
        dead_after: float = config.DEAD_AFTER,
        idle_confirm: int = config.IDLE_CONFIRM,
        hud_every: float = config.HUD_EVERY,
        backlog: TaskTable | None = None,
        log_level: int | str = logging.INFO,
        start_method: str | None = None,
        standby: bool = False,
    ) -> None:
        super().__init__(name="sqlmon-scheduler")
        self.start_method = start_method
        # One active scheduler per database: a second one refuses (SchedulerRunning), or with
        # standby=True waits, read-only, and takes over once the lease is free.
        self.standby = bool(standby)
        if not interval > 0:
            raise ConfigError(f"interval must be above 0 s (got {interval})")
        if not stale_after > interval:
            raise ConfigError(
                f"stale_after ({stale_after} s) must be above the interval ({interval} s)"
            )
        if warn_after < stale_after:
            raise ConfigError(f"warn_after ({warn_after} s) must be at least stale_after")
        if dead_after < stale_after:
            raise ConfigError(f"dead_after ({dead_after} s) must be at least stale_after")
        if int(idle_confirm) < 1:
            raise ConfigError(f"idle_confirm must be at least 1 (got {idle_confirm})")
        if hud_every < 0:
            raise ConfigError(f"hud_every must not be negative (got {hud_every})")
        check_database(db)
        dbmod.preflight(db, warn=False)  # fail here, in the parent, not in the child
        self.backlog = backlog if backlog is not None else TaskTable()
        self.db = dbmod.url_text(db)
        self.settings: dict[str, Any] = {
            "interval": float(interval),
            "stale_after": float(stale_after),
            "warn_after": float(warn_after),
            "dead_after": float(dead_after),
            "idle_confirm": int(idle_confirm),
            "hud_every": float(hud_every),
            "task_table": self.backlog.table,
            "task_database": self.backlog.database,
        }
        self.stop_event, self.terminate_event = stop, terminate
        self.log_level = log_level
        self._validate_backlog()
        # What open() builds lives only in the process that runs the loop: engines and
        # connections cannot be pickled into a spawned child, and must not cross a fork.
        self._opened = False

    def _Popen(self, process_obj: Any) -> Any:  # type: ignore[override]  # noqa: N802
        # multiprocessing.Process always starts with the default context; this lets a caller
        # pick fork, spawn or forkserver for this process alone (None keeps the default).
        return multiprocessing.get_context(self.start_method).Process._Popen(process_obj)  # type: ignore[attr-defined]

    def start(self) -> None:
        # The process copy made by start() knows it runs as a child: an error ends it with
        # exit code 1, for whoever joins it, instead of a clean 0.
        self._as_child = True
        try:
            super().start()
        finally:
            self._as_child = False

    @property
    def interval(self) -> float:
        return float(self.settings["interval"])

    def _validate_backlog(self) -> None:
        engine = dbmod.engine(self.backlog.database or self.db, "read")
        try:
            with engine.connect() as conn, dbmod.read(conn):
                self.backlog.validate(conn)
        except sa.exc.DatabaseError as exc:
            raise ConfigError(f"task table: {describe(exc)}") from exc
        finally:
            engine.dispose()
        if not self.standby:
            engine = dbmod.engine(self.db, "read")
            try:
                with engine.connect() as conn:
                    row, now = liveness.observe(conn)
            finally:
                engine.dispose()
            if liveness.judge(row, now).alive and row is not None:
                raise SchedulerRunning(_running(self.db, row))

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """The process body: cycles until terminate (or SIGTERM / SIGINT), then closes its run."""
        # Objects inherited through fork are never collected here: scanning them would copy
        # every page of a large parent, slowly, and possibly while holding the write lock.
        gc.freeze()
        _log_to_terminal(self.log_level)
        reason = "terminate"
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        self._signalled: str | None = None
        self._waiting = False
        self.exit_code = 0

        def on_signal(signum: int, _frame: object) -> None:
            self._signalled = signal.Signals(signum).name
            if self._waiting:
                raise _Stop

        for s in previous:
            signal.signal(s, on_signal)
        try:
            if self.open() is None:
                return  # told to stop while standing by: no run was started
            pace(
                self.step,
                self.interval,
                clock=time.monotonic,
                wait=self._wait_woken,
                stopped=lambda: self._signalled is not None or self._terminated(),
            )
            reason = self._signalled or "terminate"
        except LeaseLost as exc:
            reason = "lease lost"
            log.warning("scheduler run %d steps down: %s", self.run_id, exc)
        except SqlmonError as exc:
            reason = f"error: {exc}"
            log.error("scheduler stopped: %s", exc)
            # Refused at the start (a role that may not write, say) is bad input; stopped
            # later, a failure. What `sqlmon run` exits with.
            self.exit_code = 1 if hasattr(self, "run_id") else 2
        finally:
            self.close(reason)
            for s, handler in previous.items():
                signal.signal(s, handler)
        if reason.startswith("error: ") and getattr(self, "_as_child", False):
            sys.exit(1)

    def _terminated(self) -> bool:
        return self.terminate_event is not None and self.terminate_event.is_set()

    def _wait_woken(self, seconds: float) -> None:
        """Wait, woken at once by SIGTERM or SIGINT (their handler raises _Stop in here)."""
        try:
            self._waiting = True
            if self._signalled is None:
                self._wait(seconds)
        except _Stop:
            pass
        finally:
            self._waiting = False

    def _wait(self, seconds: float) -> None:
        if self.terminate_event is not None:
            flags.wait(self.terminate_event, seconds)  # wakes at once when terminate is set
        else:
            time.sleep(seconds)

    def open(self, now: float | None = None) -> int | None:
        """Connect, take the lease (or, as a standby, wait for it), start a run and say not
        idle; return the run id, or None when told to stop while standing by."""
        self._host = socket.gethostname()
        self._url = dbmod.to_url(self.db)
        self._wal = dbmod.wal_path(self._url)
        self._path = dbmod.sqlite_path(self._url)
        self._engine = dbmod.engine(self._url, "scheduler")
        self._conn = self._engine.connect()
        self._inode = _inode(self._path)
        # The task table in its own file is opened read-only: the monitor never takes its lock.
        self._task_engine = (
            dbmod.engine(self.backlog.database, "read") if self.backlog.database else None
        )
        self._task_conn = self._task_engine.connect() if self._task_engine else None
        self._lost = False
        self._opened = True
        s = self.settings
        self._ttl = config.fresh_for(s["interval"])
        me = store.Me(os.getpid(), identity.start_time(os.getpid()), self._host)
        # On PostgreSQL the lease, the idle row and the history are on the server's clock,
        # which every host shares; on SQLite that is this host's clock.
        self._horizon = store.FoldHorizon(
            0.0 if self._engine.dialect.name == "sqlite" else config.PG_FOLD_SETTLE
        )
        told = False
        while True:
            # Taking the write lock here may wait longer than a cycle's write: start-up is rare.
            dbmod.set_busy_timeout(self._conn, config.INIT_BUSY_TIMEOUT)
            got: Any
            try:
                with dbmod.write(self._conn):
                    got = store.acquire(self._conn, now=now, me=me, settings=s, ttl=self._ttl)
            except (LeaseLost, sa.exc.DatabaseError) as exc:
                # Another standby took the lease first, or the idle row is locked (by a
                # scheduler paused inside its write: on PostgreSQL the row stays locked until
                # the server ends that session), or the server is away: look again later.
                why = describe(exc) if isinstance(exc, sa.exc.DatabaseError) else str(exc)
                if not self.standby:
                    self.close("refused")
                    if isinstance(exc, LeaseLost):
                        raise
                    # A role without the right to write, say: one line, not a traceback.
                    raise DatabaseError(f"{self.db}: cannot start a run: {why}") from exc
                got = f"the lease cannot be taken now ({why})"
            dbmod.set_busy_timeout(self._conn, config.SCHEDULER_BUSY_TIMEOUT)
            if isinstance(got, tuple):
                break  # the lease is this scheduler's
            if isinstance(got, liveness.SchedulerRow):
                if not self.standby:
                    self.close("refused")
                    raise SchedulerRunning(_running(self.db, got))
                got = _running(self.db, got)
            if not told:
                told = True
                log.info("standing by: %s", got)
            self._wait(s["interval"])
            if self._terminated() or getattr(self, "_signalled", None):
                self.close("stopped while standing by")
                return None
        self.run_id, self.term, unended, at = got
        self.started_at = at
        self.judge = Judge(
            interval=s["interval"],
            stale_after=s["stale_after"],
            warn_after=s["warn_after"],
            dead_after=s["dead_after"],
            idle_confirm=s["idle_confirm"],
            host=self._host,
            late_factor=config.LATE_FACTOR,
        )
        with dbmod.read(self._conn):
            self.judge.seed(store.last_events(self._conn))
            self._folded = store.folded_id(self._conn)
            earlier = [w for w in store.windows(self._conn) if w.run_id != self.run_id]
        # Stretches fold into this run's window, open until it ends, and into earlier runs'
        # for the part of them that came before this run began.
        self._windows = [stretches.Window(self.run_id, at, float("inf")), *earlier]
        if unended:
            # One line, however many kills came before: after a kill storm, a line per open run
            # would flood every later start.
            before = len(unended) - 1
            log.warning(
                "run %d ended abnormally: its scheduler vanished without closing it%s",
                max(unended),
                f" (and {before} earlier run{'s' * (before != 1)} never ended)" if before else "",
            )
        self.writes_skipped = 0
        # Of cycles whose write failed, oldest first: written with the next write.
        self._unwritten: list[Event] = []
        self._unwritten_judged: list[Judged] = []
        self._unwritten_closes: list[Close] = []
        # Errors this run met, by stage and kind ("write: disk I/O error"): told at the end.
        self.errors: Counter[str] = Counter()
        self._last_hud = -float("inf")
        self._last_skip_log = -float("inf")
        self._walkeeper = WalKeeper(self._conn, self._wal, self.errors)
        self._leading = True
        log.info(
            "scheduler run %d started (pid %d, term %d) on %s",
            self.run_id,
            os.getpid(),
            self.term,
            self.db,
        )
        return self.run_id

    def read(self, now: float | None = None, mono: float | None = None) -> Observation:
        """worker_status and the backlog, each from one consistent snapshot. `now` (unix s)
        defaults to the database's clock, read in the same transaction."""
        mono = time.monotonic() if mono is None else mono
        try:
            with dbmod.read(self._conn):
                upto = self._horizon.upto(mono)
                got = store.read_cycle(
                    self._conn,
                    clock=now is None,
                    after=self._folded,
                    upto=upto,
                    last_stretch=self._horizon.watching,
                    backlog=self.backlog.query(self._conn) if self._task_conn is None else None,
                )
                if now is None:
                    assert got.now is not None  # asked for
                    # Taken once the answer is in: the cycle's `now` is then never ahead.
                    now, self._clock_read = got.now, time.perf_counter()
                if got.last_stretch is not None:
                    self._horizon.saw(mono, got.last_stretch)
                workers = got.workers
                # The server's connections, to show a remote worker's closed connection: only
                # those of workers whose beats stand still.
                suspects = self.judge.suspects(workers)
                backends = store.read_backends(self._conn, suspects) if suspects else None
                if got.backlog is not None:
                    counts, high = self.backlog.counts(got.backlog)
            if self._task_conn is not None:
                with dbmod.read(self._task_conn):
                    counts, high = self.backlog.read(self._task_conn)
        except sa.exc.DatabaseError as exc:
            # The server unreachable, say: this host's clock stands in for the database's.
            self.errors[f"read: {describe(exc)}"] += 1
            if now is None:
                now, self._clock_read = time.time(), time.perf_counter()
            return Observation(read_started=now, error=describe(exc))
        return Observation(
            read_started=now,
            workers=workers,
            backlog=counts,
            high_water=high,
            stretches=got.stretches,
            backends=backends,
        )

    def step(self, now: float | None = None, mono: float | None = None) -> Cycle:
        """One cycle: read, judge, write, log. `now` (unix s) and `mono` (s) default to clocks."""
        if not self._opened:
            raise RuntimeError("Scheduler.open() first")
        started = time.perf_counter()
        # When `now` was read (perf_counter): the cycle's `now` is what the clock said then.
        self._clock_read = started
        mono = time.monotonic() if mono is None else mono
        if _inode(self._path) != self._inode:
            # Never write into a deleted inode, nor a run into a file that is not its own.
            self._leading = False
            raise DatabaseError(f"{self._path}: the database file was deleted or replaced")
        obs = self.read(now, mono)
        now = obs.read_started
        cycle = self.judge.judge(obs, now, mono)
        for finding in cycle.warnings:
            log.warning("%s", finding)
        stop_seen = self.stop_event is not None and self.stop_event.is_set()
        # The stretches recorded since the last fold, added to the runs' totals with the cycle.
        folded: tuple[int, dict[stretches.TotalKey, stretches.Total]] = (self._folded, {})
        if obs.stretches:
            folded = (obs.stretches[-1][0], stretches.fold(obs.stretches, self._windows))
        done = time.perf_counter()
        seconds = done - started
        # The database's clock at this instant: never ahead of it, or a reader right after
        # the commit would find the heartbeat in its future.
        heartbeat = now + (done - self._clock_read)
        # The judge reports each transition once: those of a cycle whose write fails wait for
        # the next write, or they would be lost (a restart never said to be a new incarnation).
        events = self._unwritten + cycle.events
        judged = self._unwritten_judged + cycle.judged
        closes = self._unwritten_closes + cycle.closes
        shrinking = self._walkeeper.before_commit()
        try:
            with dbmod.write(self._conn):
                store.record(
                    self._conn,
                    self.run_id,
                    cycle,
                    term=self.term,
                    expires_at=heartbeat + self._ttl,
                    cycle_seconds=seconds,
                    writes_skipped=self.writes_skipped,
                    stop_seen=stop_seen,
                    heartbeat=heartbeat,
                    events=events,
                    judged=judged,
                    closes=closes,
                    folded=folded,
                )
            self.writes_skipped = 0
            self._unwritten, self._unwritten_judged, self._unwritten_closes = [], [], []
            self._folded = folded[0]
        except LeaseLost:
            self._leading = False
            raise
        except sa.exc.DatabaseError as exc:
            # The write lock was not had quickly, the disk is full, an I/O error: skip this
            # cycle's write rather than stall or die; the idle row goes stale, never idle.
            # Its snapshot is lost (counted in the next one's writes_skipped); its events,
            # judgements and closed stretches wait, the newest UNWRITTEN_EVENTS of each (the
            # stretches to fold are read again from the record by the next cycle).
            self._unwritten = events[-config.UNWRITTEN_EVENTS :]
            self._unwritten_judged = judged[-config.UNWRITTEN_EVENTS :]
            self._unwritten_closes = closes[-config.UNWRITTEN_EVENTS :]
            self.writes_skipped += 1
            shrinking = self._walkeeper.skipped(shrinking, exc)
            self.errors[f"write: {describe(exc)}"] += 1
            if mono - self._last_skip_log >= config.MISSED_LOG_EVERY:
                self._last_skip_log = mono
                log.warning("scheduler skipped writing cycle %d: %s", cycle.cycle, describe(exc))
        self._walkeeper.after_commit(shrinking)
        if (
            self.settings["hud_every"]
            and mono - self._last_hud >= self.settings["hud_every"]
            # Not built for a logger that drops it: at a thousand workers, half a millisecond.
            and hud.log.isEnabledFor(logging.INFO)
        ):
            self._last_hud = mono  # hud_every 0: no HUD; the detail only when the shape changed
            self._hud_seen = hud.emit(cycle, getattr(self, "_hud_seen", None))
        return cycle

    def close(self, reason: str = "closed", now: float | None = None) -> None:
        """End the run row (so the idle row reads not idle), hand the lease over, and let go
        of the connections. A scheduler that lost its lease, or whose file was replaced,
        writes nothing."""
        if not self._opened:
            return
        self._opened = False
        try:
            if now is None:
                now = dbmod.clock(self._conn)
            if getattr(self, "_leading", False):
                dbmod.set_busy_timeout(self._conn, config.INIT_BUSY_TIMEOUT)
                with dbmod.write(self._conn):
                    store.add_pending(
                        self._conn,
                        self.run_id,
                        self._unwritten,
                        self._unwritten_judged,
                        self._unwritten_closes,
                    )
                    ended = store.end_run(
                        self._conn, self.run_id, now=now, reason=reason, term=self.term
                    )
                if ended:
                    log.info(
                        "scheduler run %d ended (%s)%s",
                        self.run_id,
                        reason,
                        self._error_summary(),
                    )
                else:
                    log.warning(
                        "scheduler run %d: the lease was taken over; run left as is", self.run_id
                    )
        except sa.exc.DatabaseError as exc:
            log.error(
                "scheduler could not close run %d: %s%s",
                self.run_id,
                describe(exc),
                self._error_summary(),
            )
        finally:
            self._leading = False
            self._conn.close()
            self._engine.dispose()
            if self._task_conn is not None and self._task_engine is not None:
                self._task_conn.close()
                self._task_engine.dispose()

    def _error_summary(self) -> str:
        if not self.errors:
            return ""
        return "; database errors met: " + ", ".join(
            f"{kind} x{n}" for kind, n in sorted(self.errors.items())
        )


def _inode(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)  # gone
    return st.st_dev, st.st_ino


def _running(db: str, row: liveness.SchedulerRow) -> str:
    return (
        f"another scheduler is running on {db}: pid {row.pid} on {row.host}, run {row.run_id} "
        "(stop it first, or start this one as a standby to take over when it stops)"
    )


def _log_to_terminal(level: int | str) -> None:
    """Make the HUD visible in a spawned child too, where no handler was inherited."""
    logger = logging.getLogger("sqlmon")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
