"""Alembic environment for sqlmon's own tables.

sqlmon.migrate hands over a connection that already holds the write lock (BEGIN IMMEDIATE), so
that two processes initialising one database at once run the migrations exactly once.
"""

from alembic import context

from sqlmon.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run sqlmon's migrations through sqlmon.init_db or `sqlmon init`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite can run DDL inside a transaction; a failed migration then leaves nothing behind.
    transactional_ddl=True,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
