"""sqlmon's benchmark: heartbeat cost against the SQLite limit and the alternatives, tails under
load, the scheduler cycle, worker start-up, the post-run commands and the live view, in one run;
then the same questions on PostgreSQL.

    uv run python scripts/bench.py            # the full run recorded in BENCHMARKS.md
    uv run python scripts/bench.py --quick    # a few minutes
    uv run python scripts/bench.py --json out.json --dir /some/disk
    uv run python scripts/bench.py --only postgresql_fleet --only postgresql_live_view

Databases go in a temporary directory under --dir (default: the system's temporary directory);
compare on a real disk, not tmpfs: every baseline runs in the same directory as sqlmon.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    cycle,
    heartbeat,
    live,
    pgfleet,
    pglive,
    postgres,
    postrun,
    record,
    startup,
    tails,
)
from benchlib.sizes import FULL, QUICK, TINY, Sizes  # noqa: E402
from benchlib.targets import judge, render  # noqa: E402


def machine(workdir: str) -> dict[str, Any]:
    import sqlalchemy

    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "platform": platform.platform(),
        "filesystem": _filesystem(workdir),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        return None


def _filesystem(path: str) -> str | None:
    """The type of the file system holding `path` (from /proc/mounts: longest matching mount)."""
    try:
        with open("/proc/mounts") as f:
            mounts = [ln.split()[1:3] for ln in f]
    except OSError:
        return None
    real = os.path.realpath(path)
    best = max(
        (m for m in mounts if real == m[0] or real.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return best[1] if best else None


SECTIONS = (
    "heartbeat_write",
    "coalesced_beat",
    "tails",
    "scheduler_cycle",
    "startup",
    "post_run",
    "record",
    "live_view",
    "postgresql",
    "postgresql_fleet",
    "postgresql_live_view",
)


def run(sizes: Sizes, workdir: str, only: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every section, or those named in `only`."""
    from sqlmon import init_db

    results: dict[str, Any] = {"sizes": sizes.name, "machine": machine(workdir)}
    started = time.perf_counter()

    def section(name: str, fn: Any, *args: Any) -> None:
        if only and name not in only:
            return
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = fn(*args)
        results[name]["section_s"] = time.perf_counter() - t0

    hb_db = os.path.join(workdir, "heartbeat.db")
    init_db(hb_db)
    section("heartbeat_write", heartbeat.measure_writes, hb_db, workdir, sizes)
    section("coalesced_beat", heartbeat.measure_coalesced, hb_db, sizes)
    section("tails", tails.measure, workdir, sizes)
    section("scheduler_cycle", cycle.measure, workdir, sizes)
    section("startup", startup.measure, hb_db, sizes)
    section("post_run", postrun.measure, workdir, sizes)
    section("record", record.measure, workdir, sizes)
    section("live_view", live.measure, workdir, sizes)
    section("postgresql", postgres.measure, workdir, sizes)
    section("postgresql_fleet", pgfleet.measure, workdir, sizes)
    section("postgresql_live_view", pglive.measure, workdir, sizes)
    results["total_s"] = time.perf_counter() - started
    results["targets"] = judge(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: shows it works (tests)")
    parser.add_argument("--json", default="bench-results.json", help="where to write the figures")
    parser.add_argument("--dir", default=None, help="parent directory of the temporary databases")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    workdir = tempfile.mkdtemp(prefix="sqlmon-bench-", dir=args.dir)
    try:
        results = run(sizes, workdir, frozenset(args.only or ()))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(render(results))
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
