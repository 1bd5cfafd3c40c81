"""The tables and views. Users query them from the sqlite3 shell, so names are an interface.

They are created and upgraded only by the Alembic migrations in migrations/; these objects are
what the library's queries are built from. A test holds the two in step.
"""

from __future__ import annotations

import sqlalchemy as sa

# Every revision this sqlmon can read, oldest first; the last is the one it writes.
REVISIONS = ("0001", "0002", "0003", "0004")
HEAD = REVISIONS[-1]
VERSION_TABLE = "sqlmon_alembic_version"  # not Alembic's default, so a host app's own is safe


metadata = sa.MetaData()

worker_status = sa.Table(
    "worker_status",
    metadata,
    sa.Column("worker_id", sa.Text, primary_key=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_start", sa.Float),  # unix s at which the pid started: pid reuse shows
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pool", sa.Text, nullable=False),
    sa.Column("category", sa.Text),  # NULL means idle
    sa.Column("category_since", sa.Float),  # unix s at which the current category began
    sa.Column("last_heartbeat", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("beats", sa.Integer, nullable=False, server_default="1"),
    sa.Column("exited_at", sa.Float),
    sa.Column("missed", sa.Integer, nullable=False, server_default="0"),  # beats dropped so far
    sa.Column("lost", sa.Integer, nullable=False, server_default="0"),  # stretches past the bound
    sa.Column("boot_id", sa.Text),  # the host's boot id: a new one shows the host rebooted
    sa.Column("backend", sa.Text),  # PostgreSQL: 'pid@postmaster start' of its connection
    sa.Column("clock_skew", sa.Float),  # PostgreSQL: host clock - database clock (s), shown only
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("pool", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("worker_id", sa.Text),
    sa.Column("payload", sa.Text),
    sqlite_autoincrement=True,  # ids never go back: max(id) is a high-water mark
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("end_reason", sa.Text),
    sqlite_autoincrement=True,
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("cycle", sa.Integer, nullable=False),
    sa.Column("workers_busy", sa.Integer, nullable=False),
    sa.Column("workers_idle", sa.Integer, nullable=False),
    sa.Column("workers_stale", sa.Integer, nullable=False),
    sa.Column("workers_dead", sa.Integer, nullable=False),
    sa.Column("backlog_pending", sa.Integer, nullable=False),
    sa.Column("backlog_running", sa.Integer, nullable=False),
    sa.Column("idle", sa.Integer, nullable=False),
    sa.Column("cycle_seconds", sa.Float, nullable=False),
    sa.Column("writes_skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("late", sa.Integer, nullable=False, server_default="0"),
)

snapshot_counts = sa.Table(
    "snapshot_counts",
    metadata,
    sa.Column("snapshot_id", sa.Integer, primary_key=True),
    sa.Column("pool", sa.Text, primary_key=True),
    sa.Column("category", sa.Text, primary_key=True),
    sa.Column("busy", sa.Integer, nullable=False),
    sa.Column("pending", sa.Integer, nullable=False),
    sa.Column("running", sa.Integer, nullable=False),
)

worker_events = sa.Table(
    "worker_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("worker_id", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("category", sa.Text),
    sa.Column("pid", sa.Integer),
    sa.Column("detail", sa.Text),
)

scheduler_state = sa.Table(
    "scheduler_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: the single idle row
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("interval", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),  # end of the last completed cycle
    sa.Column("cycle", sa.Integer, nullable=False),
    sa.Column("idle", sa.Integer, nullable=False),
    sa.Column("idle_since", sa.Float),  # when the current idle stretch was first seen
    sa.Column("verdict_since", sa.Float),  # start of the earliest read behind the verdict
    sa.Column("not_idle_reason", sa.Text),
    sa.Column("stop_seen", sa.Integer, nullable=False, server_default="0"),
    # The lease: only the scheduler holding `term` may write; it expires at `expires_at`
    # (unix s) unless renewed by the next cycle.
    sa.Column("pid_start", sa.Float),
    sa.Column("term", sa.Integer, nullable=False, server_default="0"),
    sa.Column("expires_at", sa.Float),
    sa.Column("folded_id", sa.Integer, nullable=False, server_default="0"),  # stretch_totals'
)

# Every busy or idle stretch a worker closed, on the worker's own clock; a stretch still open
# is worker_status's category since category_since.
worker_stretches = sa.Table(
    "worker_stretches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("worker_id", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("category", sa.Text),  # NULL: idle
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("ended", sa.Float, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),  # ok, failed, dead
    sa.Column("error", sa.Text),  # the exception's type name, when failed
    sa.Index("ux_worker_stretches_start", "worker_id", "started", unique=True),
    sqlite_autoincrement=True,  # ids only grow: folded_id is a cursor
)

# The scheduler's running sums of worker_stretches per run, clipped to the run's window.
stretch_totals = sa.Table(
    "stretch_totals",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("worker_id", sa.Text, primary_key=True),
    sa.Column("category", sa.Text, primary_key=True),  # '' for idle
    sa.Column("state", sa.Text, primary_key=True),  # busy or idle
    sa.Column("outcome", sa.Text, primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("first_started", sa.Float, nullable=False),
    sa.Column("last_ended", sa.Float, nullable=False),
)

# What the scheduler last judged of each worker's incarnation.
worker_states = sa.Table(
    "worker_states",
    metadata,
    sa.Column("worker_id", sa.Text, primary_key=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("state", sa.Text, nullable=False),  # alive, stale, dead, exited
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("evidence", sa.Text),  # why dead: pid_gone, pid_reused, replaced, no_beats
    sa.Column("detail", sa.Text),
    sa.Column("run_id", sa.Integer, nullable=False),
)
