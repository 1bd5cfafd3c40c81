"""Fork safety: SQLite keeps its per-file lock bookkeeping per process, and fork copies it.

A connection opened in a child of a parent that held one to the same file believes it holds
locks the kernel never gave it (POSIX locks are not inherited), and the parent's last close
then takes the file as unused and resets or deletes its WAL under the child: a corrupt
database. So sqlmon closes its own long-lived connections (the heartbeats') before every fork
(heartbeat.py), reopening them on their next write, and a forked child notes here which files
it inherited open: opening one of those is refused, with the fix.
"""

from __future__ import annotations

import os

from .errors import DatabaseError

# (st_dev, st_ino) of every file this process inherited open through a fork.
_inherited: set[tuple[int, int]] = set()


def _after_fork_in_child() -> None:
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return  # not Linux: nothing to look at
    for fd in fds:
        try:
            st = os.fstat(int(fd))
        except (OSError, ValueError):
            continue
        _inherited.add((st.st_dev, st.st_ino))


os.register_at_fork(after_in_child=_after_fork_in_child)


def require_clean(path: str) -> None:
    """Refuse to open the SQLite database `path` when this process inherited it (or its -shm)
    open through a fork: the copied lock bookkeeping would corrupt it."""
    if not _inherited:
        return
    for name in (path, path + "-shm"):
        try:
            st = os.stat(name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in _inherited:
            raise UnsafeFork(
                f"{path}: this process was forked while its parent held the database open; "
                "SQLite's locks do not survive fork, so opening it here could corrupt it. "
                "Close every connection to it before forking, or start this process with "
                "the spawn or forkserver start method"
            )


class UnsafeFork(DatabaseError):
    """This process was forked while its parent held the database open."""
