"""The scheduler's judgement: from what one cycle read and the time, who is busy, idle, stale,
dead or gone, which transitions happened, and whether the whole system is idle.

Pure apart from the pid check, which is passed in; the clock is always an argument. What is
worth a warning comes back as a finding in the cycle, for the scheduler to log.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from . import config, identity
from .backlog import Counts
from .states import Event as Ev
from .states import Evidence, Liveness, State
from .stretches import Stretch

_LIVENESS = {
    Ev.JOINED: Liveness.ALIVE,
    Ev.RECOVERED: Liveness.ALIVE,
    Ev.STALE: Liveness.STALE,
    Ev.DEAD: Liveness.DEAD,
    Ev.EXITED: Liveness.EXITED,
}
_DEATH = {
    Evidence.PID_GONE: "pid {pid} is gone",
    Evidence.PID_REUSED: "pid {pid} now belongs to another process",
    Evidence.BOOT_ID_CHANGED: "{host} rebooted since it started",
    Evidence.BACKEND_GONE: "its database connection (server pid {backend}) is gone",
    Evidence.NO_BEATS: "no beat for {still:.0f} s",
}
# Deaths shown by silence alone: the worker may still be working where nothing can check, so
# one that held a category still keeps the system from idle.
_UNPROVEN = frozenset({Evidence.NO_BEATS})


# The per-worker records are named tuples: a scheduler cycle builds two for each worker, and
# a frozen dataclass costs several times more to build (scripts/bench.py's cycle section).
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
    boot_id: str | None = None
    backend: str | None = None  # PostgreSQL: 'pid@postmaster start' of its connection


class Backends(NamedTuple):
    """The server's connections as one cycle read them (PostgreSQL)."""

    postmaster: str  # the server's start, as the workers wrote it in their `backend`
    pids: frozenset[int]  # those of `asked` that are connected
    asked: frozenset[int]  # the server pids looked for


@dataclass(frozen=True)
class Observation:
    """What one cycle read, from one consistent snapshot."""

    read_started: float  # wall clock (unix s) when the read began
    workers: list[WorkerRow] = field(default_factory=list)
    backlog: Counts = field(default_factory=dict)
    high_water: int | None = None
    error: str | None = None  # the read failed: nothing is known, so nothing is idle
    stretches: list[Stretch] = field(default_factory=list)  # recorded since the last fold
    backends: Backends | None = None  # None: no connection to check (SQLite, a pooler)


class Event(NamedTuple):
    ts: float
    worker_id: str
    event: str  # a states.Event of LIVENESS_EVENTS
    category: str | None
    pid: int | None
    detail: str | None = None


class Judged(NamedTuple):
    """A worker incarnation's new liveness, for worker_states."""

    worker_id: str
    pid: int
    started_at: float
    state: str  # a states.Liveness
    since: float
    evidence: str | None
    detail: str | None


class Close(NamedTuple):
    """An open stretch a death ended, for worker_stretches (outcome dead)."""

    worker_id: str
    pid: int
    category: str | None
    started: float
    ended: float


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
    judged: list[Judged] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # findings to log, once each

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
    """What the judge remembers of one worker incarnation between cycles."""

    incarnation: tuple[int, float]
    category: str | None  # the open stretch as last read: its category and start
    since: float | None
    beats: int
    beats_mono: float  # when beats last moved, on the scheduler's monotonic clock
    liveness: Liveness = Liveness.ALIVE
    warned: bool = False  # its stale episode's one warning was given
    doubtful: bool = False  # first seen with a beat too old to believe without a second look
    unproven: str | None = None  # dead by silence alone, holding this category
    gone: int = 0  # cycles in a row its server connection was missing
    still: int = 0  # cycles in a row that found its beats standing still


