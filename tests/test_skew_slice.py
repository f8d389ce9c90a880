"""The built-in skew slice: a candidate's disagreement concentrating on inputs training
never saw is named in the report, on the page and in `shadowtrial report`.

A seeded simulation through the real worker and real Redis: a training profile built by
`analysis.profile` from a CSV (country FR/DE/US/JP, x in [0, 10]); live requests where
one in ten has a country training never had and one in twenty an x far outside the range.
In the regressing trial the candidate disagrees on 30% of the unseen-country requests and
3% elsewhere; in the control trial on 3% everywhere.
"""

from __future__ import annotations

import io
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from rich.console import Console

from analysis.profile import build_profile
from analysis.report import build_report
from analysis.skew import OUT_OF_RANGE, SKEW_SLICE, UNKNOWN, UNSEEN, WITHIN, SkewClassifier
from analysis.ui.present import skew_view
from analysis.watch_state import WatchState
from analysis.worker import Worker
from common.keys import Keys
from common.settings import Settings, settings_from_mapping
from shadowtrial.render import render_report
from tests import pairs_factory as pf

TRAINED = ("FR", "DE", "US", "JP")
NOW = 1_800_000_000.0


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    rng = random.Random(5)
    lines = ["country,x"] + [f"{rng.choice(TRAINED)},{rng.uniform(0, 10):.3f}" for _ in range(2000)]
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "profile.json"
    out.write_text(orjson.dumps(build_profile(csv).to_dict()).decode())
    return out


def settings_with(prefix: str, profile: Path | None) -> Settings:
    raw: dict[str, Any] = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "candidates": [{"name": "v2", "url": "http://127.0.0.1:9"}],
        "gate": {"min_pairs": 100},
    }
    if profile is not None:
        raw["watch"] = {"profile": str(profile)}
    return settings_from_mapping(raw, environ={})


def request(country: str, x: float) -> bytes:
    """One OIP v2 row, one tensor per field: features named `country` and `x`."""
    return orjson.dumps({"inputs": [
        {"name": "country", "shape": [1], "datatype": "BYTES", "data": [country]},
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [x]},
    ]})  # fmt: skip


def simulate(
    client: redis.Redis, settings: Settings, seed: int, unseen_disagree: float, now: float = NOW
) -> None:
    """3000 single-row pairs over the half hour before `now`, applied by the real worker."""
    rng = random.Random(seed)
    records = []
    for i in range(3000):
        draw = rng.random()
        country = "ZZ" if draw < 0.10 else rng.choice(TRAINED)
        x = rng.uniform(50, 60) if 0.10 <= draw < 0.15 else rng.uniform(0, 10)
        flip = rng.random() < (unseen_disagree if country == "ZZ" else 0.03)
        label = rng.randrange(3)
        other = (label + 1) % 3 if flip else label
        primary = [[0.8 if k == label else 0.1 for k in range(3)]]
        candidate = [[0.8 if k == other else 0.1 for k in range(3)]]
        rec = pf.record(
            f"r{seed}-{i}", primary, candidate, ts_ms=int((now - 1800 + i * 0.5) * 1000)
        )
        rec.request_body = request(country, x)
        records.append(rec)
    pf.write(client, Keys(settings.redis.prefix).pairs("v2"), records)
    assert pf.drain(Worker(client, settings)) == 3000


def report_of(client: redis.Redis, settings: Settings, now: float = NOW) -> dict[str, Any]:
    return build_report(client, Keys(settings.redis.prefix), settings, "v2", 3600, now=now)


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_disagreement_on_unseen_values_is_named(
    client: redis.Redis, prefix: str, profile_path: Path
) -> None:
    settings = settings_with(prefix, profile_path)
    simulate(client, settings, seed=1, unseen_disagree=0.30)
    report = report_of(client, settings)
    skew = report["skew"]
    assert skew["concentrates"] is True
    assert skew["concentrated_on"] == [UNSEEN]
    parts = {p["value"]: p for p in skew["parts"]}
    assert set(parts) == {UNSEEN, OUT_OF_RANGE, WITHIN}
    assert 250 <= parts[UNSEEN]["pairs"] <= 350 and 120 <= parts[OUT_OF_RANGE]["pairs"] <= 180
    assert parts[UNSEEN]["agreement"] < 0.8 and parts[WITHIN]["agreement"] > 0.95
    assert not parts[OUT_OF_RANGE]["flagged"]  # out of range, but no more disagreement there
    # the same slice machinery: it is one of the report's slices, and fails the gate's rule
    assert any(r["slice"] == SKEW_SLICE and r["flagged"] for r in report["slices"])
    slices_rule = next(r for r in report["gate"]["rules"] if r["rule"] == "slices")
    assert slices_rule["outcome"] == "fail"
    view = skew_view(report)
    assert view is not None and view["text"].startswith("Disagreement concentrates")
    out = io.StringIO()
    render_report(report, Console(file=out, width=200, color_system=None))
    assert "Against the training profile: Disagreement concentrates" in out.getvalue()


