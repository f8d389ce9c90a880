"""The report on real pairs (OIP-v2 bodies through the real adapters and worker), checked
against values computed by hand on small fixed data."""

from __future__ import annotations

import math

import orjson
import pytest
import redis

from analysis import anytime_slices, stats
from analysis.report import build_report, recent_pairs
from analysis.worker import Worker
from common.keys import Keys
from common.records import OUTCOME_OK, OUTCOME_TIMEOUT
from common.settings import settings_from_mapping
from tests import pairs_factory as pf

SETOSA = [0.9, 0.06, 0.04]
VERSICOLOR = [0.1, 0.8, 0.1]
VIRGINICA = [0.05, 0.15, 0.8]
NOW = pf.TS0 / 1000 + 30  # inside the one bucket every record falls in

DESIGN_KEYS = {
    "candidate": None,
    "window": {"start", "end"},
    "pairs": None,
    "sampled": None,
    "shed": None,
    "errors": {"primary", "candidate", "timeouts"},
    "agreement": {"rate", "ci_low", "ci_high", "cs_low", "cs_high", "kappa"},
    "flips": {"matrix", "labels", "by_class"},
    "confidence": {"primary", "candidate", "shift", "ks_p", "near_boundary"},
    "regression": {"mean_abs_diff", "p95_abs_diff", "mean_diff"},
    "latency": {"primary", "candidate"},
    "slices": None,
    "discovered": None,
    "noise_floor": {"agreement"},
    "labels": {"n", "primary_accuracy", "candidate_accuracy", "mcnemar_p"},
    "gate": {"verdict", "reasons"},
}


def _fixed_records() -> list:
    """105 pairs: FR 40 (10 flips), DE 60 (2 flips, 2 renamed tensors), US 4 timeouts,
    IT 1 unparseable candidate answer."""
    records = []

    def add(
        primary: list[float], candidate: list[float] | None, country: str, **kw: object
    ) -> None:
        records.append(
            pf.record(
                f"r{len(records)}", [primary], candidate and [candidate], country=country, **kw
            )
        )

    for i in range(40):
        add(SETOSA, VERSICOLOR if i < 10 else SETOSA, "FR")
    for i in range(60):
        body = pf.oip_answer([VERSICOLOR], name="probabilities") if i in (10, 11) else None
        add(VERSICOLOR, VIRGINICA if i < 2 else VERSICOLOR, "DE", candidate_body=body)
    for _ in range(4):
        add(SETOSA, None, "US", outcome=OUTCOME_TIMEOUT, candidate_ms=2000.0)
    add(VIRGINICA, None, "IT", outcome=OUTCOME_OK, candidate_body=b"<html>oops</html>")
    return records


@pytest.fixture
def fixed_report(redis_client: redis.Redis, prefix: str) -> dict:
    settings = pf.settings(prefix)
    pf.write(redis_client, Keys(prefix).pairs("v2"), _fixed_records())
    assert pf.drain(Worker(redis_client, settings)) == 105
    report = build_report(redis_client, Keys(prefix), settings, "v2", 3600, now=NOW)
    orjson.dumps(report)  # JSON-safe, or this raises
    return report


def test_report_carries_every_design_key(fixed_report: dict) -> None:
    for key, inner in DESIGN_KEYS.items():
        assert key in fixed_report, key
        if inner:
            assert inner <= set(fixed_report[key]), (key, inner - set(fixed_report[key]))
    for side in ("primary", "candidate"):
        assert {"p50", "p95", "p99"} <= set(fixed_report["latency"][side])
        assert {"mean", "hist"} <= set(fixed_report["confidence"][side])
    assert {"primary", "candidate"} <= set(fixed_report["confidence"]["near_boundary"])
    for row in fixed_report["slices"]:
        assert {
            "slice",
            "value",
            "pairs",
            "agreement",
            "delta_vs_overall",
            "p_adj",
            "flagged",
        } <= set(row)
    assert fixed_report["gate"]["verdict"] in {"pass", "fail", "insufficient"}


def test_agreement_and_errors_match_hand_counts(fixed_report: dict) -> None:
    assert fixed_report["pairs"] == 105
    agreement = fixed_report["agreement"]
    assert agreement["rate"] == pytest.approx(88 / 105)
    assert agreement["ci_low"] < 88 / 105 < agreement["ci_high"]
    assert agreement["cs_low"] < agreement["ci_low"] and agreement["cs_high"] > agreement["ci_high"]
    errors = dict(fixed_report["errors"])
    primary_cs, candidate_cs = errors.pop("primary_cs"), errors.pop("candidate_cs")
    assert primary_cs[0] == 0.0 and candidate_cs[0] < 5 / 105 < candidate_cs[1]
    assert errors == {
        "primary": 0,
        "candidate": 5,
        "timeouts": 4,
        "by_kind": {"timeout": 4, "unparseable": 1},
        "primary_rate": 0.0,
        "candidate_rate": pytest.approx(5 / 105),
    }


