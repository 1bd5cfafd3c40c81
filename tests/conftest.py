"""Shared fixtures: real SQLite files in tmp_path, never a mocked database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sqlmon import init_db


@pytest.fixture
def db(tmp_path: Path) -> str:
    """An initialised sqlmon database file."""
    path = str(tmp_path / "sqlmon.db")
    init_db(path)
    return path


def sql(path: str, query: str, params: tuple = ()) -> list[tuple]:
    """Read with the plain sqlite3 module: tests judge sqlmon by the file, not by its own view."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def execute(path: str, query: str, params: tuple | list = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            if params and isinstance(params, list):
                conn.executemany(query, params)
            else:
                conn.execute(query, params)
    finally:
        conn.close()


@contextmanager
def write_lock_held(path: str) -> Iterator[sqlite3.Connection]:
    """Another connection holds the write lock for the block, as a person in the sqlite3 shell
    would; it is let go (rolled back) at the end unless the block let go of it already."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
