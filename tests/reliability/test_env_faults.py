"""The environment-fault half of the reliability suite: long readers, contention,
wall-clock jumps, a full disk, injected I/O errors, permissions and the environment guards.
The scenarios themselves live in env_scenarios.py, so that the soak can run them longer; here
they run at CI scale."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from sqlmon import DatabaseError, Heartbeat, Scheduler, guards, init_db

from . import env_scenarios

ROOT = os.geteuid() == 0
OTHER_UID, DB_UID = 65534, 1000  # "nobody" leaves the files; the pipeline runs as 1000


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- 18: permissions ----------------------------------------------------------------------------


def test_database_and_its_wal_and_shm_are_created_owner_only(tmp_path: Path) -> None:
    db = str(tmp_path / "new.db")
    init_db(db)
    s = Scheduler(db, interval=0.5, stale_after=2.0, warn_after=2.0)
    s.open()
    hb = Heartbeat(db, "w1", "cpu")
    hb.beat("OCR")
    try:
        assert os.path.exists(db + "-wal") and os.path.exists(db + "-shm")
        assert {p: mode(p) for p in (db, db + "-wal", db + "-shm")} == {
            db: 0o600,
            db + "-wal": 0o600,
            db + "-shm": 0o600,
        }
    finally:
        hb.close()
        s.close()


def test_the_file_mode_can_be_configured(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    init_db(db, file_mode=0o640)
    hb = Heartbeat(db, "w1", "cpu")
    hb.beat(None)
    try:
        assert (mode(db), mode(db + "-wal"), mode(db + "-shm")) == (0o640, 0o640, 0o640)
    finally:
        hb.close()


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    db = str(tmp_path / "old.db")
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    init_db(db)
    assert mode(db) == 0o644


def test_a_world_writable_directory_gets_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    db = str(shared / "x.db")
    with caplog.at_level(logging.WARNING, logger="sqlmon"):
        init_db(db)
        init_db(db)
        s = Scheduler(db, interval=0.5, stale_after=2.0, warn_after=2.0)
        s.open()
        s.close()
    lines = [r.getMessage() for r in caplog.records if "world-writable" in r.getMessage()]
    assert len(lines) == 1
    assert str(shared) in lines[0]


def test_a_private_directory_gets_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="sqlmon"):
        init_db(str(tmp_path / "x.db"))
    assert not [r for r in caplog.records if "world-writable" in r.getMessage()]


def _as_user(uid: int, fn: Callable[[], str]) -> str:
    """Run `fn` in a forked child under `uid` (the interpreter under /root is out of its
    reach, so no new program is started) and return what it returned, or the exception."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        text = ""
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            text = fn()
        except BaseException as exc:  # noqa: BLE001 (reported to the parent, which judges)
            text = f"raised {type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, text.encode())
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.mark.skipif(not ROOT, reason="needs root to own files as two other users")
def test_wal_and_shm_left_by_another_user_are_found_at_start_up() -> None:
    # Outside pytest's tmp_path, whose parent only root may enter.
    top = Path(tempfile.mkdtemp(prefix="sqlmon-perm-"))
    try:
        _wal_and_shm_left_by_another_user(top)
    finally:
        shutil.rmtree(top)


def _wal_and_shm_left_by_another_user(top: Path) -> None:
    os.chmod(top, 0o755)
    place = top / "pipeline"
    place.mkdir()
    db = str(place / "x.db")
    init_db(db, file_mode=0o644)
    for p in (place, db):
        os.chown(p, DB_UID, DB_UID)
    # Someone else's reader opened the database first: its -wal and -shm are left owned by it.
    for suffix in ("-wal", "-shm"):
        Path(db + suffix).touch()
        os.chown(db + suffix, OTHER_UID, OTHER_UID)
        os.chmod(db + suffix, 0o644)
    before = {p: Path(p).read_bytes() for p in (db, db + "-wal", db + "-shm")}

    # The hazard is real: without the guard, every write of the pipeline's user fails.
    def raw_write() -> str:
        c = sqlite3.connect(db, isolation_level=None)
        try:
            c.execute("UPDATE scheduler_state SET cycle = cycle")
            return "wrote"
        except sqlite3.Error as exc:
            return f"failed: {exc}"
        finally:
            c.close()

    assert _as_user(DB_UID, raw_write) == "failed: attempt to write a readonly database"

    def build(make: Callable[[], object]) -> Callable[[], str]:
        def run() -> str:
            try:
                make()
            except DatabaseError as exc:
                return str(exc)
            return "built"

        return run

    fix = f"sudo chown {_name(DB_UID)} {db}-wal {db}-shm"
    for make in (
        lambda: Heartbeat(db, "w1", "cpu"),
        lambda: Scheduler(db, interval=0.5, stale_after=2.0, warn_after=2.0),
        lambda: init_db(db),
    ):
        said = _as_user(DB_UID, build(make))
        assert said.endswith(fix), said
        assert f"belong to {_name(OTHER_UID)} and cannot be written by {_name(DB_UID)}" in said
    assert before == {p: Path(p).read_bytes() for p in before}


