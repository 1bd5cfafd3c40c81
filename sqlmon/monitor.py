"""The scheduler's judgement: from what one cycle read and the time, who is busy, idle, stale,
dead or gone, which transitions happened, and whether the whole system is idle.

Pure apart from the pid check, which is passed in; the clock is always an argument.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from . import procs
from .backlog import Counts

log = logging.getLogger(__name__)


# The per-worker records are named tuples: a scheduler cycle builds two for each worker, and
# a frozen dataclass costs several times more to build (measured in scripts/bench.py's cycle).
class WorkerRow(NamedTuple):
    """One worker_status row as read."""

    worker_id: str
    pid: int
    pid_start: float | None
    host: str
    pool: str
    category: str | None
    category_since: float | None
    last_heartbeat: float
    started_at: float
    beats: int
    exited_at: float | None


@dataclass(frozen=True)
class Observation:
    """What one cycle read, from one consistent snapshot."""

    read_started: float  # wall clock (unix s) when the read began
    workers: list[WorkerRow] = field(default_factory=list)
    backlog: Counts = field(default_factory=dict)
    high_water: int | None = None
    error: str | None = None  # the read failed: nothing is known, so nothing is idle


class Event(NamedTuple):
    ts: float
    worker_id: str
    event: str
    category: str | None
    pid: int | None
    detail: str | None = None


class WorkerView(NamedTuple):
    worker_id: str
    pool: str
    pid: int
    category: str | None
    state: str  # busy, idle, stale, dead, exited
    heartbeat_age: float
    stale_for: float  # s without a new beat, on the scheduler's monotonic clock
    beats: int


class Count(NamedTuple):
    busy: int = 0
    pending: int = 0
    running: int = 0


@dataclass(frozen=True)
class Cycle:
    """The outcome of one cycle: everything the history, the idle row and the HUD need."""

    cycle: int
    ts: float
    read_started: float
    late: bool
    workers: list[WorkerView]
    counts: dict[tuple[str, str], Count]
    events: list[Event]
    idle: bool
    idle_since: float | None
    verdict_since: float | None
    not_idle_reason: str | None

    def total(self, state: str) -> int:
        return sum(1 for w in self.workers if w.state == state)

    @property
    def pending(self) -> int:
        return sum(c.pending for c in self.counts.values())

    @property
    def running(self) -> int:
        return sum(c.running for c in self.counts.values())


@dataclass
class _Tracked:
    incarnation: tuple[int, float]
    category: str | None
    beats: int
    beats_mono: float  # when beats last moved, on the scheduler's monotonic clock
    stale: bool = False
    warned: bool = False
    dead: bool = False
    exited: bool = False
    doubtful: bool = False  # first seen with a beat too old to believe without a second look


class Monitor:
    """The judge's memory between cycles. `judge(observation, now, mono)` makes one cycle."""

    def __init__(
        self,
        *,
        interval: float,
        stale_after: float,
        warn_after: float,
        idle_confirm: int,
        host: str,
        late_factor: float = 2.0,
        alive: Callable[[int, float | None], bool] = procs.is_alive,
    ) -> None:
        self.interval = interval
        self.stale_after = stale_after
        self.warn_after = warn_after
        self.idle_confirm = idle_confirm
        self.host = host
        self.late_factor = late_factor
        self.alive = alive
        self.cycle = 0
        self._tracked: dict[str, _Tracked] = {}
        self._last_events: dict[str, str] = {}  # worker -> last event of an earlier run
        self._last_mono: float | None = None
        self._last_wall: float | None = None
        self._streak: deque[float] = deque(maxlen=idle_confirm)  # read starts of idle cycles
        self._streak_mark: object = None
        self._idle_since: float | None = None

    def seed(self, last_events: Iterable[tuple[str, str]]) -> None:
        """The last event of each worker in earlier runs, so that a restart repeats no exit."""
        self._last_events = dict(last_events)

    def judge(self, obs: Observation, now: float, mono: float) -> Cycle:
        self.cycle += 1
        gap = None if self._last_mono is None else mono - self._last_mono
        # A cycle far later than planned means this process was paused (SIGSTOP, swap, a
        # suspended VM): what it read may be old news, so it judges no death and no idle.
        late = gap is not None and gap > self.late_factor * self.interval
        floor = self._last_wall if self._last_wall is not None else -float("inf")
        events: list[Event] = []
        views: list[WorkerView] = []
        if obs.error is None:
            seen = set()
            for row in obs.workers:
                seen.add(row.worker_id)
                views.append(self._judge_worker(row, now, mono, late, floor, events))
            for gone in set(self._tracked) - seen:
                del self._tracked[gone]
        counts = self._counts(obs, views)
        idle, reason = self._verdict(obs, views, late, gap)
        self._last_mono, self._last_wall = mono, now
        return Cycle(
            cycle=self.cycle,
            ts=now,
            read_started=obs.read_started,
            late=late,
            workers=views,
            counts=counts,
            events=events,
            idle=idle,
            idle_since=self._idle_since if idle else None,
            verdict_since=self._streak[0] if idle else None,
            not_idle_reason=reason,
        )

    def _judge_worker(
        self, row: WorkerRow, now: float, mono: float, late: bool, floor: float, out: list[Event]
    ) -> WorkerView:
        def emit(
            ts: float,
            event: str,
            category: str | None,
            detail: str | None = None,
            pid: int = row.pid,
        ) -> None:
            # Worker clocks may jump: keep every event inside this cycle's window, in order.
            out.append(Event(min(max(ts, floor), now), row.worker_id, event, category, pid, detail))

        t = self._tracked.get(row.worker_id)
        incarnation = (row.pid, row.started_at)
        if t is None or t.incarnation != incarnation:
            previous = self._last_events.pop(row.worker_id, None)
            if t is None and previous == "exited" and row.exited_at is not None:
                t = _Tracked(incarnation, None, row.beats, mono, exited=True)  # known, gone
            elif t is None and previous == "dead" and not self._alive(row):
                t = _Tracked(incarnation, None, row.beats, mono, dead=True)  # known, dead
            else:
                detail = f"pid {row.pid} on {row.host}"
                if t is not None:
                    # The same id from another process: the old one ended between two cycles.
                    old_pid = t.incarnation[0]
                    if not (t.exited or t.dead):
                        emit(row.started_at, "dead", None, "replaced by a new incarnation", old_pid)
                    detail += f", new incarnation (was pid {old_pid})"
                elif previous is not None:
                    detail += ", already running when the scheduler started"
                # Just after start, the age of last_heartbeat stands in for the beat history,
                # believed at once up to warn_after. An older beat from a live process is as
                # likely a wall-clock jump on either side: judged stale only if the beats also
                # stand still until the next cycle.
                age = max(0.0, now - row.last_heartbeat)
                first = row.category if (row.category_since or 0) <= row.started_at else None
                t = _Tracked(incarnation, first, row.beats, mono - age)
                t.doubtful = age > self.warn_after
                emit(row.started_at, "joined", first, detail)
            self._tracked[row.worker_id] = t
        if t.exited:
            return self._view(row, "exited", now, mono, t)
        if row.category != t.category:
            since = row.category_since if row.category_since is not None else now
            if t.category is None:
                emit(since, "busy", row.category)
            elif row.category is None:
                emit(since, "idle", None)
            else:
                emit(since, "category", row.category, f"from {t.category}")
            t.category = row.category
        if row.exited_at is not None:
            t.exited = True
            emit(row.exited_at, "exited", None)
            return self._view(row, "exited", now, mono, t)
        if row.beats != t.beats:
            t.beats, t.beats_mono = row.beats, mono
            if t.stale or t.dead:
                emit(now, "recovered", row.category, "beats resumed")
                t.stale = t.warned = t.dead = False
        elif not t.dead:
            # Only a worker whose beats stand still can have died: the others just proved not.
            if not late and not self._alive(row):
                t.dead = True
                emit(now, "dead", row.category, f"pid {row.pid} is gone")
            # Nor stale: a paused scheduler may have held the write lock all along, so that
            # the beats it missed were never written; the next cycle judges afresh.
            elif (
                not late
                and not t.stale
                and not t.doubtful
                and mono - t.beats_mono >= self.stale_after
            ):
                t.stale = True
                emit(now, "stale", row.category, f"no beat for {mono - t.beats_mono:.0f} s")
            if t.stale and not t.warned and mono - t.beats_mono >= self.warn_after:
                t.warned = True
                log.warning(
                    "worker %s (pid %d) has been stale for %.0f s%s",
                    row.worker_id,
                    row.pid,
                    mono - t.beats_mono,
                    f" in {row.category}" if row.category else "",
                )
        t.doubtful = False
        state = "dead" if t.dead else "stale" if t.stale else "busy" if row.category else "idle"
        return self._view(row, state, now, mono, t)

    def _alive(self, row: WorkerRow) -> bool:
        """Only a process on this host can be checked; elsewhere, staleness is all we know."""
        return row.host != self.host or self.alive(row.pid, row.pid_start)

    @staticmethod
    def _view(row: WorkerRow, state: str, now: float, mono: float, t: _Tracked) -> WorkerView:
        return WorkerView(  # by position: twice as quick as by keyword, 64 times a cycle
            row.worker_id,
            row.pool,
            row.pid,
            row.category if state in ("busy", "stale") else None,
            state,
            now - row.last_heartbeat,
            mono - t.beats_mono,
            row.beats,
        )

    @staticmethod
    def _counts(obs: Observation, views: list[WorkerView]) -> dict[tuple[str, str], Count]:
        counts = {key: Count(0, p, r) for key, (p, r) in obs.backlog.items()}
        for w in views:
            if w.category is not None:
                c = counts.get((w.pool, w.category), Count())
                counts[(w.pool, w.category)] = Count(c.busy + 1, c.pending, c.running)
        return dict(sorted(counts.items()))

    def _verdict(
        self, obs: Observation, views: list[WorkerView], late: bool, gap: float | None
    ) -> tuple[bool, str | None]:
        reasons = []
        if obs.error is not None:
            reasons.append(f"read failed: {obs.error}")
        if late:
            reasons.append(f"scheduler cycle came {gap:.1f} s after the last (paused?)")
        for (_pool, category), (pending, running) in sorted(obs.backlog.items()):
            if pending:
                reasons.append(f"{pending} task{'s' * (pending != 1)} pending in {category}")
            if running:
                reasons.append(f"{running} task{'s' * (running != 1)} running in {category}")
        for w in views:
            # A stale worker that holds a category may still be working: not idle.
            if w.state == "busy":
                reasons.append(f"{w.worker_id} busy in {w.category}")
            elif w.state == "stale" and w.category is not None:
                reasons.append(f"{w.worker_id} stale for {w.stale_for:.0f} s in {w.category}")
        if reasons:
            self._streak.clear()
            self._idle_since = None
            shown = "; ".join(reasons[:3])
            return False, shown + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        # A task created and finished between two polls moves the high-water mark: start over.
        if self._streak and self._streak_mark != obs.high_water:
            self._streak.clear()
            self._idle_since = None
        self._streak_mark = obs.high_water
        self._streak.append(obs.read_started)
        if self._idle_since is None:
            self._idle_since = obs.read_started
        if len(self._streak) < self.idle_confirm:
            return False, f"confirming idle ({len(self._streak)}/{self.idle_confirm})"
        return True, None