def test_uniform_disagreement_does_not_concentrate(
    client: redis.Redis, prefix: str, profile_path: Path
) -> None:
    settings = settings_with(prefix, profile_path)
    simulate(client, settings, seed=2, unseen_disagree=0.03)
    skew = report_of(client, settings)["skew"]
    assert skew["concentrates"] is False and skew["concentrated_on"] == []
    assert 350 <= skew["skewed_pairs"] <= 550
    assert skew_view({"skew": skew})["text"].startswith("Disagreement does not concentrate")


def test_without_a_profile_there_is_no_skew_section(client: redis.Redis, prefix: str) -> None:
    settings = settings_with(prefix, None)
    simulate(client, settings, seed=3, unseen_disagree=0.30)
    report = report_of(client, settings)
    assert report["skew"] is None
    assert not any(r["slice"] == SKEW_SLICE for r in report["slices"])


def test_hostile_values_are_judged_never_crash() -> None:
    profile = WatchState()
    for i in range(50):
        profile.add_row({"c": ["a", "b"][i % 2], "x": float(i), "flag": i % 2 == 0})
    capped = WatchState(max_categories=2)
    for v in ("a", "b", "c"):
        capped.add_row({"c": v})
    judge = SkewClassifier.from_profile(profile)
    assert judge.row_label({"c": "a", "x": 3.0}) == WITHIN
    assert judge.row_label({"c": "\x1b[2J", "x": 3.0}) == UNSEEN
    assert judge.row_label({"c": "a", "x": 10**400}) == OUT_OF_RANGE  # beyond a float
    assert judge.row_label({"c": "a", "x": float("nan")}) == WITHIN  # missing, not a range
    assert judge.row_label({"c": 7, "x": "text", "flag": True}) == WITHIN  # types: not judged
    assert judge.row_label({"flag": None, "other": "zz"}) == WITHIN  # unknown features
    assert SkewClassifier.from_profile(capped).row_label({"c": "never"}) == WITHIN
    assert judge.labels(None, 2) == [UNKNOWN, UNKNOWN]
    assert judge.labels({"instances": [{"c": "a"}, {"c": "zz"}]}, 2) == [WITHIN, UNSEEN]
    assert judge.labels({"instances": [{"c": "a"}, {"c": "zz"}]}, 3) == [UNSEEN] * 3
    assert judge.labels({"inputs": "garbage"}, 1) == [UNKNOWN]


def test_an_uploaded_profile_is_used_and_the_page_says_it(
    client: redis.Redis, prefix: str, profile_path: Path, redis_url: str
) -> None:
    """No `[watch] profile`: the profile uploaded with PUT /v1/watch/profile (its Redis
    key) is the one the workers slice by; the candidate's page shows the panel."""
    from servers import serve_app

    from tests.ui_trial import entry, page_context, ui_app

    settings = settings_with(prefix, None)
    client.set(Keys(prefix).watch_profile(), profile_path.read_bytes())
    now = time.time()
    simulate(client, settings, seed=4, unseen_disagree=0.30, now=now)
    report = report_of(client, settings, now)
    assert report["skew"]["concentrated_on"] == [UNSEEN]
    ctx = page_context(settings, redis_url, [entry("v2")])
    with serve_app(ui_app(ctx)) as base:
        html = httpx.get(f"{base}/ui/candidates/v2?window=1h", timeout=30).text
    panel = re.search(r'<section class="panel gate fail" id="skew">.*?</section>', html, re.S)
    assert panel is not None, html[:2000]
    assert "Disagreement concentrates on requests unlike the training data" in panel.group(0)
