"""The web page over HTTP: a real uvicorn server, real Redis, pairs applied by the real worker.

The trial (tests/ui_trial.py) is better overall but regresses on country=BR, and one
country value is an HTML script tag: the pages must show it as text.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
import redis
import redis.asyncio as aredis
from servers import free_port, serve_app

from analysis.ui.routes import CSP, sync_redis
from tests.ui_trial import (
    XSS,
    Trial,
    entry,
    page_context,
    seed_trial,
    trial_settings,
    ui_app,
)

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def module_prefix(redis_url: str) -> Iterator[str]:
    """One key prefix for the module's trial, deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def trial(redis_url: str, module_prefix: str) -> Trial:
    client = redis.Redis.from_url(redis_url)
    try:
        return seed_trial(client, module_prefix, n=1500, hostile=True)
    finally:
        client.close()


@pytest.fixture(scope="module")
def site(trial: Trial, redis_url: str) -> Iterator[str]:
    """The UI with v2 (the trial) and `idle` (registered, no pairs yet) in the registry."""
    ctx = page_context(trial.settings, redis_url, [entry("v2"), entry("idle")])
    with serve_app(ui_app(ctx)) as base:
        yield base


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def _svgs(html: str) -> list[ET.Element]:
    """Every inline chart, parsed as XML (a malformed one would raise)."""
    return [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", html, re.S)]


def _rows(html: str) -> list[str]:
    return re.findall(r"<tr[^>]*>.*?</tr>", html, re.S)


def test_overview_lists_candidates_with_pairs_agreement_and_verdict(site: str) -> None:
    res = _get(f"{site}/ui/")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    assert res.headers["content-security-policy"] == CSP
    v2 = next(r for r in _rows(res.text) if 'href="/ui/candidates/v2?window=1h"' in r)
    assert "1,500" in v2 and 'class="verdict fail"' in v2
    assert re.search(r'class="num bad">\s*1\s*<', v2)  # one flagged slice
    idle = next(r for r in _rows(res.text) if "/ui/candidates/idle" in r)
    assert 'class="verdict insufficient"' in idle


def test_candidate_page_shows_the_evidence(site: str) -> None:
    res = _get(f"{site}/ui/candidates/v2")
    assert res.status_code == 200
    html = res.text
    assert 'id="verdict">gate: fail<' in html
    assert "slice country=BR agrees" in html  # the gate's reason for failing
    charts = {c.get("aria-label") for c in _svgs(html)}
    assert {
        "agreement over time with 95% interval",
        "confidence histograms, primary and candidate",
        "flip matrix: primary class to candidate class",
        "latency quantiles, primary and candidate",
    } <= charts
    for label in ("95% CI", "anytime CS", "McNemar", "paired sign test"):
        assert label in html
    assert "may check it at any moment" in html  # the gate may be read at any time
    assert "Estimated accuracy change (before labels)" in html
    assert re.search(r"(not )?trusted: (calibration|miscalibrated)", html)


def test_flagged_slice_comes_first_in_red_with_interval_p_value_and_drilldown(site: str) -> None:
    html = _get(f"{site}/ui/candidates/v2").text
    slice_rows = [r for r in _rows(html) if "divergent pairs" in r and "<td>country</td>" in r]
    first = slice_rows[0]
    assert 'class="flagged"' in first and ">BR<" in first
    assert re.search(r"\[\d+\.\d%, \d+\.\d%\]", first)  # its 95% interval
    assert re.search(r">0\.0\d+<", first)  # its anytime-valid adjusted p-value (e-BH)
    assert "/v1/candidates/v2/pairs?divergent=true&amp;slice=country%3DBR" in first
    assert "/v1/candidates/v2/catalog?divergent=true&amp;slice=country%3DBR" in first  # export
    assert "/v1/candidates/v2/catalog?flips=true" in html
    assert not any('class="flagged"' in r for r in slice_rows[1:])


def test_values_from_traffic_are_text_never_markup(site: str) -> None:
    html = _get(f"{site}/ui/candidates/v2").text
    assert ESCAPED in html
    assert XSS not in html and "<script>" not in html
    assert "slice=country%3D%3Cscript%3Ealert%281%29%3C%2Fscript%3E" in html
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts == ['<script src="/ui/static/ui.js" defer>']


def test_a_candidate_without_pairs_renders_empty_charts(site: str) -> None:
    html = _get(f"{site}/ui/candidates/idle").text
    assert "gate: insufficient" in html
    assert "no pairs in this window yet" in html and "no latency measured" in html


def test_unknown_candidate_bad_window_and_static_files(site: str) -> None:
    missing = _get(f"{site}/ui/candidates/nope")
    assert missing.status_code == 404 and "is not known" in missing.text
    bad = _get(f"{site}/ui/candidates/v2?window=soon")
    assert bad.status_code == 400 and "not a duration" in bad.text
    assert _get(f"{site}/ui/candidates/v2?window=15m").status_code == 200
    js, css = _get(f"{site}/ui/static/ui.js"), _get(f"{site}/ui/static/ui.css")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert _get(f"{site}/ui").status_code in (200, 307)


def test_candidates_with_evidence_but_no_registry_entry_are_listed(
    trial: Trial, redis_url: str
) -> None:
    ctx = page_context(trial.settings, redis_url, [], with_url=False)  # derived sync client
    with serve_app(ui_app(ctx)) as base:
        overview = _get(f"{base}/ui/").text
        page = _get(f"{base}/ui/candidates/v2")
    assert "unregistered" in overview and "/ui/candidates/v2" in overview
    assert page.status_code == 200 and "gate: fail" in page.text


def test_redis_down_is_a_503_page(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    ctx = page_context(trial_settings("down"), dead, [entry("v2")])
    with serve_app(ui_app(ctx)) as base:
        for path in ("/ui/", "/ui/candidates/v2"):
            res = _get(base + path)
            assert res.status_code == 503 and "Evidence unavailable" in res.text


def test_sync_client_is_derived_from_the_async_one(redis_url: str) -> None:
    async_client = aredis.Redis.from_url(redis_url)  # never connects: only its settings are read
    ctx = SimpleNamespace(settings=trial_settings("derive"), redis=async_client)
    client = sync_redis(ctx)
    try:
        assert client.ping() is True
    finally:
        client.close()
