"""A real browser (Debian's headless Chromium, driven by Playwright) on a relay with auth on:
log in, see who is behind and why, the charts, browse a record, find the slow query shape and
its index hint, log out; no console error anywhere. The screenshots go to ``tmp_path`` and to
``test-artifacts/`` (ignored by git)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_helpers import token

from commander_os.relay import RelayProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ENV = "COMMANDER_OS_CHROMIUM"
LAUNCH_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str:
    found = (
        os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not found:
        print(
            "\n" + "#" * 78 + "\n## CHROMIUM NOT FOUND: the dashboard browser test is SKIPPED "
            "(apt-get install chromium; .ci/run does).\n" + "#" * 78
        )
        pytest.skip("no chromium executable (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium(), args=LAUNCH_FLAGS)
        yield chromium
        chromium.close()


class _Console:
    """Every console error, page error and failed request of a page."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", lambda req: self.problems.append(f"failed: {req.url}"))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def test_an_operator_finds_who_is_behind_and_the_slow_query(
    browser: Any, seeded_relay: RelayProcess, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console = _Console(page)
    url = seeded_relay.url

    page.goto(url + "/")
    assert page.url.endswith("/dashboard/login")  # signed out: the login form
    page.fill("#token", token("ops", admin=True))
    page.click("button[type=submit]")
    page.wait_for_selector("#agents")
    assert page.url == url + "/"
    assert "token" not in page.url

    # Who is behind and why.
    offline = page.locator('tr[data-agent="offline-agent"]')
    assert "health-behind" in (offline.get_attribute("class") or "")
    why = offline.inner_text()
    assert "3,000 changes queued" in why
    assert "never delivered" in why
    assert "2 dead letters" in why
    assert "connection refused" in why
    scout = page.locator('tr[data-agent="scout"]').inner_text()
    assert re.search(r"lag 9\d s", scout)
    assert "inc 2 · seq 2,400" in page.locator('tr[data-agent="planner"]').inner_text()
    heard = page.locator('tr[data-agent="planner"] time').first
    assert re.fullmatch(r"just now|\d+ s ago", heard.inner_text())  # an age, not a number
    assert (heard.get_attribute("title") or "").endswith("UTC")

    # The charts draw (uPlot canvases), refreshed by the page itself.
    page.wait_for_function("document.querySelectorAll('.chart canvas').length === 4")
    page.wait_for_function("document.getElementById('refreshed').textContent.startsWith('updated')")

    # The slow query shape and its index hint.
    shape = page.locator("#shapes tr.scans", has_text="where(value.status eq)")
    assert shape.count() == 1
    assert "commander-os relay index add value.status" in shape.inner_text()
    shape.locator("summary").click()
    assert "records_agent_table_rev" in shape.locator("pre").inner_text()
    assert page.locator("#slow tbody tr").count() >= 6
    _shot(page, tmp_path, "dashboard-overview")

    # Browse the records of the agent, page forward, open one.
    page.click('tr[data-agent="planner"] a')
    page.wait_for_selector("#records")
    first_page = page.locator("#records tbody tr").count()
    assert first_page == 25
    page.click("a[rel=next]")
    page.wait_for_selector("#records")
    assert "cursor=" in page.url
    page.select_option("select[name=table]", "kv")
    page.fill("input[name=field]", "value.status")
    page.fill("input[name=value]", "rare")
    page.click("form.filters button[type=submit]")
    page.wait_for_selector("#records")
    assert page.locator("#records tbody tr").count() == 4  # items 7, 607, 1207, 1807
    page.click("#records tbody tr >> nth=0 >> a")
    page.wait_for_selector(".record pre.json")
    assert '"status": "rare"' in page.locator(".record pre.json").inner_text()
    _shot(page, tmp_path, "dashboard-record")

    # The API page works from the relay alone.
    page.goto(url + "/docs")
    page.get_by_text("/relay/heartbeat", exact=True).wait_for()

    page.goto(url + "/")
    page.click("header button[type=submit]")  # log out
    page.wait_for_selector("#token")
    page.goto(url + "/")
    assert page.url.endswith("/dashboard/login")
    assert console.problems == []
    page.close()
