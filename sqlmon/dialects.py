"""The SQL that differs between SQLite and PostgreSQL, as constructs compiled per dialect, so
that every statement is written once."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class db_now(FunctionElement[float]):  # noqa: N801  (reads as the SQL function it is)
    """The database server's clock, in unix seconds with a fraction.

    On PostgreSQL, clock_timestamp(): the time of the call, not of the transaction's start, so
    that a lease renewed late in a slow transaction is still renewed for its full length. On
    SQLite the database's clock is the host's, as precise as julianday() (a millisecond).
    """

    type = sa.Float()
    inherit_cache = True


@compiles(db_now)
def _db_now(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _db_now_pg(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


class greatest(FunctionElement[Any]):  # noqa: N801
    """The larger of its arguments: SQLite's two-argument max(), PostgreSQL's GREATEST()."""

    inherit_cache = True


class least(FunctionElement[Any]):  # noqa: N801
    """The smaller of its arguments: SQLite's two-argument min(), PostgreSQL's LEAST()."""

    inherit_cache = True


@compiles(greatest)
def _greatest(element: Any, compiler: Any, **kw: Any) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


@compiles(greatest, "postgresql")
def _greatest_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return f"GREATEST({compiler.process(element.clauses, **kw)})"


@compiles(least)
def _least(element: Any, compiler: Any, **kw: Any) -> str:
    return f"min({compiler.process(element.clauses, **kw)})"


@compiles(least, "postgresql")
def _least_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return f"LEAST({compiler.process(element.clauses, **kw)})"


def insert(table: sa.Table, dialect: str) -> Any:
    """An INSERT that can take ON CONFLICT, for `dialect` (a dialect's name)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
