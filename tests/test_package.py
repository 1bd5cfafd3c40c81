"""The package as a user installs it: a wheel that carries its migrations and its command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on the PATH")
def test_installed_wheel_runs_help_and_creates_a_database(tmp_path: Path) -> None:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)

    def run(*args: str | Path) -> str:
        out = subprocess.run(
            [str(a) for a in args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    run("uv", "build", "--wheel", "-o", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("sqlmon-*.whl")
    run("uv", "venv", "-q", tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    run("uv", "pip", "install", "-q", "--python", python, wheel)
    # Run from tmp_path, far from the checkout: only the installed copy can answer.
    assert "Usage" in run(tmp_path / "venv" / "bin" / "sqlmon", "--help")
    run(tmp_path / "venv" / "bin" / "sqlmon", "init", tmp_path / "fresh.db")
    where = run(python, "-c", "import sqlmon.migrate as m; print(m.migrations_dir())")
    assert where.strip().startswith(str(tmp_path / "venv"))
    assert (tmp_path / "fresh.db").exists()
