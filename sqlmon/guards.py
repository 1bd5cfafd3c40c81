"""Guards on the environment, checked when a database is opened for writing: the linked SQLite
library, the filesystem under the database, and the permissions of its files.

Each check is a pure function of what it is given (a version tuple, the text of
/proc/self/mountinfo, a stat result), so that tests can feed it any environment; the
`require_*` / `preflight` wrappers read the real ones. Only db.py calls them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

from .errors import DatabaseError

log = logging.getLogger(__name__)

# Window functions (the worker_intervals view) arrived in 3.25.0; UPSERT (the heartbeat) in 3.24.
MIN_SQLITE = (3, 25, 0)
# SQLite's WAL-reset bug can corrupt a WAL database when a checkpoint races a writer that resets
# the WAL. Fixed in 3.51.3, and in the 3.44.6 and 3.50.7 backports.
WAL_RESET_FIXED = ((3, 44, 6), (3, 50, 7), (3, 51, 3))

# Filesystems where WAL's shared-memory index cannot work across processes (or across hosts):
# SQLite's own documentation says WAL does not work over a network filesystem.
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "lustre",
     "9p", "gpfs", "beegfs", "davfs", "sshfs"}
)  # fmt: skip

# A -wal / -shm file found unwritable is looked at this many times, this far apart (s), before
# it is reported: SQLite removes and recreates both while connections come and go.
_SIDECAR_LOOKS = 3
_SIDECAR_PAUSE = 0.005

_version_checked = False
_version_told = False
_warned_dirs: set[str] = set()


def has_wal_reset_bug(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> bool:
    """Whether this SQLite has the WAL-reset bug (the scheduler then checkpoints with care)."""
    fixed = any(version >= f and version[:2] == f[:2] for f in WAL_RESET_FIXED)
    return not fixed and version < WAL_RESET_FIXED[-1]


def sqlite_problem(version: tuple[int, int, int]) -> tuple[str | None, str | None]:
    """(error, warning) for an SQLite library version: an error below what sqlmon needs, a
    warning for a version with the WAL-reset corruption bug."""
    shown = ".".join(map(str, version))
    if version < MIN_SQLITE:
        need = ".".join(map(str, MIN_SQLITE))
        return (
            f"SQLite {shown} is too old: sqlmon needs {need} or newer "
            "(Python's sqlite3 module is linked against it; upgrade the system's libsqlite3)",
            None,
        )
    if has_wal_reset_bug(version):
        return None, (
            f"SQLite {shown}, which this Python is linked to, has the WAL-reset bug that can "
            "corrupt a WAL database when a checkpoint races a writer; sqlmon's scheduler avoids "
            "the checkpoint pattern that triggers it, but other connections to the database may "
            "not: install a Python linked to SQLite >= 3.51.3 (or 3.50.7 / 3.44.6)"
        )
    return None, None


def require_sqlite() -> None:
    """Raise below the SQLite version sqlmon needs (checked once per process)."""
    global _version_checked
    if _version_checked:
        return
    error, _ = sqlite_problem(sqlite3.sqlite_version_info)
    if error:
        raise DatabaseError(error)
    _version_checked = True


def tell_sqlite_version() -> None:
    """Log the WAL-reset notice, at most once per process: called where it matters (init_db
    creating a database, a scheduler starting), never by workers or inspection commands."""
    global _version_told
    if _version_told:
        return
    _version_told = True
    _, warning = sqlite_problem(sqlite3.sqlite_version_info)
    if warning:
        log.warning("%s", warning)


def filesystem_of(path: str, mountinfo: str) -> str | None:
    """The filesystem type of the mount holding `path` (absolute), from mountinfo's text."""
    best, best_type = "", None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = _unescape(fields[4])
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type


def unsafe_filesystem(fstype: str | None) -> bool:
    if fstype is None:
        return False
    return fstype in NETWORK_FS or fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk"))


def require_local_filesystem(path: str, mountinfo: str | None = None) -> None:
    """Refuse a database on a network or FUSE filesystem, where WAL cannot work."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return  # not Linux: nothing to read, nothing to refuse
    directory = os.path.dirname(os.path.realpath(path))
    fstype = filesystem_of(directory, mountinfo)
    if unsafe_filesystem(fstype):
        raise DatabaseError(
            f"{path}: on a {fstype} filesystem, where SQLite's WAL mode does not work "
            "(its shared-memory index needs a local filesystem); put the database on a local disk"
        )


def sidecar_problem(path: str) -> str | None:
    """Why this process cannot write the database's -wal / -shm files, with the fix, or None.

    They are left by the first process that opened the database: another user's reader leaves
    them owned by that user, and then every write of ours fails ("readonly database").

    While the database is in use SQLite creates and deletes both files (the last connection to
    close removes them), and access() says no for a file that is not there: a file found
    unwritable counts only if it is still there, the same file, after the access check, and
    only if it is found so on every one of a few looks, so that one that was being removed or
    replaced meanwhile is not taken for another user's.
    """
    for look in range(_SIDECAR_LOOKS):
        if look:
            time.sleep(_SIDECAR_PAUSE)
        blocked = [b for b in (_unwritable(path + s) for s in ("-wal", "-shm")) if b is not None]
        if not blocked:
            return None
    names = " ".join(_quote(side) for side, _ in blocked)
    owners = ", ".join(sorted({_user(uid) for _, uid in blocked}))
    me = _user(os.geteuid())
    return (
        f"{names} belong{'s' * (len(blocked) == 1)} to {owners} and cannot be written by {me}, "
        f"so every write would fail; stop that user's process, then run: "
        f"sudo chown {me} {names}"
    )


def _unwritable(side: str) -> tuple[str, int] | None:
    """(side, its owner's uid) when the file is there and this process cannot write it."""
    try:
        before = os.stat(side)
    except OSError:
        return None  # not there: SQLite creates it with the database's mode
    if os.access(side, os.W_OK):
        return None
    try:
        after = os.stat(side)
    except OSError:
        return None  # removed meanwhile (the last connection closed): access() saw no file
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        return None  # replaced meanwhile: a database in use, not files left behind
    return side, after.st_uid


def require_writable_sidecars(path: str) -> None:
    problem = sidecar_problem(path)
    if problem:
        raise DatabaseError(problem)


def warn_world_writable(path: str) -> None:
    """One warning per directory: anyone may plant or replace the -wal / -shm files there."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return
    if mode & stat.S_IWOTH and directory not in _warned_dirs:
        _warned_dirs.add(directory)
        log.warning(
            "%s is in a world-writable directory (%s): any user can create or replace its -wal "
            "and -shm files; keep the database in a directory only its users can write",
            path,
            directory,
        )


def create_owner_only(path: str, mode: int) -> None:
    """Create an empty database file with `mode` (SQLite then gives -wal / -shm the same)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return  # someone else created it first: its mode is theirs to choose
    try:
        os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
    finally:
        os.close(fd)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _quote(path: str) -> str:
    import shlex

    return shlex.quote(path)


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"
