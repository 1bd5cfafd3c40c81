"""The CI tier of the process-fault scenarios, at small counts.

scripts/soak.py runs the same functions longer and larger. Each test's pass criterion is the
scenario's own: counts and cycles against the driver's ground truth, never a wall-clock bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import process_faults as pf
from .harness import Outcome

CI = {f.__name__: ci for f, ci, _soak in pf.SCENARIOS}

pytestmark = pytest.mark.slow


def held(out: Outcome) -> None:
    if out.skipped:
        pytest.skip(out.skipped)
    assert out.problems == [], f"{out.scenario}: {out.tried} {out.figures}"


@pytest.mark.parametrize(
    "scenario", [f for f, _ci, _soak in pf.SCENARIOS], ids=lambda f: f.__name__
)
def test_scenario(scenario, tmp_path: Path) -> None:
    held(scenario(tmp_path, **CI[scenario.__name__]))
