"""Section 5: what a worker pays to start: import sqlmon and build a Heartbeat, against import
sqlalchemy alone, each in a fresh interpreter, alternated so that both see the same machine;
and what a person pays for a command: `sqlmon status`, `check`, `runs`, `history` and `--help`,
wall time, against `python -c "import sqlalchemy"` in the same rounds.
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .sizes import Sizes
from .stats import median

_PROBE = """
def _peak_rss_mb():
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and reports the parent's peak.
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))
    except OSError:
        return None
import json, sys, time
t0 = time.perf_counter()
import {module}
t1 = time.perf_counter()
extra = None
if {build}:
    hb = sqlmon.Heartbeat({db!r}, "startup", "cpu")
    hb.beat("OCR")
    extra = time.perf_counter() - t0
    hb.close()
print(json.dumps({{"import_s": t1 - t0, "with_heartbeat_s": extra,
    "rss_mb": _peak_rss_mb(),
    "typer": "typer" in sys.modules, "tabulate": "tabulate" in sys.modules}}))
"""


def _probe(module: str, db: str, build: bool) -> dict[str, Any]:
    code = _PROBE.format(module=module, db=db, build=build)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(db: str, sizes: Sizes) -> dict[str, Any]:
    # An installed sqlmon has its bytecode, as SQLAlchemy in the venv does; a checkout run with
    # PYTHONDONTWRITEBYTECODE (set on this machine) would recompile sqlmon at every import.
    import sqlmon

    compileall.compile_dir(str(Path(sqlmon.__file__).parent), quiet=1)
    runs: dict[str, list[dict[str, Any]]] = {"sqlalchemy": [], "sqlmon": []}
    for _ in range(sizes.startup_runs):
        runs["sqlalchemy"].append(_probe("sqlalchemy", db, False))
        runs["sqlmon"].append(_probe("sqlmon", db, True))
    sa_runs, sm_runs = runs["sqlalchemy"], runs["sqlmon"]
    return {
        "runs": sizes.startup_runs,
        "sqlalchemy_import_ms": median([r["import_s"] for r in sa_runs]) * 1e3,
        "sqlalchemy_rss_mb": median([r["rss_mb"] for r in sa_runs]),
        "sqlmon_import_ms": median([r["import_s"] for r in sm_runs]) * 1e3,
        "sqlmon_import_and_heartbeat_ms": median([r["with_heartbeat_s"] for r in sm_runs]) * 1e3,
        "sqlmon_rss_mb": median([r["rss_mb"] for r in sm_runs]),
        "typer_loaded": any(r["typer"] for r in sm_runs),
        "tabulate_loaded": any(r["tabulate"] for r in sm_runs),
        "commands": {
            "bytecode": commands(db, sizes.startup_runs, compiled=True),
            "source": commands(db, sizes.startup_runs, compiled=False),
        },
    }


COMMANDS = {
    "status": ["status", "{db}"],
    "check": ["check", "{db}"],
    "runs": ["runs", "{db}"],
    "history": ["history", "{db}"],
    "help": ["--help"],
}


def commands(db: str, runs: int, compiled: bool) -> dict[str, Any]:
    """Median wall time (ms) of each command, and its ratio to `import sqlalchemy` alone.

    compiled: every module's bytecode is there (an install with UV_COMPILE_BYTECODE=1, or one
    whose first run wrote it); else every import compiles its source, as on a machine with
    PYTHONDONTWRITEBYTECODE and an install without bytecode. Both through a private
    PYTHONPYCACHEPREFIX, so that the virtualenv is left as it is.
    """
    script = Path(sys.executable).with_name("sqlmon")
    sqlmon = [str(script)] if script.exists() else [sys.executable, "-m", "sqlmon"]
    argv = {"import sqlalchemy": [sys.executable, "-c", "import sqlalchemy"]}
    argv |= {k: sqlmon + [a.format(db=db) for a in v] for k, v in COMMANDS.items()}
    with tempfile.TemporaryDirectory(prefix="sqlmon-pycache-") as prefix:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = prefix
        if compiled:
            for args in argv.values():  # the first run of each writes the bytecode it needs
                subprocess.run(args, capture_output=True, env=env, check=False)
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        times: dict[str, list[float]] = {k: [] for k in argv}
        for _ in range(max(runs, 1)):
            for name, args in argv.items():
                t0 = time.perf_counter()
                subprocess.run(args, capture_output=True, env=env, check=False)
                times[name].append(time.perf_counter() - t0)
    base = median(times["import sqlalchemy"])
    return {
        "sqlalchemy_ms": base * 1e3,
        **{f"{k}_ms": median(v) * 1e3 for k, v in times.items() if k in COMMANDS},
        **{f"{k}_ratio": median(v) / base for k, v in times.items() if k in COMMANDS},
    }