def test_flip_matrix_has_the_error_class(fixed_report: dict) -> None:
    flips = fixed_report["flips"]
    labels, matrix = flips["labels"], flips["matrix"]
    assert labels[-1] == "ERR"
    cell = {(p, c): matrix[i][j] for i, p in enumerate(labels) for j, c in enumerate(labels)}
    assert cell[("setosa", "setosa")] == 30
    assert cell[("setosa", "versicolor")] == 10
    assert cell[("setosa", "ERR")] == 4
    assert cell[("versicolor", "versicolor")] == 58
    assert cell[("versicolor", "virginica")] == 2
    assert cell[("virginica", "ERR")] == 1
    assert sum(map(sum, matrix)) == 105
    by_class = {row["label"]: row for row in flips["by_class"]}
    assert by_class["setosa"]["flip_out"] == pytest.approx(14 / 44)
    # kappa by hand: p_o = 88/105; p_e from the margins
    rows = {"setosa": 44, "versicolor": 60, "virginica": 1, "ERR": 0}
    cols = {"setosa": 30, "versicolor": 68, "virginica": 2, "ERR": 5}
    p_e = sum(rows[k] * cols[k] for k in rows) / 105**2
    kappa = (88 / 105 - p_e) / (1 - p_e)
    assert fixed_report["agreement"]["kappa"] == pytest.approx(kappa)


def test_slices_match_hand_counts(fixed_report: dict) -> None:
    rows = {(r["slice"], r["value"]): r for r in fixed_report["slices"]}
    assert rows[("country", "FR")]["pairs"] == 40
    assert rows[("country", "FR")]["agreement"] == pytest.approx(30 / 40)
    assert rows[("country", "FR")]["delta_vs_overall"] == pytest.approx(30 / 40 - 88 / 105)
    assert rows[("country", "DE")]["agreement"] == pytest.approx(58 / 60)
    assert rows[("country", "US")]["agreement"] == 0.0
    assert rows[("country", "US")]["p_adj"] is None  # 4 pairs: below the minimum support
    assert rows[("country", "US")]["flagged"] is False
    assert rows[("tenant", "acme")]["pairs"] == 105
    # output-derived slices: the primary's class and confidence decile
    assert rows[("primary:class", "setosa")]["pairs"] == 44
    assert rows[("primary:confidence", "0.9-1.0")]["pairs"] == 44
    # FR against the rest (7 disagreements in 65): the anytime-valid p = 1/e of the
    # one-sided e-value (one row per request here: design effect n / (n - 1), the
    # small-sample correction of the cluster-robust variance); e-BH (BH on 1/e)
    # over every testable input slice, output-derived slices in a family of their own and
    # never flagged
    assert fixed_report["agreement"]["design_effect"] == pytest.approx(105 / 104)
    e_fr = anytime_slices.slice_e_value(40, 10, 105, 17, 105 / 104)
    assert rows[("country", "FR")]["e_value"] == pytest.approx(e_fr)
    assert rows[("country", "FR")]["p"] == pytest.approx(min(1.0, 1.0 / e_fr))
    for derived in (False, True):
        family = [r for r in fixed_report["slices"] if r["derived"] is derived]
        testable = [r for r in family if r["p"] is not None]
        adjusted = stats.benjamini_hochberg([r["p"] for r in testable])
        assert [r["p_adj"] for r in testable] == pytest.approx(list(adjusted))
    assert not any(r["flagged"] for r in fixed_report["slices"] if r["derived"])
    assert rows[("primary:class", "setosa")]["derived"] is True
    assert rows[("country", "FR")]["derived"] is False


def test_contract_and_unparseable_are_counted_with_examples(fixed_report: dict) -> None:
    contract = fixed_report["contract"]
    assert contract["by_kind"] == {"output_names": 2}
    assert "probabilities" in contract["examples"]["output_names"]
    unparseable = fixed_report["unparseable"]
    assert unparseable["candidate"] == 1 and unparseable["primary"] == 0
    [sample] = unparseable["samples"]
    assert sample["side"] == "candidate" and "<html>oops</html>" in sample["body"]


