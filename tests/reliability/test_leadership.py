"""The CI tier of the leadership scenarios; scripts/soak.py runs them longer."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import leadership
from .test_process_faults import held

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "scenario", [f for f, _ci, _soak in leadership.SCENARIOS], ids=lambda f: f.__name__
)
def test_scenario(scenario, tmp_path: Path) -> None:
    ci = {f.__name__: c for f, c, _ in leadership.SCENARIOS}[scenario.__name__]
    held(scenario(tmp_path, **ci))
