"""Bucket state: what one pair adds, and that merging buckets is plain addition."""

from __future__ import annotations

import random

import redis

from analysis.adapters.base import Prediction
from analysis.admission import Admission, admitted_values
from analysis.compare import RowComparison
from analysis.slices import MISSING, OTHER
from analysis.summaries import (
    ERR,
    MICRO,
    SEP,
    BatchDelta,
    PairEvidence,
    Summary,
    bucket_start,
    conf_bin,
    merge_raw,
)
from common.keys import Keys


def _pred(label: str, conf: float, margin: float) -> Prediction:
    return Prediction(label=label, confidence=conf, margin=margin)


def _keep(feature: str, value: str) -> str:
    return value


def _row(p: Prediction, c: Prediction) -> RowComparison:
    return RowComparison(p.label == c.label, p, c, conf_delta=c.confidence - p.confidence)


def test_one_pair_adds_what_a_person_would_count() -> None:
    p, c = _pred("cat", 0.95, 0.92), _pred("dog", 0.55, 0.05)
    ev = PairEvidence(
        "r1",
        1_700_000_012_345,
        12.0,
        30.0,
        rows=[_row(p, c)],
        primary_rows=[p],
        slice_rows=[{"country": "FR"}],
    )
    delta = BatchDelta(60)
    delta.add(ev, _keep)
    [(start, bucket)] = delta.buckets.items()
    assert start == 1_700_000_012_345 // 1000 // 60 * 60
    ints = dict(bucket.ints)
    assert ints["records"] == ints["rows"] == 1 and "agree" not in ints
    assert ints[f"fm{SEP}cat{SEP}dog"] == 1
    assert ints["cp:95"] == ints["cc:55"] == 1
    assert ints["nb:01"] == 1  # candidate near the boundary, primary not
    assert ints["fd:9"] == ints["td:9"] == 1  # a dangerous flip
    assert ints["ds"] == round((0.55 - 0.95) * MICRO) and ints["dneg"] == 1
    assert ints[f"s{SEP}country{SEP}FR"] == ints[f"sd{SEP}country{SEP}FR"] == 1
    assert ints[f"s{SEP}primary:class{SEP}cat"] == 1
    pair = f"q{SEP}country{SEP}FR{SEP}primary:class{SEP}cat"
    assert ints[pair] == ints["qd" + pair[1:]] == 1


def test_a_failed_candidate_counts_every_row_as_err() -> None:
    p = _pred("cat", 0.7, 0.5)
    ev = PairEvidence("r1", 0, 5.0, None, candidate_error="timeout", primary_rows=[p, p])
    delta = BatchDelta(60)
    delta.add(ev, _keep)
    ints = delta.buckets[0].ints
    assert ints["rows"] == 2 and ints["agree"] == 0 and ints["records"] == 1
    assert ints[f"fm{SEP}cat{SEP}{ERR}"] == 2 and ints["err:timeout"] == 1
    assert "dn" not in ints and not any(k.startswith("lc:") for k in ints)


def test_a_failed_primary_is_counted_but_not_compared() -> None:
    ev = PairEvidence("r1", 0, 5.0, 6.0, primary_failure="primary")
    delta = BatchDelta(60)
    delta.add(ev, _keep)
    ints = delta.buckets[0].ints
    assert ints["err:primary"] == 1 and ints["records"] == 1 and "rows" not in ints


def test_merging_buckets_is_addition_and_exact() -> None:
    rng = random.Random(3)
    deltas = []
    for _ in range(5):
        delta = BatchDelta(60)
        for i in range(200):
            p = _pred(rng.choice("abc"), rng.random(), rng.random())
            c = _pred(rng.choice("abc"), rng.random(), rng.random())
            delta.add(
                PairEvidence(f"r{i}", 0, 1.0, 1.0, rows=[_row(p, c)], primary_rows=[p]), _keep
            )
        deltas.append(delta)
    raws = [{k.encode(): str(v).encode() for k, v in d.buckets[0].ints.items()} for d in deltas]
    merged = Summary(merge_raw(raws))
    assert merged.get("rows") == 1000
    assert merged.get("ds") == sum(d.buckets[0].ints["ds"] for d in deltas)
    _, matrix = merged.flip_matrix()
    assert matrix.sum() == 1000 and int(matrix.trace()) == merged.get("agree")
    assert merged.hist("cp", 100).sum() == 1000


def test_flip_matrix_puts_other_and_err_last() -> None:
    counts = {
        f"fm{SEP}b{SEP}b": 5,
        f"fm{SEP}a{SEP}{ERR}": 2,
        f"fm{SEP}{OTHER}{SEP}a": 1,
        f"fm{SEP}a{SEP}a": 9,
    }
    labels, matrix = Summary(counts).flip_matrix()
    assert labels == ["a", "b", OTHER, ERR]
    assert matrix.tolist() == [[9, 0, 0, 2], [0, 5, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_bins_and_buckets_at_the_edges() -> None:
    assert (
        conf_bin(0.0) == 0 and conf_bin(1.0) == 99 and conf_bin(0.999) == 99 and conf_bin(0.5) == 50
    )
    assert bucket_start(59_999, 60) == 0 and bucket_start(60_000, 60) == 60


def test_admission_caps_values_and_never_spends_the_cap_on_reserved_ones(
    redis_client: redis.Redis, prefix: str
) -> None:
    admission = Admission(redis_client, Keys(prefix), ttl_s=60, cap=3)
    admission.prepare("v2", {"country": {"FR", "DE", MISSING}})
    admission.prepare("v2", {"country": {"US", "IT"}})
    fold = admission.folder("v2")
    folded = {v: fold("country", v) for v in ("FR", "DE", "US", "IT", MISSING)}
    assert folded[MISSING] == MISSING  # reserved: never folded, never admitted
    assert folded["FR"] == "FR" and folded["DE"] == "DE"
    assert {folded["US"], folded["IT"]} in ({"IT", OTHER}, {"US", OTHER})  # one seat was left
    assert len(admitted_values(redis_client, Keys(prefix), "v2", ["country"])["country"]) == 3
    # another process sees the same decisions
    other = Admission(redis_client, Keys(prefix), ttl_s=60, cap=3)
    other.prepare("v2", {"country": {"FR", "DE", "US", "IT"}})
    assert {v: other.folder("v2")("country", v) for v in ("FR", "DE", "US", "IT")} == {
        v: folded[v] for v in ("FR", "DE", "US", "IT")
    }
