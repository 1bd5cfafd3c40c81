"""A run made by a real Scheduler, stepped one cycle at a time, with real Heartbeats: the
database the inspection tests read (test_inspect_history, test_inspect_readonly, test_cli,
test_report_run).

The scheduler's clock runs a little ahead of the real one, and it keeps every event inside its
cycle window, so each event's time is exactly the previous cycle's: the history is known to
the hundredth of a second.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from sqlmon import Heartbeat, Scheduler, heartbeat, init_db
from tests.conftest import execute

WEIRD = "cpu-\x1b[31mX"  # a worker id with a terminal escape in it


@dataclass(frozen=True)
class History:
    path: str
    t0: float  # the scheduler's clock at run 1's start


def build_history(path: str) -> History:
    """Run 1 (20 cycles, ended): gpu-1 busy in OCR for 3 s, gpu-2 stale 3 s then recovered,
    cpu-2 dead from its first sight, cpu-1 busy in SUMMARY, everyone exits at the end.
    Run 2: started and never ended, as a SIGKILL leaves it."""
    init_db(path)
    # cpu-2 beats from its own process and exits without closing: the scheduler finds it dead.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sqlmon import Heartbeat; "
            "Heartbeat(sys.argv[1], 'cpu-2', 'cpu').beat('SUMMARY')",
            path,
        ],
        check=True,
    )
    t0 = time.time() + 2.0
    execute(
        path,
        "INSERT INTO tasks (category, pool, status, created_at) VALUES (?, ?, ?, ?)",
        [("OCR", "gpu", "pending", t0)] * 3 + [("SUMMARY", "cpu", "pending", t0)],
    )
    sched = Scheduler(
        path, interval=1.0, stale_after=10.0, warn_after=10.0, idle_confirm=2, hud_every=1e9
    )
    sched.open(now=t0)
    mono = 1000.0
    hbs = {
        w: Heartbeat(path, w, w[:3], min_interval=0.0) for w in ("gpu-1", "gpu-2", "cpu-1", WEIRD)
    }
    # The workers' stretch clock follows the scheduler's: stretch k begins at exactly t0 + k.
    clock = [mono]
    saved, heartbeat._monotonic = heartbeat._monotonic, lambda: clock[0]
    for hb in hbs.values():
        hb._wall0, hb._mono0 = t0, mono
    try:
        _steps(path, sched, hbs, t0, mono, clock)
    finally:
        heartbeat._monotonic = saved
    sched.close("terminate", now=t0 + 20.5)
    second = Scheduler(path, interval=1.0, stale_after=10.0, warn_after=10.0, hud_every=1e9)
    second.open(now=t0 + 30)
    second.step(now=t0 + 31, mono=mono + 31)
    second.step(now=t0 + 32, mono=mono + 32)
    second.close("terminate", now=t0 + 32.5)
    execute(path, "UPDATE runs SET ended_at = NULL, end_reason = NULL WHERE run_id = 2")
    # As a SIGKILL leaves it: run 2's scheduler process is gone (this one stepped it by hand,
    # and would read alive for a few seconds once the real clock caught up with its own).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    execute(path, "UPDATE scheduler_state SET pid = ?, pid_start = NULL", (gone.pid,))
    execute(path, "UPDATE runs SET pid = ? WHERE run_id = 2", (gone.pid,))
    return History(path, t0)


def _steps(path: str, sched: Scheduler, hbs: dict, t0: float, mono: float, clock: list) -> None:
    category: dict[str, str | None] = dict.fromkeys(hbs)
    for k in range(1, 21):
        clock[0] = mono + k
        if k == 2:
            category["gpu-1"] = "OCR"
            execute(path, "UPDATE tasks SET status = 'running' WHERE id = 1")
        if k == 4:
            execute(
                path,
                "UPDATE tasks SET status = 'done', finished_at = ? WHERE category = 'OCR'",
                (t0 + 4,),
            )
        if k == 5:
            category["gpu-1"] = None
        if k == 6:
            category["cpu-1"] = "SUMMARY"
            execute(path, "UPDATE tasks SET status = 'running' WHERE category = 'SUMMARY'")
        if k == 8:
            category["cpu-1"] = None
            execute(
                path,
                "UPDATE tasks SET status = 'done', finished_at = ? WHERE category = 'SUMMARY'",
                (t0 + 8,),
            )
        if k == 20:
            for hb in hbs.values():
                hb.close()
        elif k >= 2:
            for worker, hb in hbs.items():
                if worker != "gpu-2" or k <= 3 or k >= 16:  # gpu-2 hangs from 4 to 15
                    hb.beat(category[worker])
        sched.step(now=t0 + k, mono=mono + k)


_BUILT: list[History] = []


def history_copy(factory: pytest.TempPathFactory, name: str) -> History:
    """A fresh copy of the history, built once per session: each test module gets its own."""
    if not _BUILT:
        _BUILT.append(build_history(str(factory.mktemp("history-master") / "history.db")))
    master = _BUILT[0]
    path = factory.mktemp(name) / "history.db"
    shutil.copy(master.path, path)
    return History(str(path), master.t0)
