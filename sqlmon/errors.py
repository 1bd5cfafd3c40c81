"""Exceptions that say what is wrong in one line, for people and for the CLI's exit code 2."""


class SqlmonError(Exception):
    """Base of every error sqlmon raises on purpose."""


class ConfigError(SqlmonError, ValueError):
    """A setting that cannot work (an interval of zero, an unknown task table or column)."""


class DatabaseError(SqlmonError):
    """The database cannot be used: missing, not SQLite, not sqlmon's, or of another schema."""


class DatabaseMissing(DatabaseError):
    pass


class NotInitialised(DatabaseError):
    pass


class SchemaTooOld(DatabaseError):
    pass


class SchemaTooNew(DatabaseError):
    pass


class SchedulerGone(SqlmonError):
    """wait_idle: the scheduler is not alive, so no idle verdict can come."""


class SchedulerRunning(SqlmonError):
    """Another scheduler holds this database's lease."""


class LeaseLost(SqlmonError):
    """Another scheduler took this database's lease over: this one must not write again."""
