"""The CI tier of the process-fault scenarios, at small counts, on SQLite and (the scenarios
that take a backend) on PostgreSQL.

scripts/soak.py runs the same functions longer and larger. Each test's pass criterion is the
scenario's own: counts and cycles against the driver's ground truth, never a wall-clock bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import process_faults as pf
from .conftest import on_backends, takes_backend
from .harness import Backend, Outcome

CI = {f.__name__: ci for f, ci, _soak in pf.SCENARIOS}

pytestmark = pytest.mark.slow


def held(out: Outcome) -> None:
    if out.skipped:
        pytest.skip(out.skipped)
    assert out.problems == [], f"{out.scenario}: {out.tried} {out.figures}"


def run(scenario, tmp_path: Path, backend: Backend, ci: dict) -> Outcome:
    kwargs = {**ci, "backend": backend} if takes_backend(scenario) else ci
    return scenario(tmp_path, **kwargs)


@pytest.mark.parametrize(("scenario", "backend"), on_backends(pf.SCENARIOS), indirect=["backend"])
def test_scenario(scenario, backend: Backend, tmp_path: Path) -> None:
    out = run(scenario, tmp_path, backend, CI[scenario.__name__])
    held(out)
