"""The initial schema: heartbeats, the reference task table, history and the idle row.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# One stretch per state change of a worker, until its next state change: busy or idle stretches
# one query away in sqlite3. Stale / recovered do not change what a worker holds, so they do
# not cut a stretch; exited and dead end one and start none.
WORKER_INTERVALS = """
CREATE VIEW worker_intervals AS
SELECT run_id, worker_id, category,
       CASE WHEN category IS NULL THEN 'idle' ELSE 'busy' END AS state,
       started, ended, ended - started AS seconds
FROM (
    SELECT run_id, worker_id, event, category, ts AS started,
           LEAD(ts) OVER (PARTITION BY worker_id ORDER BY id) AS ended
    FROM worker_events
    WHERE event IN ('joined', 'busy', 'idle', 'category', 'exited', 'dead')
) AS changes
WHERE event NOT IN ('exited', 'dead')
"""

BACKLOG_TIMELINE = """
CREATE VIEW backlog_timeline AS
SELECT s.run_id, s.ts, c.pool, c.category, c.pending, c.running, c.busy
FROM snapshot_counts AS c JOIN snapshots AS s ON s.id = c.snapshot_id
"""

ACTIVE = "status IN ('pending', 'running')"


def upgrade() -> None:
    op.create_table(
        "worker_status",
        sa.Column("worker_id", sa.Text, primary_key=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("pid_start", sa.Float),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pool", sa.Text, nullable=False),
        sa.Column("category", sa.Text),
        sa.Column("category_since", sa.Float),
        sa.Column("last_heartbeat", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("beats", sa.Integer, nullable=False, server_default="1"),
        sa.Column("exited_at", sa.Float),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("pool", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("worker_id", sa.Text),
        sa.Column("payload", sa.Text),
        sqlite_autoincrement=True,
    )
    # Partial indexes hold only active tasks: the backlog count and a claim cost the same with
    # a million finished tasks as with a thousand.
    op.create_index(
        "ix_tasks_active",
        "tasks",
        ["pool", "category", "status"],
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_index(
        "ix_tasks_claim",
        "tasks",
        ["pool", "id"],
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.Integer, primary_key=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("end_reason", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "snapshots",
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
    op.create_index("ix_snapshots_run_ts", "snapshots", ["run_id", "ts"])
    op.create_table(
        "snapshot_counts",
        sa.Column("snapshot_id", sa.Integer, primary_key=True),
        sa.Column("pool", sa.Text, primary_key=True),
        sa.Column("category", sa.Text, primary_key=True),
        sa.Column("busy", sa.Integer, nullable=False),
        sa.Column("pending", sa.Integer, nullable=False),
        sa.Column("running", sa.Integer, nullable=False),
    )
    op.create_table(
        "worker_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("worker_id", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("category", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_worker_events_run_ts", "worker_events", ["run_id", "ts"])
    op.create_index("ix_worker_events_worker", "worker_events", ["worker_id", "id"])
    op.create_table(
        "scheduler_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("interval", sa.Float, nullable=False),
        sa.Column("heartbeat", sa.Float, nullable=False),
        sa.Column("cycle", sa.Integer, nullable=False),
        sa.Column("idle", sa.Integer, nullable=False),
        sa.Column("idle_since", sa.Float),
        sa.Column("verdict_since", sa.Float),
        sa.Column("not_idle_reason", sa.Text),
        sa.Column("stop_seen", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint("id = 1", name="ck_scheduler_state_single_row"),
    )
    op.execute(WORKER_INTERVALS)
    op.execute(BACKLOG_TIMELINE)


def downgrade() -> None:
    op.execute("DROP VIEW backlog_timeline")
    op.execute("DROP VIEW worker_intervals")
    for table in (
        "scheduler_state",
        "worker_events",
        "snapshot_counts",
        "snapshots",
        "runs",
        "tasks",
        "worker_status",
    ):
        op.drop_table(table)
