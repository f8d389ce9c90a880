"""Gate verdicts on constructed summaries: pass, fail and insufficient, each with reasons."""

from __future__ import annotations

import pytest
import redis

from analysis.gate import evaluate_gate
from analysis.report import build_report
from analysis.summaries import SEP, latency_bin
from common.keys import Keys
from common.settings import GateSettings, settings_from_mapping

START = 1_700_000_000 - 1_700_000_000 % 60


def _summary(
    rows: int,
    agree: int,
    *,
    errors: int = 0,
    p_ms: float = 20.0,
    c_ms: float = 22.0,
    slices: dict[str, tuple[int, int]] | None = None,
    labels: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> dict[str, int]:
    """Bucket counters as the worker writes them (one-row pairs)."""
    fields = {
        "records": rows,
        "rows": rows,
        "agree": agree,
        f"fm{SEP}a{SEP}a": agree,
        f"fm{SEP}a{SEP}b": rows - agree - errors,
        f"fm{SEP}a{SEP}ERR": errors,
        "err:error": errors,
        f"lp:{latency_bin(p_ms)}": rows,
        f"lc:{latency_bin(c_ms)}": rows - errors,
    }
    for value, (n, disagree) in (slices or {}).items():
        fields[f"s{SEP}country{SEP}{value}"] = n
        fields[f"sd{SEP}country{SEP}{value}"] = disagree
    fields.update(zip(("la", "lb", "lc", "ld"), labels, strict=True))
    return {k: v for k, v in fields.items() if v}


def _report(client: redis.Redis, prefix: str, fields: dict[str, int], **gate: object) -> dict:
    """The counters spread over four buckets (the latency rule needs four time clusters)."""
    keys = Keys(prefix)
    for i, start in enumerate(START - 60 * k for k in range(4)):
        part = {k: v // 4 + (v % 4 if i == 0 else 0) for k, v in fields.items()}
        client.hset(keys.bucket("v2", start), mapping={k: v for k, v in part.items() if v})
        client.zadd(keys.bucket_index("v2"), {str(start): start})
    settings = settings_from_mapping({"redis": {"prefix": prefix}, "gate": gate}, environ={})
    return build_report(client, keys, settings, "v2", 3600, now=START + 30)


def _rule(report: dict, name: str) -> dict:
    return next(r for r in report["gate"]["rules"] if r["rule"] == name)


def test_pass_when_every_rule_holds(redis_client: redis.Redis, prefix: str) -> None:
    fields = _summary(5000, 4990, slices={"FR": (2500, 5), "DE": (2500, 5)})
    report = _report(redis_client, prefix, fields)
    gate = report["gate"]
    assert gate["verdict"] == "pass", gate["reasons"]
    assert len(gate["reasons"]) == 6
    assert "above the 95.0% minimum" in _rule(report, "agreement")["detail"]
    assert _rule(report, "labels")["outcome"] == "skip"


def test_insufficient_with_few_pairs(redis_client: redis.Redis, prefix: str) -> None:
    report = _report(redis_client, prefix, _summary(200, 196))
    gate = report["gate"]
    assert gate["verdict"] == "insufficient"
    assert "only 200 pairs" in _rule(report, "pairs")["detail"]
    assert _rule(report, "agreement")["outcome"] == "insufficient"  # the bounds straddle 95%


def test_fail_when_agreement_is_clearly_low(redis_client: redis.Redis, prefix: str) -> None:
    report = _report(redis_client, prefix, _summary(5000, 4000))
    assert report["gate"]["verdict"] == "fail"
    assert "below the 95.0% minimum" in _rule(report, "agreement")["detail"]


def test_fail_on_a_flagged_slice_with_a_large_drop(redis_client: redis.Redis, prefix: str) -> None:
    fields = _summary(5000, 4950, slices={"FR": (500, 45), "DE": (4500, 5)})
    report = _report(redis_client, prefix, fields)
    assert report["gate"]["verdict"] == "fail"
    detail = _rule(report, "slices")["detail"]
    assert "country=FR" in detail and "91.0%" in detail


def test_fail_on_latency_and_errors(redis_client: redis.Redis, prefix: str) -> None:
    report = _report(
        redis_client, prefix, _summary(5000, 4700, errors=250, c_ms=80.0), min_agreement=0.9
    )
    assert report["gate"]["verdict"] == "fail"
    assert _rule(report, "latency")["outcome"] == "fail"
    assert report["latency"]["p99_ratio"] == pytest.approx(4.0, rel=0.02)
    assert _rule(report, "errors")["outcome"] == "fail"


def test_labels_showing_more_negative_flips_fail(redis_client: redis.Redis, prefix: str) -> None:
    fields = _summary(5000, 4990, labels=(900, 60, 20, 20))
    report = _report(redis_client, prefix, fields)
    assert report["labels"]["n"] == 1000
    assert _rule(report, "labels")["outcome"] == "fail"
    assert report["gate"]["verdict"] == "fail"


def test_labels_within_the_allowed_loss_pass(redis_client: redis.Redis, prefix: str) -> None:
    fields = _summary(5000, 4990, labels=(9000, 10, 12, 978))
    report = _report(redis_client, prefix, fields)
    assert _rule(report, "labels")["outcome"] == "pass"


@pytest.mark.parametrize(
    ("excess", "outcome"),
    [
        ((0.01, 0.0, 0.02), "pass"),
        ((0.2, 0.15, 0.25), "fail"),
        ((0.04, 0.01, 0.08), "insufficient"),
    ],
)
def test_agreement_is_judged_beyond_the_noise_floor(
    excess: tuple[float, float, float], outcome: str
) -> None:
    value, low, high = excess
    report = {
        "pairs": 5000,
        "agreement": {"rate": 0.9, "cs_low": 0.88, "cs_high": 0.92},
        "noise_floor": {
            "agreement": 0.9,
            "candidate": "replica",
            "excess": {"excess": value, "ci_low": low, "ci_high": high},
        },
    }
    result = evaluate_gate(report, GateSettings())
    rule = next(r for r in result["rules"] if r["rule"] == "agreement")
    assert rule["outcome"] == outcome
    assert "noise floor" in rule["detail"]


def test_latency_not_judged_when_the_ratio_is_zero(redis_client: redis.Redis, prefix: str) -> None:
    report = _report(redis_client, prefix, _summary(5000, 4990, c_ms=80.0), max_p99_ratio=0)
    assert _rule(report, "latency")["outcome"] == "skip"
    assert report["gate"]["verdict"] == "pass"
