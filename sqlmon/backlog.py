"""Reading a task table's backlog: pending and running tasks per pool and category."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .db import Prepared
from .errors import ConfigError

Counts = dict[tuple[str, str], tuple[int, int]]  # (pool, category) -> (pending, running)


@dataclass(frozen=True)
class TaskTable:
    """Where the backlog comes from. The defaults read sqlmon's bundled `tasks` table.

    `pending` and `running` are the status values that count as each; `pool=None` with
    `pools={category: pool}` serves a table without a pool column; `database` names another
    SQLite file (or URL) holding the table, which the scheduler opens read-only; `id` is a
    column whose maximum only grows (None when there is none).
    """

    table: str = "tasks"
    category: str = "category"
    status: str = "status"
    pool: str | None = "pool"
    pending: tuple[str, ...] = ("pending",)
    running: tuple[str, ...] = ("running",)
    pools: Mapping[str, str] | None = None
    database: str | None = None
    id: str | None = "id"
    _prepared: Prepared | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pending, running = _values(self.pending, "pending"), _values(self.running, "running")
        object.__setattr__(self, "pending", pending)
        object.__setattr__(self, "running", running)
        if set(pending) & set(running):
            raise ConfigError(
                f"status values {sorted(set(pending) & set(running))} are both pending and running"
            )
        for name in ("table", "category", "status", "pool", "id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or "\x00" in value):
                raise ConfigError(f"TaskTable {name}={value!r} is not a usable name")
        if self.pool is None and self.pools is None:
            raise ConfigError("TaskTable without a pool column needs pools={category: pool}")
        if self.pools is not None:
            object.__setattr__(self, "pools", dict(self.pools))
        object.__setattr__(self, "_prepared", None)

    def columns(self) -> list[str]:
        return [c for c in (self.category, self.status, self.pool, self.id) if c is not None]

    def validate(self, conn: sa.Connection) -> None:
        """Refuse a table or column that the database does not have, with a clear message."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(self.table):
            raise ConfigError(f"task table {self.table!r} does not exist")
        have = {c["name"] for c in inspector.get_columns(self.table)}
        missing = [c for c in self.columns() if c not in have]
        if missing:
            raise ConfigError(f"task table {self.table!r} has no column {', '.join(missing)}")

    def statement(self, dialect: sa.Dialect) -> str:
        """The backlog in one statement (so in one snapshot): a row per (pool, category, status)
        with its count, then one row with the high-water mark.

        Status values are rendered as quoted literals, not bound: SQLite only uses a partial
        index on the active statuses when it can see the values at prepare time. A plain count
        per status, in the index's order, costs a third less than summing CASEs per row.
        """
        t = sa.table(self.table, *(sa.column(c) for c in self.columns()))
        status, category = t.c[self.status], t.c[self.category]
        pool = t.c[self.pool] if self.pool is not None else sa.null()
        counts = (
            sa.select(
                sa.literal_column("'c'").label("kind"),
                pool.label("pool"),
                category.label("category"),
                status.label("status"),
                sa.func.count().label("n"),
                sa.null().label("high_water"),
            )
            .where(status.in_(self.pending + self.running))
            .group_by(pool, category, status)
        )
        high = sa.func.max(t.c[self.id]) if self.id is not None else sa.null()
        mark = sa.select(sa.literal_column("'m'"), sa.null(), sa.null(), sa.null(), sa.null(), high)
        sql = sa.union_all(counts, mark).compile(
            dialect=dialect, compile_kwargs={"literal_binds": True}
        )
        return str(sql)

    def query(self, conn: sa.Connection) -> Prepared:
        """The statement, compiled once for the connection's dialect."""
        if self._prepared is None:
            object.__setattr__(self, "_prepared", Prepared(self.statement(conn.dialect)))
        assert self._prepared is not None
        return self._prepared

    def read(self, conn: sa.Connection) -> tuple[Counts, int | None]:
        """(counts per (pool, category), high-water mark) from one statement."""
        return self.counts(self.query(conn).rows(conn))

    def counts(self, rows: Iterable[tuple[Any, ...]]) -> tuple[Counts, int | None]:
        """(counts per (pool, category), high-water mark) from the statement's rows."""
        counts: Counts = {}
        high: int | None = None
        pending = frozenset(self.pending)
        for kind, pool, category, status, n, mark in rows:
            if kind == "m":
                high = mark
                continue
            category = str(category)
            if self.pool is None:
                assert self.pools is not None
                pool = self.pools.get(category, "?")
            key = (str(pool), category)
            old = counts.get(key, (0, 0))
            n = int(n)
            counts[key] = (old[0] + n, old[1]) if status in pending else (old[0], old[1] + n)
        return counts, high


def _values(values: object, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    try:
        out = tuple(str(v) for v in values)  # type: ignore[attr-defined]
    except TypeError:
        raise ConfigError(f"TaskTable {what} must be a list of status values") from None
    if not out:
        raise ConfigError(f"TaskTable {what} needs at least one status value")
    return out