def _name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# -- 19: environment guards ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "error", "warning"),
    [
        ((3, 24, 0), True, False),
        ((3, 25, 0), False, True),
        ((3, 40, 1), False, True),
        ((3, 44, 5), False, True),
        ((3, 44, 6), False, False),
        ((3, 45, 0), False, True),
        ((3, 50, 6), False, True),
        ((3, 50, 7), False, False),
        ((3, 51, 2), False, True),
        ((3, 51, 3), False, False),
        ((3, 52, 0), False, False),
    ],
)
def test_sqlite_versions_are_judged(version: tuple[int, int, int], error: bool, warning: bool):
    err, warn = guards.sqlite_problem(version)
    assert (err is not None, warn is not None) == (error, warning)


@pytest.mark.parametrize(
    ("version", "bug"),
    [
        ((3, 40, 1), True),
        ((3, 44, 5), True),
        ((3, 44, 6), False),
        ((3, 45, 0), True),
        ((3, 50, 6), True),
        ((3, 50, 7), False),
        ((3, 51, 2), True),
        ((3, 51, 3), False),
        ((3, 52, 0), False),
    ],
)
def test_the_wal_reset_bug_is_known_by_version(version: tuple[int, int, int], bug: bool):
    assert guards.has_wal_reset_bug(version) == bug


def test_below_the_minimum_is_a_clear_error() -> None:
    err, _ = guards.sqlite_problem((3, 22, 0))
    assert err == (
        "SQLite 3.22.0 is too old: sqlmon needs 3.25.0 or newer (Python's sqlite3 module is "
        "linked against it; upgrade the system's libsqlite3)"
    )


def test_the_version_warning_shows_once_per_process_and_breaks_nothing(tmp_path: Path) -> None:
    """The WAL-reset notice is said where it matters, once per process: when init_db creates a
    database, or when a scheduler starts; never by workers, idle checks or inspection commands.
    On this machine's SQLite everything sqlmon does works meanwhile."""
    db = str(tmp_path / "x.db")
    code = f"""
        import logging, sqlite3, sys
        from sqlmon import Heartbeat, Scheduler, init_db, is_idle
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        db = {db!r}
        if sys.argv[1] in ("create", "start"):
            if sys.argv[1] == "create":
                init_db(db)
            init_db(db)
            s = Scheduler(db, interval=0.2, stale_after=1.0, warn_after=1.0)
            s.open()
        hbs = [Heartbeat(db, f"w{{i}}", "cpu", min_interval=0.0) for i in range(3)]
        for n in range(5):
            for hb in hbs:
                hb.beat("OCR" if n % 2 else None)
            if sys.argv[1] != "work":
                s.step()
        print("idle", is_idle(db), "missed", sum(hb.missed for hb in hbs))
        for hb in hbs:
            hb.close()
        if sys.argv[1] != "work":
            s.close()
    """
    _, expected = guards.sqlite_problem(sqlite3.sqlite_version_info)
    told = {}
    for what in ("create", "start", "work"):
        got = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), what],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0, got.stderr
        assert "missed 0" in got.stdout
        assert "Traceback" not in got.stderr
        told[what] = [line for line in got.stderr.splitlines() if "WAL-reset bug" in line]
    for what in ("status", "check", "runs", "idle"):
        got = subprocess.run(
            [sys.executable, "-m", "sqlmon", what, db], capture_output=True, text=True, timeout=60
        )
        told[what] = [line for line in got.stderr.splitlines() if "WAL-reset bug" in line]
    once = 1 if expected else 0
    assert {k: len(v) for k, v in told.items()} == {
        "create": once,  # init_db creating it; the scheduler in the same process is not told
        "start": once,  # a scheduler starting on an existing database
        "work": 0,
        "status": 0,
        "check": 0,
        "runs": 0,
        "idle": 0,
    }
    if expected:
        assert "install a Python linked to SQLite >= 3.51.3 (or 3.50.7 / 3.44.6)" in expected
        assert told["create"] == [f"WARNING {expected}"]


MOUNTINFO = textwrap.dedent(
    r"""
    22 27 0:21 / /proc rw,relatime - proc proc rw
    27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
    30 27 0:40 / /mnt/share rw,relatime - nfs4 server:/export rw,vers=4.2
    31 27 0:41 / /home/me/remote rw,relatime - fuse.sshfs me@host:/ rw,user_id=0
    32 27 0:42 / /mnt/my\040disk rw,relatime - cifs //nas/disk rw
    33 30 8:2 / /mnt/share/local rw,relatime - ext4 /dev/sdb1 rw
    34 27 0:43 / /media/usb rw - fuseblk /dev/sdc1 rw
    35 27 0:44 / /run/shm rw - tmpfs tmpfs rw
    """
)


