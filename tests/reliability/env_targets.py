"""Process targets for the environment-fault scenarios: plain functions, run as their own
programs (`python -m tests.reliability.env_targets NAME JSON`) so that a fault can be wrapped
around the whole process from outside: faketime (LD_PRELOAD), fiu-run, another user's uid.

Each program stops when its stop file appears (or on SIGTERM) and writes its own ground truth
as one JSON object to its `out` file: what it tried, what it saw, and any exception it raised.
Under libfaketime 0.9.10 with the monotonic clock left alone, time.sleep() fails with EINVAL,
so every wait here is an Event.wait.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import traceback
from typing import Any

_stop = threading.Event()


def _stopped(stop_file: str) -> bool:
    return _stop.is_set() or os.path.exists(stop_file)


def _pause(seconds: float) -> None:
    _stop.wait(seconds)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def worker(
    db: str,
    worker_id: str,
    stop_file: str,
    out: str,
    every: float = 0.05,
    category: str | None = "OCR",
    switch_every: int = 0,
    scaled: dict[str, Any] | None = None,
    trace: str | None = None,
) -> None:
    """Beat every `every` s until the stop file appears; record beats, misses and latencies
    (with their monotonic times). With `switch_every`, hold `category` and None by turns."""
    from sqlmon import config

    for name, value in (scaled or {}).items():
        setattr(config, name, value)
    from sqlmon import Heartbeat

    result: dict[str, Any] = {"worker": worker_id, "pid": os.getpid(), "raised": None}
    latencies: list[float] = []
    timed: list[tuple[float, float, int]] = []
    hb = None
    try:
        hb = Heartbeat(db, worker_id, "cpu", min_interval=0.0)
        beats = 0
        wall_first = time.time()
        while not _stopped(stop_file):
            holding = category
            if switch_every and (beats // switch_every) % 2:
                holding = None
            t0, missed = time.perf_counter(), hb.missed
            hb.beat(holding)
            latencies.append(time.perf_counter() - t0)
            timed.append((time.monotonic(), latencies[-1], hb.missed - missed))
            beats += 1
            _pause(every)
        hb.close()
        result.update(beats=beats, missed=hb.missed, wall_first=wall_first, wall_last=time.time())
    except BaseException:
        result["raised"] = traceback.format_exc()
        if hb is not None:
            result.update(missed=hb.missed)
    result.update(
        p50=_percentile(latencies, 0.5),
        p99=_percentile(latencies, 0.99),
        max=max(latencies, default=0.0),
        timed=timed,
    )
    _write(out, result)


def fleet(stop_file: str, out: str, workers: list[dict[str, Any]]) -> None:
    """Many workers forked from one process that has already imported sqlmon: 16 processes
    start in a moment on two cores. Each child is a `worker` with its own id and result file."""
    import sqlmon  # noqa: F401 (imported once, before the forks)

    children = []
    for i, kwargs in enumerate(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                worker(stop_file=stop_file, out=f"{out}.{i}", **kwargs)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    _write(out, {"raised": None if not any(codes) else f"worker exit codes {codes}"})


def scheduler(
    db: str,
    stop_file: str,
    out: str,
    settings: dict[str, Any],
    scaled: dict[str, Any],
    trace: str | None = None,
) -> None:
    """Run the scheduler in this process until the stop file appears; `scaled` overrides
    sqlmon.config defaults for a scaled-down CI run (a WAL threshold of megabytes, not 64)."""
    from sqlmon import Scheduler, config

    for name, value in scaled.items():
        setattr(config, name, value)
    if trace:
        trace_statements(trace)
    result: dict[str, Any] = {"pid": os.getpid(), "raised": None}
    terminate = threading.Event()
    threading.Thread(target=_watch_stop, args=(stop_file, terminate), daemon=True).start()
    try:
        s = Scheduler(db, terminate=terminate, **settings)
        s.run()
    except BaseException:
        result["raised"] = traceback.format_exc()
    _write(out, result)


def _watch_stop(stop_file: str, terminate: threading.Event) -> None:
    while not os.path.exists(stop_file) and not _stop.is_set():
        terminate.wait(0.05)
    terminate.set()


def reader(db: str, stop_file: str, out: str, hold: float) -> None:
    """A person's long read: one read transaction held for `hold` s (or until stopped)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    conn.execute("BEGIN")
    rows = conn.execute("SELECT count(*) FROM worker_status").fetchone()[0]
    _write(out + ".ready", {"rows": rows})
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline and not _stopped(stop_file):
        _pause(0.05)
    conn.execute("COMMIT")
    conn.close()
    _write(out, {"rows": rows, "held": hold})


def trace_statements(path: str) -> Any:
    """Log every statement SQLite runs on every connection this process opens, as
    "connection<TAB>statement" lines: the driver's own record, not sqlmon's idea of it."""
    import sqlalchemy as sa
    from sqlalchemy import event

    f = open(path, "a", buffering=1)  # noqa: SIM115 (held for the process)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        tag = f"{os.getpid()}:{id(dbapi_connection)}"
        dbapi_connection.set_trace_callback(
            lambda sql: f.write(f"{tag}\t{' '.join(sql.split())}\n")
        )

    event.listen(sa.engine.Engine, "connect", on_connect)
    return on_connect


def _write(path: str, obj: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _sleep_around_libfaketime() -> None:
    """libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC fails clock_nanosleep with an
    absolute deadline (EINVAL), which is how CPython's time.sleep waits: a fault of the tool,
    not of a jumped clock (a real jump never touches CLOCK_MONOTONIC). Under it, time.sleep
    waits on an Event instead (pthread_cond_timedwait, which libfaketime handles)."""
    if "faketime" not in os.environ.get("LD_PRELOAD", ""):
        return
    waiter = threading.Event()
    time.sleep = lambda seconds: (waiter.wait(seconds), None)[1]


def main(argv: list[str]) -> None:
    name, kwargs = argv[0], json.loads(argv[1])
    _sleep_around_libfaketime()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    signal.signal(signal.SIGTERM, lambda *_: _stop.set())
    {"worker": worker, "fleet": fleet, "scheduler": scheduler, "reader": reader}[name](**kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
