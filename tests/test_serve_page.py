"""The live page in a real headless Chromium (Debian's), driven by Playwright, against a real
`sqlmon serve`, scheduler and workers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .serving import add_tasks, need, scheduler, serve, stop_process, worker

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>document.title='pwned'</script>"
PAGE_WAIT = 60_000  # ms: generous, for a loaded two-core machine


@pytest.fixture
def browser():
    chromium = need("chromium", "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # a dev dependency: fail loudly, never skip
        raise AssertionError("playwright is not installed: uv sync (dev group)") from exc
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_page_shows_a_killed_worker_hostile_text_and_greys_out(
    browser, db: str, tmp_path: Path
) -> None:
    add_tasks(db, [(HOSTILE, "gpu", "pending", time.time() - 10)])
    sched = scheduler(db, str(tmp_path))
    victim = worker(db, "gpu-1", "gpu", "OCR")
    hostile = worker(db, "gpu-2", "gpu", HOSTILE)
    scripted = worker(db, SCRIPT, "cpu", SCRIPT)
    srv = serve(db)
    dialogs: list[str] = []
    errors: list[str] = []
    try:
        # The CSP would also stop an injected handler, and Playwright's own waiting script:
        # bypassed here, so that escaping is proven without its help.
        page = browser.new_page(bypass_csp=True)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        response = page.goto(srv.base + "/")
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        row = page.locator('#workers tr[data-worker="gpu-1"]')
        row.and_(page.locator("tr.busy")).wait_for(timeout=PAGE_WAIT)
        page.wait_for_function(
            "document.querySelectorAll('#workers tbody tr').length === 3", timeout=PAGE_WAIT
        )
        assert "stale" not in (page.get_attribute("body", "class") or "")
        assert page.text_content("#freshness").startswith("live")

        # Hostile strings from the database are text, never markup.
        cells = page.locator("#workers td").all_text_contents()
        assert HOSTILE in cells and SCRIPT in cells
        assert page.locator("img").count() == 0
        assert page.locator("script").count() == 1  # the page's own app.js
        assert page.title() == "sqlmon"
        page.wait_for_function(
            "[...document.querySelectorAll('#pools td')].some(td => td.textContent === "
            + repr(HOSTILE).replace("'", '"')
            + ")",
            timeout=PAGE_WAIT,
        )

        # A SIGKILLed worker turns red, dead, with its evidence.
        victim.kill()
        row.and_(page.locator("tr.dead")).wait_for(timeout=PAGE_WAIT)
        assert row.locator("td.state").text_content() == "dead"
        assert row.locator("td.evidence").text_content().startswith("pid_gone")
        assert str(victim.proc.pid) in row.locator("td.evidence").text_content()
        colour = row.locator("td.state").evaluate("e => getComputedStyle(e).color")
        assert colour == "rgb(204, 0, 0)"
        # Dead first, whatever the names.
        assert page.locator("#workers tbody tr").first.get_attribute("data-worker") == "gpu-1"
        page.wait_for_function(
            "[...document.querySelectorAll('#events td')].some(td => td.textContent === 'dead')",
            timeout=PAGE_WAIT,
        )

        # serve goes away: the page greys out and says how old its numbers are.
        srv.stop()
        page.wait_for_function("document.body.classList.contains('stale')", timeout=PAGE_WAIT)
        assert page.text_content("#freshness").startswith("data as of ")
        assert dialogs == [] and errors == []
    finally:
        for w in (victim, hostile, scripted):
            w.end()
        stop_process(sched)
        srv.stop()


def test_page_greys_out_when_the_scheduler_stops(browser, db: str, tmp_path: Path) -> None:
    sched = scheduler(db, str(tmp_path))
    srv = serve(db)
    try:
        page = browser.new_page(bypass_csp=True)
        page.goto(srv.base + "/")
        page.wait_for_function(
            "document.getElementById('freshness').textContent.startsWith('live')",
            timeout=PAGE_WAIT,
        )
        stop_process(sched)  # serve still answers, but its data is no longer live
        page.wait_for_function("document.body.classList.contains('stale')", timeout=PAGE_WAIT)
        assert page.text_content("#freshness").startswith("data as of ")
    finally:
        stop_process(sched)
        srv.stop()
