"""`/ui/watch` over HTTP (a real uvicorn server) from a hand-made watch document.

tests/fixtures/watch_document.json follows the contract of `GET /v1/watch` and holds
hostile text where traffic can put it: a feature named `<script>`, category values with
HTML, a bidirectional override and an ESC sequence. The page must show them as text.
"""

from __future__ import annotations

import copy
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import serve_app

from analysis.ui import watch_charts, watch_present
from analysis.ui.routes import CSP
from tests.ui_trial import page_context, trial_settings, ui_app

FIXTURE = Path(__file__).parent / "fixtures" / "watch_document.json"


def fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


@dataclass
class WatchSource:
    """What the page asks for, and the document it answers with (set per test)."""

    doc: dict[str, Any] = field(default_factory=fixture)
    asked: list[tuple[float, str]] = field(default_factory=list)

    async def __call__(self, window_s: float, reference: str) -> dict[str, Any]:
        self.asked.append((window_s, reference))
        if reference == "bogus":
            raise ValueError("reference must be profile, pinned, day, week or FROM/TO")
        return self.doc


@pytest.fixture
def source() -> WatchSource:
    return WatchSource()


@pytest.fixture
def site(source: WatchSource, redis_url: str, prefix: str) -> Iterator[str]:
    ctx = page_context(trial_settings(prefix), redis_url, [])
    ctx.watch = source  # type: ignore[attr-defined]
    with serve_app(ui_app(ctx)) as base:
        yield base


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def _svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", html, re.S)]


def test_the_page_shows_each_feature_reference_against_now(site: str, source: WatchSource) -> None:
    res = _get(f"{site}/ui/watch?window=6h&reference=profile")
    assert res.status_code == 200
    assert res.headers["content-security-policy"] == CSP
    html = res.text
    assert source.asked == [(6 * 3600.0, "profile")]
    assert "2 features drifted" in html
    rows = re.findall(r'<tr class="flagged">.*?</tr>', html, re.S)
    assert [re.search(r"<b>(.*?)</b>", r).group(1) for r in rows] == ["religious", "age"]
    assert "27.0%" in rows[0]  # unseen rate of religious
    assert "18.0%" in rows[1]  # out-of-range rate of age
    assert "<code>none</code>" in rows[0]  # first seen
    assert 'id="less-confident"' in html  # 71% now against 78%
    assert 'id="accuracy-card"' in html and "[63.0%, 72.0%]" in html
    assert len(_svgs(html)) == 5  # four features and the timeline, all well-formed
    # the window links keep the reference, the reference links keep the window
    assert 'href="?window=1h&amp;reference=profile"' in html
    assert 'href="/ui/watch?window=6h&amp;reference=week"' in html


def test_hostile_text_from_traffic_is_shown_as_text(site: str) -> None:
    html = _get(f"{site}/ui/watch").text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<b>bold</b>" not in html
    assert "\u202e" not in html and "\x1b" not in html
    assert "\\u202eevil\\x1b[31m" in html


def test_without_reference_the_page_says_so(site: str, source: WatchSource) -> None:
    doc = source.doc
    problem = "no window pinned: PUT /v1/watch/reference"
    doc["reference"] = {"kind": "pinned", "from": None, "to": None, "requests": 0,
                        "available": False, "problem": problem}  # fmt: skip
    doc["features"] = doc["flagged"] = []
    res = _get(f"{site}/ui/watch?reference=pinned")
    assert res.status_code == 200
    assert "No reference to compare with: the pinned window is not available" in res.text
    assert "no window pinned: PUT /v1/watch/reference" in res.text


def test_zero_requests_render_a_message_not_an_error(site: str, source: WatchSource) -> None:
    source.doc = {
        "window": {"from": "2026-12-03T07:00:00Z", "to": "2026-12-03T08:00:00Z", "seconds": 3600},
        "reference": {"kind": "day", "available": True, "requests": 10},
        "requests": 0, "rows": 0, "features": [], "outputs": {}, "labels": {}, "timeline": [],
    }  # fmt: skip
    res = _get(f"{site}/ui/watch?reference=day")
    assert res.status_code == 200
    assert "No watched requests in this window" in res.text
    assert "no watched requests in this window yet" in res.text  # the empty timeline


