"""Helpers for the `sqlmon serve` tests: real processes (scheduler, workers, the server) and a
real HTTP client. Waits are on conditions with generous deadlines, never on timings."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from . import procs

WAIT = 60.0  # s: generous, for a loaded two-core machine
SPAWN = multiprocessing.get_context("spawn")


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT, every: float = 0.1) -> Any:
    """Call `check` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def need(tool: str, package: str) -> str:
    """The path of `tool`, or a clear failure (never a silent skip)."""
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(
            f"{tool} is not installed: apt-get install -y {package} (.ci/run does this)"
        )
    return path


def sqlmon(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sqlmon", *args], text=True, **kwargs)


@dataclass
class Served:
    """A `sqlmon serve` subprocess on a free loopback port."""

    proc: subprocess.Popen[str]
    host: str
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str) -> Any:
        status, _h, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """/metrics parsed: (sample name, sorted labels) -> value."""
        status, _h, body = self.get("/metrics")
        assert status == 200, body
        return samples(body.decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def serve(db: str, *args: str) -> Served:
    """Start `sqlmon serve DB --port 0 ARGS` and wait until it listens."""
    proc = sqlmon("serve", db, "--port", "0", *args, stderr=subprocess.PIPE)
    lines: list[str] = []
    found = threading.Event()
    where: list[tuple[str, int]] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"serving on http://(.+):(\d+)/", line)
            if m and not found.is_set():
                where.append((m.group(1), int(m.group(2))))
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    if not found.wait(WAIT) or not where:
        proc.kill()
        raise AssertionError("sqlmon serve did not start:\n" + "".join(lines))
    host, port = where[0]
    return Served(proc, host, port, lines)


def scheduler(db: str, tmp: str, interval: float = 0.25) -> subprocess.Popen[str]:
    """`sqlmon run` in the background, fast cycles, a short stale bound."""
    log = open(os.path.join(tmp, "scheduler.log"), "a")  # noqa: SIM115 - the process owns it
    return sqlmon(
        "run",
        db,
        "--interval",
        str(interval),
        "--stale-after",
        "2",
        "--warn-after",
        "2",
        stdout=log,
        stderr=log,
    )


@dataclass
class Worker:
    proc: Any
    stop: Any
    worker_id: str
    killed: bool = False

    def end(self) -> None:
        if self.proc.exitcode is not None or self.killed:
            self.proc.join(30)
            return
        self.stop.set()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()

    def kill(self) -> None:
        # Never set this worker's stop event afterwards: the killed process may have died
        # waiting on it, and notifying a dead waiter blocks for ever.
        self.killed = True
        os.kill(self.proc.pid, signal.SIGKILL)  # left a zombie: the scheduler reads it as gone


def worker(db: str, worker_id: str, pool: str, category: str | None) -> Worker:
    stop = SPAWN.Event()
    p = SPAWN.Process(target=procs.beat_until, args=(db, worker_id, pool, category, stop, 0.1))
    p.start()
    return Worker(p, stop, worker_id)


def add_tasks(db: str, rows: list[tuple[str, str, str, float]]) -> None:
    """(category, pool, status, created_at) rows into the bundled tasks table."""
    import sqlite3

    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO tasks (category, pool, status, created_at) VALUES (?, ?, ?, ?)", rows
        )
    conn.close()


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
