"""The soak tier of the fault-injection suite (RELIABILITY.md): the CI scenarios, longer and at
larger counts, then a table of what each tried and whether it held.

    uv run python scripts/soak.py --minutes 60          # every scenario at soak counts
    uv run python scripts/soak.py --minutes 5 --only kill_storm
    uv run python scripts/soak.py --ci                   # CI counts, with the table
    uv run python scripts/soak.py --backend postgresql   # on a throwaway PostgreSQL cluster

Scenario modules in tests/reliability/ list themselves in a SCENARIOS registry of
(function, CI counts, soak counts); each function takes a scratch folder and its counts and
returns an Outcome. The kill storm takes half the time budget: it stops at its deadline.
With --backend postgresql, the scenarios that take a backend run on databases of a throwaway
cluster (tests/pg.py; SQLMON_TEST_PG_URL names a server to use instead).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import os
import pkgutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import reliability  # noqa: E402
from tests.reliability.harness import SQLITE, Backend, Outcome, PostgreSQL, render  # noqa: E402


def registry() -> list[tuple[object, dict, dict]]:
    found = []
    for info in pkgutil.iter_modules(reliability.__path__):
        if info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"tests.reliability.{info.name}")
        found += getattr(module, "SCENARIOS", [])
    return found


@contextlib.contextmanager
def backend(name: str) -> Iterator[Backend]:
    if name == "sqlite":
        yield SQLITE
        return
    from tests import pg

    attach = os.environ.get("SQLMON_TEST_PG_URL")
    with contextlib.ExitStack() as stack:
        server = pg.attached(attach) if attach else stack.enter_context(pg.cluster())
        databases = PostgreSQL(pg.Databases(server))
        stack.callback(databases.drop)
        yield databases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument("--only", action="append", default=[], help="scenario function name")
    parser.add_argument("--ci", action="store_true", help="use the CI counts")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="where the databases live (postgresql: the scenarios that take a backend)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    chosen = [
        s
        for s in registry()
        if (not args.only or s[0].__name__ in args.only)
        and (args.backend == "sqlite" or "backend" in inspect.signature(s[0]).parameters)
    ]
    if not chosen:
        print(f"no scenario named {args.only}", file=sys.stderr)
        return 2
    started = time.monotonic()
    budget = args.minutes * 60
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="sqlmon-soak-") as tmp, backend(args.backend) as on:
        for n, (scenario, ci, soak) in enumerate(chosen):
            counts = dict(ci if args.ci else soak)
            if "backend" in inspect.signature(scenario).parameters:
                counts["backend"] = on
            if "deadline" in scenario.__code__.co_varnames and not args.ci:
                # The open-ended scenario (the kill storm) gets half of what is left.
                left = budget - (time.monotonic() - started)
                counts["deadline"] = time.monotonic() + max(30.0, left / 2)
            t0 = time.monotonic()
            shown = {k: v for k, v in counts.items() if k != "backend"}
            print(f"-- {scenario.__name__} {shown}", file=sys.stderr, flush=True)
            try:
                out = scenario(Path(tmp) / f"{n}-{scenario.__name__}", **counts)
            except Exception as exc:  # a harness crash is a result too: report it, go on
                out = Outcome(scenario.__name__, problems=[f"crashed: {exc!r}"])
            out.figures["seconds"] = round(time.monotonic() - t0, 1)
            outcomes.append(out)
    print(render(outcomes, time.monotonic() - started))
    return 0 if all(o.held for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