class Judge:
    """The judge's memory between cycles. `judge(observation, now, mono)` makes one cycle."""

    def __init__(
        self,
        *,
        interval: float,
        stale_after: float,
        warn_after: float,
        idle_confirm: int,
        host: str,
        dead_after: float = config.DEAD_AFTER,
        boot_id: str | None = None,
        booted_at: float | None = None,
        late_factor: float = config.LATE_FACTOR,
        death: Callable[[int, float | None], Evidence | None] = identity.death,
    ) -> None:
        """`host`, `boot_id` and `booted_at` are the scheduler's own host (its processes can be
        checked), its boot id and when it booted (default: this machine's)."""
        self.interval = interval
        self.stale_after = stale_after
        self.warn_after = warn_after
        self.dead_after = dead_after
        self.idle_confirm = idle_confirm
        self.host = host
        self.boot_id = identity.boot_id() if boot_id is None else boot_id
        self.booted_at = identity.boot_time() if booted_at is None else booted_at
        self.late_factor = late_factor
        self.death = death
        self.cycle = 0
        self._tracked: dict[str, _Tracked] = {}
        self._last_events: dict[str, str] = {}  # worker -> last event of an earlier run
        self._last_mono: float | None = None
        self._last_wall: float | None = None
        self._streak: deque[float] = deque(maxlen=idle_confirm)  # read starts of idle cycles
        self._streak_mark: object = None
        self._idle_since: float | None = None
        self._boots: dict[str, tuple[float, str]] = {}  # host -> its newest worker's boot
        self._backends: Backends | None = None
        self._shared: set[str] = set()  # host names two machines use: no boot evidence there

    def seed(self, last_events: Iterable[tuple[str, str]]) -> None:
        """The last event of each worker in earlier runs, so that a restart repeats no exit."""
        self._last_events = dict(last_events)

    def suspects(self, rows: Iterable[WorkerRow]) -> list[int]:
        """The server pids of the workers, just read, whose beats stood still over this read
        and the one before: the connections worth looking for before judging `rows`. A worker
        that beats at least as often as the scheduler reads is never one, so that a fleet
        beating away costs no look at the server's connections, which takes milliseconds with
        a thousand of them (a single read without a beat is mere jitter)."""
        out = []
        for row in rows:
            t = self._tracked.get(row.worker_id)
            if (
                row.backend is not None
                and t is not None
                and t.still
                and row.beats == t.beats
                and t.liveness in (Liveness.ALIVE, Liveness.STALE)
            ):
                out.append(int(row.backend.partition("@")[0]))
        return out

    def judge(self, obs: Observation, now: float, mono: float) -> Cycle:
        self.cycle += 1
        gap = None if self._last_mono is None else mono - self._last_mono
        # A cycle far later than planned means this process was paused (SIGSTOP, swap, a
        # suspended VM): what it read may be old news, so it judges no death and no idle.
        late = gap is not None and gap > self.late_factor * self.interval
        floor = self._last_wall if self._last_wall is not None else -float("inf")
        events: list[Event] = []
        self._judged: list[Judged] = []
        self._closes: list[Close] = []
        self._warnings: list[str] = []
        views: list[WorkerView] = []
        if obs.error is None:
            self._backends = obs.backends
            self._boots = _newest_boots(obs.workers)
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
            judged=self._judged,
            closes=self._closes,
            warnings=self._warnings,
        )

    def _judge_worker(
        self, row: WorkerRow, now: float, mono: float, late: bool, floor: float, out: list[Event]
    ) -> WorkerView:
        def emit(
            ts: float,
            event: Ev,
            category: str | None,
            detail: str | None = None,
            evidence: Evidence | None = None,
            pid: int = row.pid,
        ) -> None:
            # Worker clocks may jump: keep every event inside this cycle's window, in order.
            ts = min(max(ts, floor), now)
            out.append(Event(ts, row.worker_id, event, category, pid, detail))
            if pid == row.pid:
                self._judged.append(
                    Judged(
                        row.worker_id, pid, row.started_at, _LIVENESS[event], ts, evidence, detail
                    )
                )

        t = self._tracked.get(row.worker_id)
        if (
            t is not None
            and t.liveness is Liveness.ALIVE
            and row.beats != t.beats
            and row.exited_at is None
            and t.incarnation == (row.pid, row.started_at)
        ):
            # By far the most common case, a live worker beating on: nothing to emit, and
            # nothing to check but its host name. Worth its own path at a thousand workers.
            t.category, t.since, t.doubtful = row.category, row.category_since, False
            self._moved(t, row, mono)
            return WorkerView(
                row.worker_id,
                row.pool,
                row.pid,
                row.category,
                State.IDLE if row.category is None else State.BUSY,
                now - row.last_heartbeat,
                0.0,
                row.beats,
            )
        if t is None or t.incarnation != (row.pid, row.started_at):
            t = self._meet(row, t, now, mono, emit)
            self._tracked[row.worker_id] = t
        if t.liveness is Liveness.EXITED:
            return self._view(row, State.EXITED, now, mono, t)
        t.category, t.since = row.category, row.category_since
        if row.exited_at is not None:
            t.liveness = Liveness.EXITED
            emit(row.exited_at, Ev.EXITED, None)
            return self._view(row, State.EXITED, now, mono, t)
        if row.beats != t.beats:
            self._beat(t, row, now, mono, emit)
        elif t.liveness is not Liveness.DEAD:
            # Only a worker whose beats stand still can have died: the others just proved not.
            self._still(t, row, now, mono, late, emit)
        t.doubtful = False
        if t.liveness is Liveness.DEAD:
            state = State.DEAD
        elif t.liveness is Liveness.STALE:
            state = State.STALE
        else:
            state = State.BUSY if row.category is not None else State.IDLE
        return self._view(row, state, now, mono, t)

    def _meet(
        self,
        row: WorkerRow,
        old: _Tracked | None,
        now: float,
        mono: float,
        emit: Callable[..., None],
    ) -> _Tracked:
        """A worker incarnation seen for the first time: one known from an earlier run (gone
        or dead: nothing to repeat), or one that joins (and replaces `old`, which then died)."""
        incarnation = (row.pid, row.started_at)
        previous = self._last_events.pop(row.worker_id, None)
        if old is None and previous == Ev.EXITED and row.exited_at is not None:
            return _Tracked(incarnation, None, None, row.beats, mono, Liveness.EXITED)
        if old is None and previous == Ev.DEAD and self._proof(row) is not None:
            return _Tracked(incarnation, None, None, row.beats, mono, Liveness.DEAD)
        detail = f"pid {row.pid} on {row.host}"
        if old is not None:
            # The same id from another process: the old one ended between two cycles.
            old_pid = old.incarnation[0]
            if old.liveness not in (Liveness.EXITED, Liveness.DEAD):
                emit(row.started_at, Ev.DEAD, None, "replaced by a new incarnation", pid=old_pid)
                if old.since is not None:
                    end = max(old.since, row.started_at)
                    self._closes.append(Close(row.worker_id, old_pid, old.category, old.since, end))
            detail += f", new incarnation (was pid {old_pid})"
        elif previous is not None:
            detail += ", already running when the scheduler started"
        # Just after start, the age of last_heartbeat stands in for the beat history, believed
        # at once up to warn_after. An older beat from a live process is as likely a wall-clock
        # jump on either side: judged stale only if the beats also stand still until the next
        # cycle.
        age = max(0.0, now - row.last_heartbeat)
        first = row.category if (row.category_since or 0) <= row.started_at else None
        t = _Tracked(incarnation, None, None, row.beats, mono - age)
        t.doubtful = age > self.warn_after
        emit(row.started_at, Ev.JOINED, first, detail)
        return t

    def _beat(
        self, t: _Tracked, row: WorkerRow, now: float, mono: float, emit: Callable[..., None]
    ) -> None:
        """Its beats moved: alive, and recovered if it was stale or dead."""
        if t.liveness in (Liveness.STALE, Liveness.DEAD):
            emit(now, Ev.RECOVERED, row.category, "beats resumed")
            t.liveness, t.warned, t.unproven = Liveness.ALIVE, False, None
        self._moved(t, row, mono)

    def _moved(self, t: _Tracked, row: WorkerRow, mono: float) -> None:
        """What any worker whose beats moved tells: when they last moved, that its connection
        is there, and whether its host name is shared by two machines."""
        t.beats, t.beats_mono, t.gone, t.still = row.beats, mono, 0, 0
        newest = self._boots.get(row.host)
        if (
            row.boot_id is not None
            and newest is not None
            and newest[1] != row.boot_id
            and row.last_heartbeat > newest[0]
            and row.host not in self._shared
        ):
            # A worker of another boot beat after the newest boot began: not a reboot, two
            # machines share the name.
            self._shared.add(row.host)
            self._warnings.append(
                f"host name {row.host} is used by machines with different boot ids: deaths "
                "there are judged without their boot"
            )

    def _still(
        self,
        t: _Tracked,
        row: WorkerRow,
        now: float,
        mono: float,
        late: bool,
        emit: Callable[..., None],
    ) -> None:
        """Its beats stood still since the last cycle: dead if its process is gone, stale once
        they stood still for stale_after. A late cycle judges neither: a paused scheduler may
        have held the write lock all along, so that the beats it missed were never written."""
        t.still += 1
        still = mono - t.beats_mono
        evidence = None if late else self._death(row, t, still)
        if evidence is not None:
            t.liveness = Liveness.DEAD
            t.unproven = row.category if evidence in _UNPROVEN else None
            backend = (row.backend or "").partition("@")[0]
            detail = _DEATH[evidence].format(
                pid=row.pid, host=row.host, backend=backend, still=still
            )
            emit(now, Ev.DEAD, row.category, detail, evidence)
            # One finding per death: the event is emitted once per episode.
            self._warnings.append(
                f"worker {row.worker_id} is dead: {detail}"
                + (f" (in {row.category})" if row.category else "")
            )
            if row.category_since is not None:
                # The stretch it was in ends here, at the death this cycle found.
                end = max(now, row.category_since)
                self._closes.append(
                    Close(row.worker_id, row.pid, row.category, row.category_since, end)
                )
            return
        if (
            not late
            and t.liveness is Liveness.ALIVE
            and not t.doubtful
            and still >= self.stale_after
        ):
            t.liveness = Liveness.STALE
            emit(now, Ev.STALE, row.category, f"no beat for {still:.0f} s")
        if t.liveness is Liveness.STALE and not t.warned and still >= self.warn_after:
            t.warned = True
            self._warnings.append(
                f"worker {row.worker_id} (pid {row.pid}) has been stale for {still:.0f} s"
                + (f" in {row.category}" if row.category else "")
            )

    def _proof(self, row: WorkerRow) -> Evidence | None:
        """What shows at once that the worker's process is no more: on this host its pid; on
        any host a reboot since it started."""
        if not self._remote(row):
            if None not in (row.boot_id, self.boot_id) and row.boot_id != self.boot_id:
                return Evidence.BOOT_ID_CHANGED  # it started before this host last booted
            return self.death(row.pid, row.pid_start)
        newest = self._boots.get(row.host)
        if (
            newest is not None
            and row.boot_id is not None
            and newest[1] != row.boot_id
            and newest[0] > row.started_at
            and row.host not in self._shared
        ):
            return Evidence.BOOT_ID_CHANGED
        return None

    def _remote(self, row: WorkerRow) -> bool:
        """A process this host cannot check: another host's, or one under this host's name
        with another boot id that started after this boot (another machine, same name)."""
        if row.host != self.host:
            return True
        if row.boot_id is None or self.boot_id is None or row.boot_id == self.boot_id:
            return False
        return self.booted_at is not None and row.started_at > self.booted_at

    def _death(self, row: WorkerRow, t: _Tracked, still: float) -> Evidence | None:
        """Why a worker whose beats stood still is dead, strongest evidence first, or None."""
        proof = self._proof(row)
        if proof is not None or not self._remote(row):
            return proof
        if self._backends is not None and row.backend is not None:
            pid, _, postmaster = row.backend.partition("@")
            seen = self._backends
            if int(pid) in seen.asked:  # a connection not looked for this cycle tells nothing
                missing = postmaster == seen.postmaster and int(pid) not in seen.pids
                t.gone = t.gone + 1 if missing else 0
            # Two cycles, so that a connection the worker is just replacing is not a death.
            if t.gone >= 2:
                return Evidence.BACKEND_GONE
        if still >= self.dead_after and not t.doubtful:
            return Evidence.NO_BEATS
        return None

    @staticmethod
    def _view(row: WorkerRow, state: str, now: float, mono: float, t: _Tracked) -> WorkerView:
        return WorkerView(  # by position: twice as quick as by keyword, 64 times a cycle
            row.worker_id,
            row.pool,
            row.pid,
            row.category if state in (State.BUSY, State.STALE) else None,
            state,
            now - row.last_heartbeat,
            mono - t.beats_mono,
            row.beats,
        )

    @staticmethod
    def _counts(obs: Observation, views: list[WorkerView]) -> dict[tuple[str, str], Count]:
        busy = Counter((w.pool, w.category) for w in views if w.category is not None)
        return {
            key: Count(busy[key], *obs.backlog.get(key, (0, 0)))
            for key in sorted(busy.keys() | obs.backlog.keys())
        }

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
        more = 0  # reasons past the three shown: not worth formatting a thousand
        for w in views:
            # A stale worker that holds a category may still be working: not idle; nor one
            # judged dead by its silence alone.
            if w.state == State.DEAD:
                held = self._tracked[w.worker_id].unproven
            else:
                held = w.category  # only a busy or stale worker's
            if held is None:
                continue
            if len(reasons) >= 3:
                more += 1
            elif w.state == State.BUSY:
                reasons.append(f"{w.worker_id} busy in {held}")
            else:
                silent = "stale" if w.state == State.STALE else "silent"
                reasons.append(f"{w.worker_id} {silent} for {w.stale_for:.0f} s in {held}")
        if reasons:
            self._streak.clear()
            self._idle_since = None
            more += max(0, len(reasons) - 3)
            return False, "; ".join(reasons[:3]) + (f"; and {more} more" if more else "")
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


def _newest_boots(rows: Iterable[WorkerRow]) -> dict[str, tuple[float, str]]:
    """Each host's boot id as its most recently started worker gives it."""
    newest: dict[str, tuple[float, str]] = {}
    for r in rows:
        if r.boot_id is not None and (r.host not in newest or r.started_at > newest[r.host][0]):
            newest[r.host] = (r.started_at, r.boot_id)
    return newest
