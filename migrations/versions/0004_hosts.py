"""What a worker says about its host, for workers on many hosts (PostgreSQL).

- boot_id: the host's boot id (/proc/sys/kernel/random/boot_id). A newer worker from the same
  host name with another boot id shows that host rebooted: its older rows are dead at once.
- backend: the worker's server connection, as 'pid@postmaster start' (NULL on SQLite and
  behind a connection pooler). A connection gone from pg_stat_activity is evidence of a death.
- clock_skew: the host's wall clock minus the database's clock at the worker's last write, in
  seconds. Shown, never used to judge.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (("boot_id", sa.Text), ("backend", sa.Text), ("clock_skew", sa.Float))


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("worker_status", sa.Column(name, type_))


def downgrade() -> None:
    with op.batch_alter_table("worker_status") as batch:
        for name, _type in reversed(COLUMNS):
            batch.drop_column(name)
