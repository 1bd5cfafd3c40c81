"""The workers' own record of their stretches, the scheduler's stored judgement, and its lease.

- worker_stretches: every busy or idle stretch a worker closed, with its own timestamps,
  written in the same transaction as the worker_status write the transition causes; a
  stretch cut short by a death is closed by the scheduler (outcome 'dead').
- stretch_totals: the scheduler's running sums of those stretches per run, so that a report
  on a long run reads a few hundred rows instead of every stretch.
- worker_states: what the scheduler last judged of each worker (alive, stale, dead, exited),
  since when, and the evidence for a death.
- scheduler_state gains the lease: the term of the scheduler that holds it, when the lease
  expires, the holder's process start time, and how far the totals have folded the record.
- run_windows and worker_intervals: each run's window, and the stretches clipped to it, so
  that adding up runs never counts a second twice.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

RUN_WINDOWS = """
CREATE VIEW run_windows AS
SELECT r.run_id, r.started_at,
       COALESCE(r.ended_at,
                (SELECT s.heartbeat FROM scheduler_state AS s WHERE s.run_id = r.run_id),
                (SELECT max(n.ts) FROM snapshots AS n WHERE n.run_id = r.run_id),
                r.started_at) AS ended_at
FROM runs AS r
"""

# The open stretch of each worker lives in worker_status (its category since category_since)
# until the worker, or the scheduler at its death, closes it into worker_stretches.
WORKER_INTERVALS = """
CREATE VIEW worker_intervals AS
WITH stretch AS (
    SELECT worker_id, pid, category, started, ended, outcome, error
    FROM worker_stretches
    UNION ALL
    SELECT w.worker_id, w.pid, w.category, w.category_since, NULL, 'open', NULL
    FROM worker_status AS w
    WHERE w.exited_at IS NULL AND w.category_since IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM worker_stretches AS x
                      WHERE x.worker_id = w.worker_id AND x.started = w.category_since)
)
SELECT r.run_id, s.worker_id, s.category,
       CASE WHEN s.category IS NULL THEN 'idle' ELSE 'busy' END AS state,
       {max}(s.started, r.started_at) AS started,
       {min}(COALESCE(s.ended, r.ended_at), r.ended_at) AS ended,
       {min}(COALESCE(s.ended, r.ended_at), r.ended_at) - {max}(s.started, r.started_at) AS seconds,
       s.outcome, s.error, s.pid
FROM stretch AS s
JOIN run_windows AS r
  ON s.started < r.ended_at AND COALESCE(s.ended, r.ended_at) > r.started_at
"""

OLD_WORKER_INTERVALS = """
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


# The two-argument max() and min() of SQLite are GREATEST() and LEAST() on PostgreSQL.
_EXTREMES = {"postgresql": {"max": "GREATEST", "min": "LEAST"}}


def _for_dialect(sql: str) -> str:
    names = _EXTREMES.get(op.get_bind().dialect.name, {"max": "max", "min": "min"})
    return sql.format(**names)


def upgrade() -> None:
    op.add_column(
        "worker_status", sa.Column("missed", sa.Integer, nullable=False, server_default="0")
    )
    op.add_column(
        "worker_status", sa.Column("lost", sa.Integer, nullable=False, server_default="0")
    )
    op.add_column("scheduler_state", sa.Column("pid_start", sa.Float))
    op.add_column(
        "scheduler_state", sa.Column("term", sa.Integer, nullable=False, server_default="0")
    )
    op.add_column("scheduler_state", sa.Column("expires_at", sa.Float))
    op.add_column(
        "scheduler_state", sa.Column("folded_id", sa.Integer, nullable=False, server_default="0")
    )
    op.create_table(
        "worker_stretches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("worker_id", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("category", sa.Text),  # NULL: an idle stretch
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("ended", sa.Float, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),  # ok, failed, dead
        sa.Column("error", sa.Text),  # the exception's type name when failed
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ux_worker_stretches_start", "worker_stretches", ["worker_id", "started"], unique=True
    )
    op.create_table(
        "stretch_totals",
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
    op.create_table(
        "worker_states",
        sa.Column("worker_id", sa.Text, primary_key=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),  # the incarnation judged
        sa.Column("state", sa.Text, nullable=False),  # alive, stale, dead, exited
        sa.Column("since", sa.Float, nullable=False),
        sa.Column("evidence", sa.Text),  # for dead: pid_gone, pid_reused, replaced, no_beats
        sa.Column("detail", sa.Text),
        sa.Column("run_id", sa.Integer, nullable=False),
    )
    op.execute("DROP VIEW worker_intervals")
    op.execute(RUN_WINDOWS)
    op.execute(_for_dialect(WORKER_INTERVALS))


def downgrade() -> None:
    op.execute("DROP VIEW worker_intervals")
    op.execute("DROP VIEW run_windows")
    op.execute(OLD_WORKER_INTERVALS)
    op.drop_table("worker_states")
    op.drop_table("stretch_totals")
    op.drop_index("ux_worker_stretches_start", table_name="worker_stretches")
    op.drop_table("worker_stretches")
    for column in ("folded_id", "expires_at", "term", "pid_start"):
        op.drop_column("scheduler_state", column)
    for column in ("lost", "missed"):
        op.drop_column("worker_status", column)
