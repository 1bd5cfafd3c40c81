"""The docs cannot drift: every SQL recipe runs against a real demo database, and the user
docs name no issue or scenario numbers that users could not look up."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER_DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]


def recipes(path: Path) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", path.read_text(), re.S)


@pytest.mark.slow
def test_every_sql_recipe_runs_on_a_demo_database(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    out = subprocess.run(
        [sys.executable, "-m", "sqlmon", "demo", "--db", str(db), "--videos", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    found = [(p.name, q) for p in USER_DOCS for q in recipes(p)]
    assert len(found) >= 4
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for name, query in found:
            if query.lstrip().upper().startswith("CREATE"):
                continue  # an index for the reader's own table, not sqlmon's
            rows = conn.execute(query).fetchall()
            assert rows, f"{name}: a recipe found nothing on the demo database:\n{query}"
    finally:
        conn.close()


def test_user_docs_name_no_issue_or_scenario_numbers() -> None:
    for path in USER_DOCS:
        hits = re.findall(r"\b(?:issue|scenario) \d+", path.read_text(), re.I)
        assert hits == [], f"{path.name}: {hits}"


def test_the_readme_stays_a_first_screen() -> None:
    assert len((ROOT / "README.md").read_text().encode()) < 9000
