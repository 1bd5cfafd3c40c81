"""sqlmon: a lightweight overseer for multi-process pipelines, through SQLite.

Workers beat (`Heartbeat`), a `Scheduler` process watches them and the task table's backlog,
and the main process asks `is_idle` / `wait_idle` whether everything is done.
"""

from .backlog import TaskTable
from .errors import ConfigError, DatabaseError, SqlmonError
from .heartbeat import Heartbeat
from .idle import is_idle, wait_idle
from .migrate import init_db
from .scheduler import Scheduler

__all__ = [
    "ConfigError",
    "DatabaseError",
    "Heartbeat",
    "Scheduler",
    "SqlmonError",
    "TaskTable",
    "init_db",
    "is_idle",
    "wait_idle",
]
__version__ = "0.1.0"
