"""Stratified sampling: a rare slice oversampled by a sticky per-stratum rate, weighted
back by inverse inclusion probability. Through a real proxy (which requests are
mirrored), a seeded simulation (>= 10x the pairs for a 1% slice at a 5% sample, the
weighted agreement unbiased), and the report on the worker's counters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis
from proxy_upstreams import Candidate, Primary, running_proxy, wait_until
from servers import serve_app

from analysis import strata
from analysis.report import build_report
from analysis.summaries import SEP, Summary
from analysis.worker import Worker
from common.errors import ConfigError
from common.keys import Keys
from common.settings import settings_from_mapping
from proxy.mirror import StrataPolicy, sample_point
from tests import pairs_factory as pf

TENANT = [{"name": "tenant", "from": "header:x-tenant"}]
SMALL = [{"from": "header:X-Tenant", "value": "small", "sample": 20}]


def test_a_proxy_oversamples_the_stratum_sticky(redis_url: str, prefix: str) -> None:
    import httpx

    ids = [f"req-{i}" for i in range(300)]
    expected = sorted(
        r for i, r in enumerate(ids) if sample_point(r) < (1.0 if i % 10 == 0 else 0.05)
    )
    cand = Candidate()
    with serve_app(Primary()) as primary_url, serve_app(cand) as cand_url:
        settings = settings_from_mapping(
            {"proxy": {"primary": primary_url, "mirror_paths": ["**"]},
             "redis": {"prefix": prefix},
             "candidates": [{"name": "c", "url": cand_url, "sample": 0.05}],
             "slices": TENANT, "strata": SMALL},
            environ={},
        )  # fmt: skip
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as client:
            for i, rid in enumerate(ids):
                tenant = "small" if i % 10 == 0 else "big"
                client.post(px.url + "/json", content=b"{}",
                            headers={"x-request-id": rid, "x-tenant": tenant})  # fmt: skip
            wait_until(lambda: px.settled("c"), what="mirrors to finish")
    assert sorted(cand.request_ids) == expected
    assert sum(r in expected for r in ids[::10]) == 30  # every small request at 20 x 5%


def _simulate(seed: int, n: int = 40_000, rate: float = 0.05) -> dict[str, Any]:
    """n requests, 1% small (agreement 0.6) and 99% big (0.95); mirrored at `rate`,
    small at 20x. Returns the pairs per stratum with and without strata, the truth and
    the weighted estimate."""
    rng = np.random.default_rng(seed)
    policy = StrataPolicy(settings_from_mapping({"slices": TENANT, "strata": SMALL}).strata)
    small = rng.random(n) < 0.01
    agree = rng.random(n) < np.where(small, 0.6, 0.95)
    points = np.array([sample_point(f"s{seed}-{i}") for i in range(n)])
    factor = np.array([policy.factor([("X-Tenant", "small" if s else "big")]) for s in small])
    kept = points < np.minimum(1.0, rate * factor)
    plain = points < rate
    counts = {"rows": int(kept.sum()), "agree": int((kept & agree).sum()),
              f"s{SEP}tenant{SEP}small": int((kept & small).sum()),
              f"sd{SEP}tenant{SEP}small": int((kept & small & ~agree).sum())}  # fmt: skip
    found = strata.stratum_feature(settings_from_mapping({"slices": TENANT, "strata": SMALL}))
    assert found is not None
    parts = strata.strata(Summary(counts), found[0], found[1], rate)
    return {
        "small_pairs": int((kept & small).sum()),
        "small_plain": int((plain & small).sum()),
        "truth": float(agree.mean()),
        "unweighted": counts["agree"] / counts["rows"],
        **strata.weighted_agreement(parts),
    }


def test_a_rare_slice_gets_ten_times_the_pairs_and_the_weighted_agreement_is_unbiased() -> None:
    runs = [_simulate(seed) for seed in range(12)]
    assert sum(r["small_pairs"] for r in runs) >= 10 * sum(r["small_plain"] for r in runs)
    errors = np.array([r["agreement"] - r["truth"] for r in runs])
    assert abs(errors.mean()) < 0.005  # unbiased
    biased = np.array([r["unweighted"] - r["truth"] for r in runs])
    assert biased.mean() < -0.04  # the raw rate over-represents the small tenant
    covered = sum(r["ci_low"] <= r["truth"] <= r["ci_high"] for r in runs)
    assert covered >= 10


def test_the_report_weights_back_and_shows_effective_pairs(
    redis_client: redis.Redis, prefix: str
) -> None:
    raw = {"redis": {"prefix": prefix}, "worker": {"block_ms": 10},
           "candidates": [{"name": "v2", "url": "http://127.0.0.1:9", "sample": 0.05}],
           "slices": [{"name": "country", "from": "$.inputs[1].data[*]"}, *TENANT],
           "strata": SMALL}  # fmt: skip
    settings = settings_from_mapping(raw, environ={})
    same, other = [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]
    small = {"content-type": "application/json", "x-tenant": "small"}
    records = [pf.record(f"s{i}", [same], [same if i < 10 else other], headers=small)
               for i in range(20)]  # fmt: skip
    records += [pf.record(f"b{i}", [same], [same]) for i in range(40)]  # x-tenant: acme
    pf.write(redis_client, Keys(prefix).pairs("v2"), records)
    pf.drain(Worker(redis_client, settings))
    report = build_report(redis_client, Keys(prefix), settings, "v2", 3600, now=pf.TS0 / 1000 + 30)
    st = report["stratified"]
    assert st["unweighted_agreement"] == pytest.approx(50 / 60)
    assert st["agreement"] == pytest.approx((10 + 40 * 20) / (20 + 40 * 20))
    assert st["effective_pairs"] == pytest.approx(820**2 / (20 + 40 * 400))
    rows = {(r["slice"], r["value"]): r for r in report["slices"]}
    assert rows[("tenant", "small")]["effective_pairs"] == 20
    assert rows[("country", "FR")]["effective_pairs"] == pytest.approx(41.97, abs=0.1)


def test_strata_need_a_slice_on_their_header() -> None:
    with pytest.raises(ConfigError, match="slices"):
        settings_from_mapping({"strata": SMALL}, environ={})
    with pytest.raises(ConfigError, match="header:Name"):
        settings_from_mapping({"strata": [{"from": "$.x.y", "value": "a"}]}, environ={})


def test_the_terminal_shows_the_weighted_agreement() -> None:
    from rich.console import Console

    from shadowtrial.render import render_report

    report = {"candidate": "v2", "gate": {"verdict": "insufficient", "reasons": []},
              "stratified": {"slice": "tenant\x1b[2J", "agreement": 0.9, "ci_low": 0.85,
                             "ci_high": 0.95, "unweighted_agreement": 0.8,
                             "effective_pairs": 41.9,
                             "strata": [{"value": "small", "inclusion": 1.0, "pairs": 20,
                                         "agreement": 0.5}]}}  # fmt: skip
    console = Console(record=True, width=120)
    render_report(report, console)
    text = console.export_text()
    assert "agreement, weighted" in text and "90.0% [85.0%, 95.0%]" in text
    assert "small: 20 pairs at 100.0%" in text and "\x1b" not in text
