"""Every default in one place, each with its unit (seconds unless the name says otherwise)."""

# Scheduler
INTERVAL = 1.0  # s between cycles
STALE_AFTER = 10.0  # s without a new beat before a worker is stale
WARN_AFTER = 30.0  # s of staleness before the one WARNING of an episode
# s without a beat before a worker whose process the scheduler cannot check (another host)
# is dead, when nothing else shows its death sooner
DEAD_AFTER = 60.0
IDLE_CONFIRM = 2  # consecutive idle cycles, same task high-water mark, before saying idle
HUD_EVERY = 1.0  # s between HUD log lines, never more often
LATE_FACTOR = 2.0  # a cycle later than this many intervals means the scheduler was paused
SCHEDULER_BUSY_TIMEOUT = 0.25  # s the scheduler waits for the write lock before skipping a write
WAL_RESTART_BYTES = 4 * 1024 * 1024  # past this, the scheduler starts the WAL over (db.shrink_wal)
WAL_WARN_BYTES = 64 * 1024 * 1024  # the scheduler warns once when the WAL grows past this
UNWRITTEN_EVENTS = 100_000  # worker events kept for the next write while writes fail
MANY_ROWS = 1000  # rows a multi-row INSERT carries on PostgreSQL (its limit: 65,535 values)

# Worker heartbeat
MIN_INTERVAL = 0.5  # s: a repeated beat with the same category inside this writes nothing
WORKER_BUSY_TIMEOUT = 0.1  # s a beat waits for the write lock before it is dropped
# s between a PostgreSQL heartbeat's tries of a lock someone holds: each try waits the whole
# lock_timeout, so the writes between are dropped without one
PG_CONTENDED_TRY_EVERY = 1.0
CLOSE_BUSY_TIMEOUT = 2.0  # s Heartbeat.close() waits for it: what it drops is lost for good
MISSED_LOG_EVERY = 60.0  # s between log lines about dropped beats (and skipped cycle writes)
# s between looks at whether the database file was deleted or replaced; the writes made since
# the last look are counted missed (and their stretches lost) when it was
FILE_CHECK_EVERY = 1.0
UNWRITTEN_STRETCHES = 10_000  # closed stretches a worker keeps for the next write, at most

# Connections
DB_FILE_MODE = 0o600  # permission bits of a database file sqlmon creates (-wal, -shm follow)
INIT_BUSY_TIMEOUT = 30.0  # s init_db and people's tools wait for the lock
READ_BUSY_TIMEOUT = 5.0  # s a read-only connection waits (WAL recovery, checkpoints)
# WAL checkpoints are kept off the workers' path: the scheduler's commit checkpoints (PASSIVE)
# once the WAL holds SCHEDULER_AUTOCHECKPOINT_PAGES, which under load is every cycle; worker
# connections only checkpoint past this far-away fallback so that the WAL stays bounded while
# the scheduler is dead.
WORKER_AUTOCHECKPOINT_PAGES = 8000  # about 32 MiB at 4 KiB pages
# About 1 MiB. Not every cycle: a checkpoint's two fsyncs cost more
# than the rest of a quiet cycle's writing, whether it copies 30 pages or 250.
SCHEDULER_AUTOCHECKPOINT_PAGES = 256
WAL_RESET_BUSY_TIMEOUT = 0.01  # s a RESTART / TRUNCATE checkpoint may hold writers back
JOURNAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024  # the WAL is truncated back to this after a reset

# PostgreSQL: each role's statement_timeout (s; 0: none), and how long its session may sit idle
# inside a transaction before the server ends it
PG_STATEMENT_TIMEOUT = {
    "create": 0.0,
    "scheduler": 10.0,
    "heartbeat": 2.0,
    "tool": 0.0,
    "read": 30.0,
}
PG_IDLE_IN_TRANSACTION = {
    "create": 60.0,
    # A scheduler paused inside its cycle's transaction (SIGSTOP, a frozen VM) holds the idle
    # row's lock: a standby can take over only once the server ends that session. It then
    # reconnects, finds its lease gone, and steps down.
    "scheduler": 5.0,
    "heartbeat": 60.0,  # autocommit: never inside a transaction
    "tool": 60.0,
    "read": 60.0,
}
# PostgreSQL: how long each role's statements wait for a lock (s; 0: up to the statement
# timeout), the bounds of SQLite's busy timeouts. Nothing of sqlmon's holds a lock a beat
# needs, so a beat only ever waits behind a person or a migration: it is dropped as soon as
# on SQLite; the scheduler skips one cycle's read or write rather than hang past its cycle.
PG_LOCK_TIMEOUT = {
    "create": 0.0,
    "scheduler": SCHEDULER_BUSY_TIMEOUT,
    "heartbeat": WORKER_BUSY_TIMEOUT,
    "tool": 0.0,
    "read": 0.0,
}
# s a stretch id must have been visible before the fold passes it: PostgreSQL can commit ids
# out of order, and no worker's insert stays uncommitted this long (its statement_timeout
# is far shorter); see history.fold_horizon
PG_FOLD_SETTLE = 30.0

# Main process
IDLE_POLL = 0.1  # s between looks at the idle row in wait_idle
# s wait_idle waits for a scheduler it has not yet seen alive before it raises SchedulerGone:
# one started just before the call, as a spawned child on a loaded machine, takes seconds to
# import its modules and write its first row
START_GRACE = 10.0


def fresh_for(interval: float) -> float:
    """How long (s) a scheduler heartbeat stays fresh: an older idle row never reads as idle."""
    return max(3 * interval, interval + 2.0)


# Inspection
TIMELINE_POINTS = 400  # backlog samples per category in a timeline, at most
TIMELINE_RESOLUTION = 2000  # slices of a run below which stretches are summed per slice
