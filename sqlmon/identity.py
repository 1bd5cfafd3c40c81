"""Process identity: a pid plus its start time, so that a reused pid cannot hide a death, and the
host's boot id, so that a reboot cannot either."""

from __future__ import annotations

import os
import sys

from .states import Evidence

_LINUX = sys.platform.startswith("linux")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_boot_time: float | None = None
_boot_id: str | None = None


def boot_time() -> float | None:
    """When this host booted (unix s), or None where /proc/stat is missing."""
    global _boot_time
    if _boot_time is None:
        try:
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        _boot_time = float(line.split()[1])
                        break
        except OSError:
            return None
    return _boot_time


def boot_id() -> str | None:
    """This host's boot id: a new one after every reboot (None where the kernel has none)."""
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot_id = f.read().strip() or None
        except OSError:
            return None
    return _boot_id


def _stat(pid: int) -> tuple[bytes, float] | None:
    """(state letter, start time) of `pid` from /proc, or None when it cannot be read."""
    # os-level calls, not open(): the scheduler reads this for every still worker each cycle,
    # and Python's buffered file objects cost it more than the three system calls.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    boot = boot_time()
    if boot is None or not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0], round(boot + int(fields[19]) / _CLK_TCK, 2)


def start_time(pid: int) -> float | None:
    """Unix time (s, 0.01 resolution) at which `pid` started, or None where /proc is missing."""
    if not _LINUX:
        return None
    stat = _stat(pid)
    return None if stat is None else stat[1]


def is_alive(pid: int, started: float | None) -> bool:
    """True while `pid` exists and, when its start time is known, is still the same process."""
    return death(pid, started) is None


def death(pid: int, started: float | None) -> Evidence | None:
    """Why the process `pid` (started at `started`) is no more, or None while it lives."""
    if _LINUX:
        stat = _stat(pid)
        if stat is None:
            return Evidence.PID_GONE
        state, now_started = stat
        # A zombie keeps its pid and start time until reaped, yet no longer works.
        if state in (b"Z", b"X"):
            return Evidence.PID_GONE
        if started is not None and abs(now_started - started) >= 0.05:
            return Evidence.PID_REUSED
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Evidence.PID_GONE
    except PermissionError:
        pass  # it exists, owned by someone else
    return None
