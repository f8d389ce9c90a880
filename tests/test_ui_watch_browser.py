"""`/ui/watch` in a real headless Chromium (Debian's, driven by Playwright).

The page is served by the real UI routes on uvicorn from the hand-made watch document
(tests/fixtures/watch_document.json, hostile text included); the drift demo's test
(tests/test_demo_drift.py) checks the same page on a live watch end to end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servers import serve_app

from tests.ui_trial import page_context, trial_settings, ui_app

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
FIXTURE = Path(__file__).parent / "fixtures" / "watch_document.json"
TOKEN_ENV = "SHADOWTRIAL_WATCH_UI_TEST_TOKEN"
TOKEN = "watch-ui-token-8d1e"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@dataclass
class Source:
    """The watch document the page is given; a test may change it between refreshes."""

    doc: dict[str, Any] = field(default_factory=lambda: json.loads(FIXTURE.read_text()))

    async def __call__(self, window_s: float, reference: str) -> dict[str, Any]:
        return self.doc


@pytest.fixture(scope="module")
def source() -> Source:
    return Source()


@pytest.fixture(scope="module")
def site(source: Source, redis_url: str) -> Iterator[str]:
    os.environ[TOKEN_ENV] = TOKEN
    settings = trial_settings("twatchui", admin={"token_env": TOKEN_ENV})
    ctx = page_context(settings, redis_url, [])
    ctx.watch = source  # type: ignore[attr-defined]
    try:
        with serve_app(ui_app(ctx)) as base:
            yield base
    finally:
        os.environ.pop(TOKEN_ENV, None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@dataclass
class Page:
    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = Page(context.new_page())
    p.page.on("console", lambda m: p.errors.append(m.text) if m.type == "error" else None)
    p.page.on("pageerror", lambda exc: p.errors.append(f"uncaught: {exc}"))
    p.page.on("dialog", lambda d: (p.dialogs.append(d.message), d.dismiss()))
    yield p
    context.close()


def _open(p: Page, url: str) -> Any:
    response = p.page.goto(url, wait_until="load")
    assert response is not None and response.status == 200
    return p.page


def test_the_watch_page_draws_every_chart_without_errors(site: str, page: Page) -> None:
    tab = _open(page, f"{site}/ui/watch?window=1h&reference=profile")
    drawn = tab.evaluate(
        """() => [...document.querySelectorAll('figure svg, td.chart-cell svg')].map((svg) => {
            const box = svg.getBoundingClientRect();
            const marks = [...svg.querySelectorAll('rect, polyline, circle')]
                .filter((el) => { const b = el.getBBox(); return b.width > 0 || b.height > 0; });
            return {width: box.width, height: box.height, marks: marks.length};
        })"""
    )
    assert len(drawn) == 5  # the timeline and four features
    assert all(d["width"] > 100 and d["height"] > 30 for d in drawn), drawn
    assert drawn[0]["marks"] >= 3 and drawn[1]["marks"] >= 8  # timeline, religious' bars
    flagged = tab.locator("tr.flagged")
    assert flagged.count() == 2
    colour = flagged.first.locator("td").first.evaluate(
        "td => getComputedStyle(td).backgroundColor"
    )
    assert colour == "rgb(255, 235, 233)"
    assert tab.locator("#less-confident").is_visible()
    assert page.errors == [] and page.dialogs == []


def test_hostile_names_are_text_and_no_token_is_in_the_page(site: str, page: Page) -> None:
    tab = _open(page, f"{site}/ui/watch")
    cell = tab.locator("td.value b", has_text="<script>alert(1)</script>")
    assert cell.count() == 1
    assert tab.evaluate("document.querySelectorAll('script').length") == 1  # ui.js only
    assert tab.evaluate("document.querySelectorAll('img, b b').length") == 0
    assert "\\u202eevil\\x1b[31m" in tab.locator("table.watch-features").inner_text()
    tab.wait_for_timeout(300)  # an injected script would have run by now
    assert TOKEN not in tab.content()
    assert page.errors == [] and page.dialogs == []


def test_the_page_refreshes_itself(site: str, page: Page, source: Source) -> None:
    tab = _open(page, f"{site}/ui/watch")
    assert tab.locator(".card .big").first.inner_text() == "1,500"
    source.doc = {**source.doc, "requests": 2750}
    tab.wait_for_function(
        "() => document.querySelector('.card .big').innerText === '2,750'", timeout=15_000
    )
    assert tab.locator("#status").inner_text().startswith("updated")
    assert page.errors == []