def test_bad_window_and_reference_are_400(site: str) -> None:
    assert _get(f"{site}/ui/watch?window=forever").status_code == 400
    res = _get(f"{site}/ui/watch?reference=bogus")
    assert res.status_code == 400 and "reference must be" in res.text


def test_a_document_of_wrong_types_still_renders(site: str, source: WatchSource) -> None:
    doc = source.doc
    numeric = {"kind": "numeric", "edges": [0, 1, "two", None], "now": ["a"], "reference": None}
    categorical = {"kind": "categorical", "values": [{"value": None, "now": 1e309}, 7]}
    doc["features"] = [
        {"feature": "x", "kind": "numeric", "drift": "NaN", "p_adj": [1], "flagged": "yes",
         "chart": numeric},
        {"feature": "y", "chart": categorical},
        "not a row",
    ]  # fmt: skip
    doc["outputs"] = {"class_mix": {"a": "b"}, "mean_confidence": float("nan")}
    doc["labels"] = {"labelled": 5, "over_time": [None, {"start": 3}]}
    doc["timeline"] = [{"start": "not a time"}, {"start": "2026-12-03T07:00:00Z", "max_drift": -1}]
    res = _get(f"{site}/ui/watch")
    assert res.status_code == 200
    assert len(_svgs(res.text)) == 3


def test_the_overview_links_to_the_watch(site: str) -> None:
    html = _get(f"{site}/ui/?window=6h").text
    assert 'id="watch-link" href="/ui/watch?window=6h"' in html


def test_categories_never_in_the_reference_are_drawn_red() -> None:
    chart = fixture()["features"][0]["chart"]
    svg = watch_charts.feature_chart(chart, "religious")
    ET.fromstring(svg)
    assert svg.count(f'fill="{watch_charts.FAIL}"') == 2  # the bar of "none" and the legend text


def test_the_presenter_reads_missing_sections_as_empty() -> None:
    view = watch_present.watch_view({}, "", "1h", "day")
    assert view["message"].startswith("No watched requests")
    assert view["features"] == [] and view["outputs"]["mix"] == []
    hostile = copy.deepcopy(fixture())
    hostile["features"] = hostile["features"] * 100
    assert len(watch_present.watch_view(hostile, "", "1h", "day")["features"]) == 200


def test_the_page_on_a_live_watch_folded_by_the_real_worker(
    redis_client: Any, redis_url: str, prefix: str
) -> None:
    """No `watch` on the context: the page reads analysis.watch_live over real Redis."""
    from analysis.worker import Worker
    from common.keys import Keys
    from tests.test_watch_live import fold_all, send, traffic, watch_settings

    now = time.time()
    settings = watch_settings(prefix)
    keys = Keys(prefix)
    send(redis_client, keys, traffic(now - 86400 - 600, 400, shift=False, seed=1))
    send(redis_client, keys, traffic(now - 600, 400, shift=True, seed=2))
    assert fold_all(Worker(redis_client, settings, clock=lambda: now)) == 800
    ctx = page_context(settings, redis_url, [])
    with serve_app(ui_app(ctx)) as base:
        res = _get(f"{base}/ui/watch?window=15m&reference=day")
        missing = _get(f"{base}/ui/watch?window=15m&reference=pinned")
        bad = _get(f"{base}/ui/watch?reference=yesterday")
    assert res.status_code == 200, res.text[:500]
    rows = re.findall(r'<tr class="flagged">.*?</tr>', res.text, re.S)
    assert sorted(re.search(r"<b>(.*?)</b>", r).group(1) for r in rows) == ["age", "instances[1]"]
    assert "<code>marseille</code>" in res.text and 'id="less-confident"' in res.text
    assert len(_svgs(res.text)) >= 3
    assert missing.status_code == 200 and "No reference to compare with" in missing.text
    assert bad.status_code == 400 and "expected pinned, profile" in bad.text
