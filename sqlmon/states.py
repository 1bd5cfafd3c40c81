"""The words sqlmon writes to the database and shows people, each defined once.

They are StrEnums: stored and compared as their plain text, so sqlite3 shell users and the
SQL views see the same words as the code.
"""

from __future__ import annotations

import enum


class Event(enum.StrEnum):
    """What happened to a worker. The scheduler writes the liveness events to worker_events;
    busy and idle are the starts of the stretches the workers record themselves."""

    JOINED = "joined"
    BUSY = "busy"
    IDLE = "idle"
    CATEGORY = "category"  # a direct change of category: only in histories of older versions
    FAILED = "failed"  # a busy stretch that ended by an exception
    STALE = "stale"
    RECOVERED = "recovered"
    DEAD = "dead"
    EXITED = "exited"


# What the scheduler writes (worker_events); the rest come from worker_stretches.
LIVENESS_EVENTS = frozenset({Event.JOINED, Event.STALE, Event.RECOVERED, Event.DEAD, Event.EXITED})
# Events after which a worker incarnation holds nothing more.
ENDING_EVENTS = frozenset({Event.DEAD, Event.EXITED})


class State(enum.StrEnum):
    """A worker as people see it: what it holds (busy, idle) unless the judge found worse."""

    BUSY = "busy"
    IDLE = "idle"
    STALE = "stale"
    DEAD = "dead"
    EXITED = "exited"


class Liveness(enum.StrEnum):
    """What the scheduler stores of each worker (worker_states.state)."""

    ALIVE = "alive"
    STALE = "stale"
    DEAD = "dead"
    EXITED = "exited"


class Evidence(enum.StrEnum):
    """Why a worker was judged dead."""

    PID_GONE = "pid_gone"  # its process no longer exists (or is a zombie)
    PID_REUSED = "pid_reused"  # its pid now belongs to a process started at another time
    REPLACED = "replaced"  # a new process took over its worker id between two cycles
    BOOT_ID_CHANGED = "boot_id_changed"  # its host rebooted since it started
    BACKEND_GONE = "backend_gone"  # PostgreSQL: its server connection closed, for two cycles
    NO_BEATS = "no_beats"  # no beat for the dead threshold (another host: no pid to check)


class Outcome(enum.StrEnum):
    """How a stretch ended."""

    OK = "ok"
    FAILED = "failed"  # the busy block raised; the exception's type name is kept
    DEAD = "dead"  # the worker died in it; closed by the scheduler at the death it detected
    OPEN = "open"  # not ended yet (only in views and reports)
