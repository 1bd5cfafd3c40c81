"""The serving side's database: a read-only engine, one short read transaction per request.

A long-running reader must notice when the file it watches is deleted or replaced (a new
`sqlmon init`, a restore): an open SQLite connection keeps reading the old inode forever. So
each read first compares the path's inode with the one the engine was built for, and builds
a new engine, with the schema check, when they differ.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import Connection

from . import db as dbmod
from . import live
from .errors import DatabaseError, DatabaseMissing
from .migrate import check, describe

T = TypeVar("T")


class Source:
    """Where serve reads from; thread-safe (each request takes its own pooled connection)."""

    def __init__(self, db: str | os.PathLike[str] | sa.URL) -> None:
        self.url = dbmod.to_url(db)
        self.path = dbmod.sqlite_path(self.url)
        self.backend = "sqlite" if dbmod.is_sqlite(self.url) else self.url.get_backend_name()
        self._engine: sa.Engine | None = None
        self._inode: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.statements = 0  # SQL statements run so far (the benchmark reads it)

    def _current(self) -> sa.Engine:
        with self._lock:
            inode = None
            if self.path is not None:
                try:
                    st = os.stat(self.path)
                except OSError:
                    raise DatabaseMissing(f"{self.path}: no such database") from None
                inode = (st.st_dev, st.st_ino)
            if self._engine is None or inode != self._inode:
                if self._engine is not None:
                    self._engine.dispose()
                    self._engine = None
                eng = dbmod.read_only_engine(self.url)
                sa.event.listen(eng, "before_cursor_execute", self._count)
                try:
                    with eng.connect() as conn, dbmod.read(conn):
                        check(conn, self.url)
                except sa.exc.DatabaseError as exc:
                    eng.dispose()
                    raise DatabaseError(f"{self.path or self.url}: {describe(exc)}") from exc
                except Exception:
                    eng.dispose()
                    raise
                self._engine, self._inode = eng, inode
            return self._engine

    def _count(self, *_args: object) -> None:
        self.statements += 1

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """One read transaction, ended when the block ends: never held between requests."""
        with self._current().connect() as conn, dbmod.read(conn):
            yield conn

    def read(self, fn: Callable[[Connection], T]) -> T:
        with self.reading() as conn:
            return fn(conn)

    def live(self) -> live.Live:
        return self.read(live.load)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
