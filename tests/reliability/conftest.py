"""The backend a scenario runs on: SQLite files, or databases on the session's PostgreSQL
server (tests/conftest.py's pg_databases), dropped after the test."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from .harness import SQLITE, Backend, PostgreSQL


def takes_backend(scenario: Any) -> bool:
    return "backend" in inspect.signature(scenario).parameters


def on_backends(scenarios: Iterable[tuple[Any, dict[str, Any], dict[str, Any]]]) -> list[Any]:
    """(scenario, backend name) parameters: every scenario on SQLite, and on PostgreSQL those
    that take a backend."""
    cases = []
    for f, _ci, _soak in scenarios:
        cases.append(pytest.param(f, "sqlite", id=f.__name__))
        if takes_backend(f):
            cases.append(
                pytest.param(
                    f, "postgresql", id=f"{f.__name__}-postgresql", marks=pytest.mark.postgresql
                )
            )
    return cases


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if getattr(request, "param", "sqlite") == "sqlite":
        yield SQLITE
        return
    pg = PostgreSQL(request.getfixturevalue("pg_databases"))
    try:
        yield pg
    finally:
        pg.drop()