@pytest.mark.parametrize(
    ("path", "fstype", "refused"),
    [
        ("/home/me/pipeline", "ext4", False),
        ("/mnt/share/runs", "nfs4", True),
        ("/mnt/share/local/runs", "ext4", False),  # a local disk mounted inside the share
        ("/mnt/sharex", "ext4", False),  # a prefix of the name is not the mount
        ("/home/me/remote/x", "fuse.sshfs", True),
        ("/mnt/my disk/x", "cifs", True),
        ("/media/usb", "fuseblk", True),
        ("/run/shm/x", "tmpfs", False),
    ],
)
def test_the_filesystem_under_a_database_is_found(path: str, fstype: str, refused: bool) -> None:
    assert guards.filesystem_of(path, MOUNTINFO) == fstype
    assert guards.unsafe_filesystem(fstype) == refused


def test_a_network_filesystem_is_refused_with_a_clear_message() -> None:
    with pytest.raises(DatabaseError) as exc:
        guards.require_local_filesystem("/mnt/share/runs/x.db", MOUNTINFO)
    assert str(exc.value) == (
        "/mnt/share/runs/x.db: on a nfs4 filesystem, where SQLite's WAL mode does not work "
        "(its shared-memory index needs a local filesystem); put the database on a local disk"
    )


def test_this_machines_filesystem_is_accepted(tmp_path: Path) -> None:
    guards.require_local_filesystem(str(tmp_path / "x.db"))  # the real /proc/self/mountinfo


def test_start_up_fails_loudly_when_wal_cannot_engage(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    os.mkdir(db + "-wal")  # SQLite cannot create its WAL file here
    with pytest.raises(DatabaseError, match="WAL journal mode did not engage"):
        init_db(db)


# -- scenarios run through env_scenarios, at CI scale ---------------------------------------------


def held(outcome) -> None:  # type: ignore[no-untyped-def]
    print(outcome.scenario, outcome.tried, outcome.figures)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.held, outcome.problems


CI = {f.__name__: ci for f, ci, _soak in env_scenarios.SCENARIOS}


@pytest.mark.slow
@pytest.mark.parametrize(
    "scenario", [f for f, _ci, _soak in env_scenarios.SCENARIOS], ids=lambda f: f.__name__
)
def test_scenario(scenario, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    held(scenario(tmp_path, **CI[scenario.__name__]))


def test_sixteen_workers_opening_at_once_never_raise(tmp_path: Path) -> None:
    """Found by the contention scenario at soak scale: a new connection's PRAGMAs met a busy
    WAL index and the driver's error escaped the Heartbeat, raising into a worker's loop. It
    later failed about once in ten runs for another reason, held deterministically by the next
    test."""
    failed = 0
    for rnd in range(5):
        db = str(tmp_path / f"{rnd}.db")
        init_db(db)
        children = []
        for i in range(16):
            pid = os.fork()
            if pid == 0:  # the child: never returns into pytest
                code = 0
                try:
                    hb = Heartbeat(db, f"w{i}", "cpu", min_interval=0.0)
                    for n in range(20):
                        hb.beat("OCR" if n % 2 else None)
                    hb.close()
                except BaseException:  # noqa: BLE001 (the exit code tells the parent)
                    (tmp_path / f"{rnd}-{i}.err").write_text(traceback.format_exc())
                    code = 1
                finally:
                    os._exit(code)
            children.append(pid)
        failed += sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) != 0 for p in children)
    raised = [f.read_text().strip().splitlines()[-1] for f in sorted(tmp_path.glob("*.err"))]
    assert failed == 0, f"{failed} of 80 workers raised: {raised}"


def test_sidecars_removed_while_checked_are_not_taken_for_another_users(
    tmp_path: Path, monkeypatch
) -> None:
    """Behind the storm above failing once in about ten runs: the last connection to close
    deletes -wal and -shm, and one deleted between the guard's stat and its access() check
    read as "cannot be written" (access() says no for a missing file), so a Heartbeat refused
    to build, telling root that root's own file belonged to root. Reproduced 4,366-7,659 times
    in 5 s by a process creating and deleting the files beside the check; 0 with the fix."""
    db = str(tmp_path / "x.db")
    init_db(db)
    for suffix in ("-wal", "-shm"):
        Path(db + suffix).touch()
    real_access = os.access

    def removed_meanwhile(path, mode, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith(("-wal", "-shm")):
            Path(path).unlink(missing_ok=True)  # the last connection closed just now
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", removed_meanwhile)
    assert guards.sidecar_problem(db) is None
    Heartbeat(db, "w", "cpu").close()
