"""The reliability suite's hostile files: given to every CLI command.

Each command gets random bytes, an empty file, a missing path, a directory, a foreign SQLite
database, a newer schema, a corrupted page, a schema that calls an unknown function, and good
databases at paths with spaces, '?', '#' and non-ASCII. Bad input: exit 2, one line naming the
problem, no traceback, no byte changed, nothing created. Odd paths: opened correctly.
Commands run in process through typer's runner (the matrix is about 100 runs); a few run as
real programs too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sqlmon import Heartbeat, Scheduler, init_db
from sqlmon.cli import app

# Every command that takes a database, with the options it needs to end by itself.
COMMANDS: dict[str, list[str]] = {
    "status": [],
    "watch": ["--count", "1"],
    "runs": [],
    "history": [],
    "events": [],
    "timeline": [],
    "report": [],
    "check": [],
    "idle": [],
    "prune": ["--older-than", "7d"],
    "run": [],
    "init": [],
}
WRITERS = {"prune", "run", "init"}  # may legitimately change a good database

# What the one line must say, per hostile file.
BAD = {
    "random.db": "not an SQLite database",
    "empty.db": "not initialised",
    "missing.db": "no such database",
    "a-directory": "is a directory",
    "foreign.db": "not a sqlmon database",
    "newer.db": "newer than this sqlmon",
    "corrupt.db": "corrupt",
}
# Files a command that creates databases may rightly take over: init makes a missing or an
# empty file into a database, and adds sqlmon's tables beside an application's (that is its
# job), so it is judged on the others only.
CREATES = {("init", "missing.db"), ("init", "empty.db"), ("init", "foreign.db")}
# `watch` started before the database exists (or is initialised) waits for it: tests/test_cli.py.
WAITS = {("watch", "missing.db"), ("watch", "empty.db")}
ODD_NAMES = ["with space.db", "what?.db", "hash#tag.db", "naïve-データ.db", "odd ?#%20 name.db"]


def digest(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.is_dir():
        return "dir:" + ",".join(sorted(os.listdir(path)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str | None]:
    """Every file in the folder and its hash: nothing may change, nothing may appear."""
    return {p.name: digest(p) for p in sorted(folder.iterdir())}


def _good(path: Path) -> None:
    """A sqlmon database with one finished run, checkpointed so that it is one file."""
    init_db(str(path))
    s = Scheduler(str(path), interval=0.2, stale_after=1.0, warn_after=1.0)
    s.open()
    hb = Heartbeat(str(path), "w1", "cpu")
    hb.beat("OCR")
    s.step()
    hb.close()
    s.step()
    s.close()
    _checkpoint(path)


def _checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("hostile")
    good = top / "good.db"
    _good(good)
    made = {}
    bad = top / "bad"
    bad.mkdir()
    (bad / "random.db").write_bytes(os.urandom(8192))
    (bad / "empty.db").write_bytes(b"")
    (bad / "a-directory").mkdir()
    foreign = sqlite3.connect(bad / "foreign.db")
    foreign.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    foreign.execute("INSERT INTO users (name) VALUES ('alice')")
    foreign.commit()
    foreign.close()
    shutil.copy(good, bad / "newer.db")
    conn = sqlite3.connect(bad / "newer.db")
    conn.execute("UPDATE sqlmon_alembic_version SET version_num = '9999_from_the_future'")
    conn.commit()
    conn.close()
    shutil.copy(good, bad / "corrupt.db")
    conn = sqlite3.connect(bad / "corrupt.db")
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'sqlmon_alembic_version'"
    ).fetchone()
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(bad / "corrupt.db", "r+b") as f:  # the page every command reads first
        f.seek((root - 1) * page)
        f.write(b"\xff" * 64)
    made.update({name: bad / name for name in BAD})
    # A schema that calls a function this process does not have: in a view the tools may
    # read and in a trigger on a table the scheduler writes.
    fn = top / "fn"
    fn.mkdir()
    shutil.copy(good, fn / "unknown-function.db")
    conn = sqlite3.connect(fn / "unknown-function.db")
    conn.create_function("evil", 1, lambda x: x, deterministic=True)
    conn.execute("DROP VIEW worker_intervals")
    conn.execute(
        "CREATE VIEW worker_intervals AS SELECT evil(run_id) AS run_id, worker_id, category,"
        " 'busy' AS state, ts AS started, ts AS ended, 0.0 AS seconds FROM worker_events"
    )
    conn.execute(
        "CREATE TRIGGER evil_events AFTER INSERT ON worker_events BEGIN SELECT evil(1); END"
    )
    conn.commit()
    conn.close()
    made["unknown-function.db"] = fn / "unknown-function.db"
    odd = top / "odd dir #1?"
    odd.mkdir()
    for name in ODD_NAMES:
        shutil.copy(good, odd / name)
        made[name] = odd / name
    return made


def invoke(command: str, path: Path) -> tuple[int, str, str, BaseException | None]:
    got = CliRunner().invoke(app, [command, str(path), *COMMANDS[command]], env={"COLUMNS": "100"})
    exc = got.exception if not isinstance(got.exception, SystemExit) else None
    return got.exit_code, got.stdout, got.stderr, exc


def one_line(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("command", "name"),
    [(c, n) for n in BAD for c in COMMANDS if (c, n) not in CREATES | WAITS],
)
def test_bad_input_is_one_line_and_exit_2(command: str, name: str, files: dict[str, Path]):
    path = files[name]
    before = snapshot(path.parent)
    code, _out, err, exc = invoke(command, path)
    assert exc is None, f"{command} {name} raised {exc!r}"
    assert code == 2, (command, name, code, err)
    lines = one_line(err)
    assert len(lines) == 1 and BAD[name] in lines[0], lines
    assert "Traceback" not in err
    assert snapshot(path.parent) == before, "a byte changed, or a file appeared"
    if name == "missing.db":
        assert not path.exists()


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"run"}))
def test_a_schema_calling_an_unknown_function(command: str, files: dict[str, Path]) -> None:
    """The tools read what they can and never fail with a traceback; inspection changes
    nothing. (`run` is left out: it would run; its writes fail on the trigger and are
    counted as skipped, the scenario-15 path.)"""
    path = files["unknown-function.db"]
    before = snapshot(path.parent)
    code, _out, err, exc = invoke(command, path)
    assert exc is None, f"{command} raised {exc!r}"
    assert code in (0, 1, 2), (command, code, err)
    if code == 2:
        assert len(one_line(err)) == 1, err
    if command not in WRITERS:
        assert snapshot(path.parent) == before


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - WRITERS))
@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_paths_are_opened_correctly(command: str, name: str, files: dict[str, Path]):
    path = files[name]
    before = snapshot(path.parent)
    code, out, err, exc = invoke(command, path)
    assert exc is None, f"{command} {name!r} raised {exc!r}"
    assert code in (0, 1), (command, name, code, err)  # check / idle: 1 = ended run
    if command in ("runs", "events"):
        assert "w1" in out or "closed" in out, out
    assert snapshot(path.parent) == before
    assert not list(path.parent.glob("*-wal")) and not list(path.parent.glob("*-shm"))


def test_as_real_programs(files: dict[str, Path]) -> None:
    """The same promises through the installed `sqlmon` program (its own stderr and exit)."""
    sqlmon = str(Path(sys.executable).parent / "sqlmon")
    for name, command in (
        ("random.db", "status"),
        ("missing.db", "report"),
        ("corrupt.db", "runs"),
    ):
        path = files[name]
        before = snapshot(path.parent)
        got = subprocess.run(
            [sqlmon, command, str(path)], capture_output=True, text=True, timeout=60
        )
        assert got.returncode == 2
        assert len(one_line(got.stderr)) == 1 and BAD[name] in got.stderr
        assert snapshot(path.parent) == before
    odd = files["naïve-データ.db"]
    got = subprocess.run([sqlmon, "runs", str(odd)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and "closed" in got.stdout, got.stderr
