"""Injection and terminal safety, as properties.

Hypothesis makes adversarial worker ids, categories and CLI filters (quotes, `%`, `_`, NUL,
newlines, ANSI and OSC escape sequences, bidirectional overrides, long unicode). They go in
through the real paths (Heartbeat's upsert, the scheduler's events) and come out through the
CLI. Properties: a filter's result equals an exact-match oracle computed in Python from the
file; filtering changes no byte; nothing the CLI prints holds a raw control character.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sqlmon import Heartbeat, Scheduler, init_db, queries
from sqlmon import db as dbmod
from sqlmon.cli import app

# Pieces that mean something to SQL, LIKE, shells and terminals.
NASTY = [
    "'", '"', "%", "_", "\\", "\x00", "\n", "\r", "\t", ";", "--", "/*", "*/",
    "'; DROP TABLE worker_status; --", "' OR '1'='1", "%_%", "\\%",
    "\x1b[31m", "\x1b[2J", "\x1b]0;pwned\x07", "\x1b]8;;http://x\x1b\\", "\x9b31m", "\x7f",
    "\u202e", "\u2066", "\u200b", "é", "データ", "🙂", "\ufeff",
]  # fmt: skip
text = st.lists(
    st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=12)), min_size=1, max_size=6
).map("".join)
long_text = st.text(min_size=200, max_size=600)
names = st.one_of(text, text, long_text)

# What a terminal would obey: C0 and C1 controls (newline aside: it ends lines), DEL, and the
# bidirectional overrides and isolates that reorder what is shown.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
LISTINGS = [
    ["status"],
    ["watch", "--count", "1"],
    ["runs"],
    ["history", "--limit", "0"],
    ["events", "--limit", "0"],
    ["timeline"],
    ["report"],
    ["check"],
    ["idle"],
]


class Pipeline:
    """One database that the examples keep adding adversarial workers to, through the real
    Heartbeat and a scheduler stepped by hand."""

    def __init__(self, path: Path) -> None:
        self.db = str(path)
        init_db(self.db)
        self.scheduler = Scheduler(self.db, interval=0.5, stale_after=5.0, warn_after=5.0)
        self.scheduler.open()
        self.added: list[tuple[str, list[str]]] = []

    def add(self, worker_id: str, categories: list[str]) -> None:
        hb = Heartbeat(self.db, worker_id, "cpu", min_interval=0.0)
        for category in categories:
            hb.beat(category)
            self.scheduler.step()
        hb.close()
        self.scheduler.step()
        assert hb.missed == 0
        self.added.append((worker_id, categories))

    def events(self) -> list[tuple[str, str, str | None]]:
        """The oracle's input: every event, read with plain sqlite3: the scheduler's, and the
        start of each stretch the workers recorded."""
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(
                "SELECT worker_id, event, category FROM worker_events UNION ALL "
                "SELECT worker_id, CASE WHEN category IS NULL THEN 'idle' ELSE 'busy' END, "
                "category FROM worker_stretches UNION ALL "
                "SELECT worker_id, 'failed', category FROM worker_stretches "
                "WHERE outcome = 'failed'"
            ).fetchall()
        finally:
            conn.close()

    def digest(self) -> str:
        conn = sqlite3.connect(self.db)  # the bytes of the database, WAL included
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return hashlib.sha256(Path(self.db).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    p = Pipeline(tmp_path_factory.mktemp("props") / "x.db")
    yield p
    p.scheduler.close()


def cli(*args: str) -> tuple[int, str, str]:
    got = CliRunner().invoke(app, list(args), env={"COLUMNS": "120"})
    assert got.exception is None or isinstance(got.exception, SystemExit), got.exception
    return got.exit_code, got.stdout, got.stderr


def listed(db: str, **filters: str) -> Counter[tuple[str, str, str | None]]:
    args = ["events", db, "--format", "json", "--limit", "0"]
    for option, value in filters.items():
        args += [f"--{option}", value]
    code, out, err = cli(*args)
    assert code == 0, err
    return Counter((r["worker_id"], r["event"], r["category"]) for r in json.loads(out))


def oracle(rows: list[tuple[str, str, str | None]], **filters: str) -> Counter[tuple]:
    index = {"worker": 0, "category": 2}
    return Counter(r for r in rows if all(r[index[k]] == v for k, v in filters.items()))


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(worker_id=names, categories=st.lists(names, min_size=1, max_size=3))
def test_adversarial_names_round_trip_and_filter_exactly(
    pipeline: Pipeline, worker_id: str, categories: list[str]
) -> None:
    if any(w == worker_id for w, _ in pipeline.added):
        return  # the same id again is a new incarnation: a different property
    pipeline.add(worker_id, categories)
    rows = pipeline.events()
    before = pipeline.digest()
    assert listed(pipeline.db, worker=worker_id) == oracle(rows, worker=worker_id)
    for category in categories:
        assert listed(pipeline.db, category=category) == oracle(rows, category=category)
        assert listed(pipeline.db, worker=worker_id, category=category) == oracle(
            rows, worker=worker_id, category=category
        )
    assert pipeline.digest() == before


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cli_probe=names,
    option=st.sampled_from(["worker", "category"]),
    probes=st.lists(names, min_size=10, max_size=10),
)
def test_filters_are_exact_matches_never_patterns(
    pipeline: Pipeline, cli_probe: str, option: str, probes: list[str]
) -> None:
    """Filters that are not in the data, or that would match as LIKE patterns or as SQL,
    find exactly what equality finds (mostly nothing). One probe per example goes through
    the CLI; the rest through the query the CLI calls, so that thousands are tried in seconds."""
    if not pipeline.added:
        pipeline.add("seed-%_'\"", ["OCR%", "_"])
    rows = pipeline.events()
    assert listed(pipeline.db, **{option: cli_probe}) == oracle(rows, **{option: cli_probe})
    engine = dbmod.engine(pipeline.db, "read")
    try:
        with engine.connect() as conn, dbmod.read(conn):
            for probe in probes:
                for name in ("worker", "category"):
                    got = queries.events(conn, **{name: probe})
                    found = Counter((e.worker_id, e.event, e.category) for e in got)
                    assert found == oracle(rows, **{name: probe})
    finally:
        engine.dispose()


def test_nothing_printed_holds_a_raw_control_character(pipeline: Pipeline) -> None:
    if len(pipeline.added) < 10:  # run alone: put the nastiest names in first
        for i, piece in enumerate(NASTY):
            pipeline.add(f"w{i}{piece}", [f"c{piece}", piece + "x"])
    before = pipeline.digest()
    outputs = []
    for args in LISTINGS:
        for fmt in ([], ["--format", "csv"], ["--format", "table"]):
            if fmt and args[0] not in ("runs", "history", "events"):
                continue
            code, out, err = cli(args[0], pipeline.db, *args[1:], *fmt)
            assert code in (0, 1), (args, err)
            outputs.append((args[0], out + err))
    for worker_id, _ in pipeline.added[:50]:
        code, out, err = cli("events", pipeline.db, "--worker", worker_id, "--limit", "0")
        assert code == 0, err
        outputs.append(("events --worker", out + err))
    bad = [(name, RAW_CONTROL.findall(text)[:3]) for name, text in outputs]
    assert [b for b in bad if b[1]] == []
    assert pipeline.digest() == before
