"""sqlmon: a lightweight overseer for multi-process pipelines, through SQLite.

Workers beat (`Heartbeat`), a `Scheduler` process watches them and the task table's backlog,
and the main process asks `is_idle` / `wait_idle` whether everything is done.
"""

from typing import TYPE_CHECKING

from .backlog import TaskTable
from .errors import ConfigError, DatabaseError, SchedulerGone, SchedulerRunning, SqlmonError
from .heartbeat import Heartbeat
from .idle import is_idle, wait_idle
from .migrate import init_db

if TYPE_CHECKING:
    from .scheduler import Scheduler


def __getattr__(name: str) -> object:
    # The monitor's half (the scheduler, its judge, history and HUD, multiprocessing) loads on
    # first use: a worker that imports sqlmon for its Heartbeat never pays for it.
    if name == "Scheduler":
        from .scheduler import Scheduler

        return Scheduler
    raise AttributeError(f"module 'sqlmon' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DatabaseError",
    "Heartbeat",
    "Scheduler",
    "SchedulerGone",
    "SchedulerRunning",
    "SqlmonError",
    "TaskTable",
    "init_db",
    "is_idle",
    "wait_idle",
]
__version__ = "0.1.0"