def test_confidence_latency_and_dangerous_flips(fixed_report: dict) -> None:
    conf = fixed_report["confidence"]
    assert conf["primary"]["mean"] == pytest.approx((44 * 0.9 + 60 * 0.8 + 0.8) / 105)
    # candidate confidences exist for the 100 answered rows only
    assert conf["candidate"]["n"] == 100
    assert sum(conf["primary"]["hist"]) == 105 and len(conf["primary"]["hist"]) == 100
    assert conf["near_boundary"]["primary"] == 0.0
    deltas = fixed_report["confidence_deltas"]
    assert deltas["n"] == 100
    assert deltas["mean"] == pytest.approx((10 * (0.8 - 0.9) + 2 * (0.8 - 0.8)) / 100)
    assert deltas["negative"] == 10
    # primary confident (0.9) and flipped: 10 to versicolor, 4 to ERR
    assert fixed_report["dangerous_flips"]["count"] == 14
    latency = fixed_report["latency"]
    assert latency["primary"]["p50"] == pytest.approx(10.0, rel=0.011)
    assert latency["candidate"]["p99"] == pytest.approx(2000.0, rel=0.011)


def test_drilldown_lists_divergent_pairs_by_slice(
    redis_client: redis.Redis, fixed_report: dict, prefix: str
) -> None:
    pairs = recent_pairs(
        redis_client, Keys(prefix), "v2", divergent=True, slice="country=FR", limit=50
    )
    assert len(pairs) == 10
    assert all(not p["agree"] and p["slices"][0]["country"] == "FR" for p in pairs)
    assert pairs[0]["request_id"] == "r9"  # newest first
    assert pairs[0]["primary"]["labels"] == ["setosa"] and pairs[0]["candidate"]["labels"] == [
        "versicolor"
    ]
    assert pairs[0]["path"] == "/v2/models/iris/infer" and '"inputs"' in pairs[0]["request_body"]
    timeouts = recent_pairs(
        redis_client, Keys(prefix), "v2", divergent=True, slice="country=US", limit=50
    )
    assert [p["candidate"]["outcome"] for p in timeouts] == ["timeout"] * 4


def test_regression_outputs(redis_client: redis.Redis, prefix: str) -> None:
    def answer(y: float) -> bytes:
        return orjson.dumps(
            {"outputs": [{"name": "predict", "shape": [1, 1], "datatype": "FP64", "data": [y]}]}
        )

    pairs = [(10.0, 10.05), (20.0, 19.0), (5.0, 5.0), (1.0, 3.0)]
    records = []
    for i, (yp, yc) in enumerate(pairs):
        rec = pf.record(f"r{i}", [SETOSA], [SETOSA])
        rec.primary_body, rec.candidate_body = answer(yp), answer(yc)
        records.append(rec)
    settings = pf.settings(prefix)
    pf.write(redis_client, Keys(prefix).pairs("v2"), records)
    pf.drain(Worker(redis_client, settings))
    report = build_report(redis_client, Keys(prefix), settings, "v2", 3600, now=NOW)
    diffs = [yc - yp for yp, yc in pairs]
    reg = report["regression"]
    assert reg["n"] == 4
    assert reg["mean_diff"] == pytest.approx(sum(diffs) / 4)
    assert reg["mean_abs_diff"] == pytest.approx(sum(map(abs, diffs)) / 4)
    assert reg["rmse"] == pytest.approx(math.sqrt(sum(d * d for d in diffs) / 4))
    assert reg["p95_abs_diff"] == pytest.approx(2.0, rel=0.011)
    # rtol 0.01: 10 -> 10.05 is beyond 0.1? no (0.05 <= 0.1); 20 -> 19 and 1 -> 3 are beyond
    assert reg["beyond_tolerance"] == pytest.approx(2 / 4)
    assert report["agreement"]["rate"] == pytest.approx(2 / 4)
    assert report["flips"]["labels"] == []


def test_noise_floor_comes_from_the_secondary(redis_client: redis.Redis, prefix: str) -> None:
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "candidates": [
            {"name": "v2", "url": "http://127.0.0.1:9"},
            {"name": "replica", "url": "http://127.0.0.1:9", "role": "secondary"},
        ],
    }
    settings = settings_from_mapping(raw, environ={})
    keys = Keys(prefix)
    cand = [pf.record(f"c{i}", [SETOSA], [VERSICOLOR if i < 30 else SETOSA]) for i in range(200)]
    noise = [
        pf.record(
            f"n{i}", [SETOSA], [VERSICOLOR if i < 4 else SETOSA], name="replica", role="secondary"
        )
        for i in range(200)
    ]
    pf.write(redis_client, keys.pairs("v2"), cand)
    pf.write(redis_client, keys.pairs("replica"), noise)
    pf.drain(Worker(redis_client, settings))
    report = build_report(redis_client, keys, settings, "v2", 3600, now=NOW)
    floor = report["noise_floor"]
    assert floor["candidate"] == "replica"
    assert floor["agreement"] == pytest.approx(196 / 200)
    assert floor["excess"]["excess"] == pytest.approx(30 / 200 - 4 / 200)
    assert floor["excess"]["real"] is True
