"""The CI tier of the leadership scenarios, on SQLite and on PostgreSQL; scripts/soak.py runs
them longer."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import leadership
from .conftest import on_backends
from .harness import Backend
from .test_process_faults import held, run

CI = {f.__name__: ci for f, ci, _soak in leadership.SCENARIOS}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("scenario", "backend"), on_backends(leadership.SCENARIOS), indirect=["backend"]
)
def test_scenario(scenario, backend: Backend, tmp_path: Path) -> None:
    held(run(scenario, tmp_path, backend, CI[scenario.__name__]))
