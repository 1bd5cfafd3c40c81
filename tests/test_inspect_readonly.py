"""The read-only promise from the outside: a mode=ro connection that cannot write, and the
commands on a copy in a folder without write permission, run as a user who really lacks it.

CI runs as root, for whom permission bits stop nothing; there the commands run as `nobody`
through setpriv. When that is impossible (no setpriv, or the checkout unreadable by nobody),
those tests skip and say why; the mode=ro test and the hashing in test_cli still hold.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sqlmon import db as dbmod
from tests.recorded import History, history_copy

NOBODY = 65534


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return history_copy(tmp_path_factory, "ro")


def test_the_inspection_engine_is_read_only(history: History):
    engine = dbmod.read_only_engine(history.path)
    try:
        assert str(engine.url.database).endswith("?mode=ro")  # no immutable=1: a live file
        with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly"):
            with dbmod.read(conn):
                conn.execute(sa.text("UPDATE runs SET host = 'x'"))
    finally:
        engine.dispose()


def _as_nobody() -> list[str]:
    """The command prefix that runs a process without write permission on our folders."""
    if os.geteuid() != 0:
        return []  # an ordinary user: permission bits already apply
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop write permission")
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import sqlmon.cli"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot import sqlmon from this checkout: {probe.stderr[-200:]}")
    return prefix


@pytest.fixture
def locked_folder() -> Iterator[Path]:
    """A folder under /tmp that its files are copied into, then made read-only (0555)."""
    holder = Path(tempfile.mkdtemp(prefix="sqlmon-ro-"))
    holder.chmod(0o755)
    folder = holder / "copy"
    folder.mkdir()
    yield folder
    folder.chmod(0o755)
    shutil.rmtree(holder)


def _run(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "sqlmon", *args],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "NO_COLOR": "1"},
        timeout=60,
    )


def _seal(folder: Path) -> dict[str, str]:
    for f in folder.iterdir():
        f.chmod(0o444)
    folder.chmod(0o555)
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()}


def test_commands_on_a_copy_in_a_folder_without_write_permission(
    history: History, locked_folder: Path
):
    prefix = _as_nobody()
    shutil.copy(history.path, locked_folder / "history.db")
    wal = Path(history.path + "-wal")  # checkpointed when the run closed (a reader may leave
    assert not wal.exists() or wal.stat().st_size == 0  # an empty one behind)
    old = sqlite3.connect(locked_folder / "history.db")
    with old:  # run 1 ended long ago: prune has something to delete, and must be refused
        old.execute("UPDATE runs SET ended_at = ended_at - 30 * 86400 WHERE run_id = 1")
    old.close()
    sealed = _seal(locked_folder)
    db = str(locked_folder / "history.db")
    # A few as real processes (each pays Python's start-up); test_cli runs them all in-process.
    for args in (["status"], ["report", "--run", "1"], ["timeline", "--run", "1"]):
        result = _run(prefix, args[0], db, *args[1:])
        assert result.returncode in (0, 1), (args, result.stderr)
        assert result.stderr == "", (args, result.stderr)
    denied = _run(prefix, "prune", db, "--older-than", "1s")
    assert denied.returncode == 2 and denied.stderr.startswith("sqlmon: ")
    assert "Traceback" not in denied.stderr
    # Nothing created beside it, nothing changed in it.
    assert {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in locked_folder.iterdir()
    } == sealed


def _copy_with_wal(source: str, folder: Path, with_shm: bool) -> None:
    """Copy a database while a writer holds changes in its -wal that are not checkpointed."""
    work = Path(tempfile.mkdtemp(prefix="sqlmon-wal-"))
    try:
        shutil.copy(source, work / "db")
        writer = sqlite3.connect(work / "db", isolation_level=None)
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE runs SET host = 'from-the-wal' WHERE run_id = 1")
        for suffix in ("", "-wal", "-shm") if with_shm else ("", "-wal"):
            shutil.copy(work / f"db{suffix}", folder / f"history.db{suffix}")
        writer.close()
    finally:
        shutil.rmtree(work)


def test_uncheckpointed_wal_it_cannot_read_says_how_to_fix(history: History, locked_folder: Path):
    prefix = _as_nobody()
    _copy_with_wal(history.path, locked_folder, with_shm=False)
    sealed = _seal(locked_folder)
    result = _run(prefix, "runs", str(locked_folder / "history.db"))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "not yet checkpointed" in result.stderr and "copy the database" in result.stderr
    assert "wal_checkpoint" in result.stderr
    assert {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in locked_folder.iterdir()
    } == sealed


def test_wal_with_its_shm_is_read_in_full(history: History, locked_folder: Path):
    prefix = _as_nobody()
    _copy_with_wal(history.path, locked_folder, with_shm=True)
    sealed = _seal(locked_folder)
    result = _run(prefix, "runs", str(locked_folder / "history.db"), "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert "from-the-wal" in result.stdout  # the -wal content, not the stale main file
    assert {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in locked_folder.iterdir()
    } == sealed
