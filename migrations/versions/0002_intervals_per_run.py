"""Busy / idle stretches per run, and indexes for the post-run report.

worker_intervals paired each state change with the worker's next one in any run, so a run's
last stretch ran on to the next run's first event; now a stretch ends at the next change in the
same run, or at the run's end. A covering index serves the per-worker, per-run scans of
`sqlmon report` and `timeline` without touching the table; another finds each category's
backlog peak, and when it came, by a seek instead of a scan of every count of the run.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WORKER_INTERVALS = """
CREATE VIEW worker_intervals AS
SELECT changes.run_id, worker_id, category,
       CASE WHEN category IS NULL THEN 'idle' ELSE 'busy' END AS state,
       started, COALESCE(next_change, runs.ended_at) AS ended,
       COALESCE(next_change, runs.ended_at) - started AS seconds
FROM (
    SELECT run_id, worker_id, event, category, ts AS started,
           LEAD(ts) OVER (PARTITION BY run_id, worker_id ORDER BY id) AS next_change
    FROM worker_events
    WHERE event IN ('joined', 'busy', 'idle', 'category', 'exited', 'dead')
) AS changes
JOIN runs ON runs.run_id = changes.run_id
WHERE event NOT IN ('exited', 'dead')
"""

OLD_WORKER_INTERVALS = """
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


def upgrade() -> None:
    op.execute("DROP VIEW worker_intervals")
    op.execute(WORKER_INTERVALS)
    op.create_index(
        "ix_worker_events_run_worker",
        "worker_events",
        ["run_id", "worker_id", "id", "event", "ts", "category"],
    )
    op.create_index(
        "ix_snapshot_counts_peak",
        "snapshot_counts",
        ["pool", "category", "pending", "snapshot_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_snapshot_counts_peak", table_name="snapshot_counts")
    op.drop_index("ix_worker_events_run_worker", table_name="worker_events")
    op.execute("DROP VIEW worker_intervals")
    op.execute(OLD_WORKER_INTERVALS)
