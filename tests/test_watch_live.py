"""The live watch's data path on a real Redis: records folded into buckets exactly once,
caps held in Redis, rollups that keep every count, and the document built from them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import redis

from analysis.watch_live import watch_document
from analysis.watch_rollup import read_buckets, roll_up_watch
from analysis.worker import Worker
from common.keys import WATCH, WATCH_GROUP, Keys
from common.records import PairRecord
from common.scripts import SCRIPTS
from common.settings import Settings, settings_from_mapping

NOW = 1_800_000_000.0  # a fixed clock: buckets fall where the test says
HOUR = 3600


def watch_settings(prefix: str, **watch: object) -> Settings:
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10, "bucket_seconds": 60},
        "watch": {"sample": 1.0, **watch},
        "features": [{"name": "age", "from": "instances[0]"}],
    }
    return settings_from_mapping(raw, environ={})


def answer(cls: str, confidence: float) -> bytes:
    other = 1.0 - confidence
    probs = [confidence, other] if cls == "yes" else [other, confidence]
    return json.dumps({"predictions": [{"label": cls, "probabilities": probs}]}).encode()


def record(ts_s: float, body: object, i: int, *, answer_body: bytes | None = None,
           status: int = 200) -> PairRecord:  # fmt: skip
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return PairRecord(
        request_id=f"r{i}-{ts_s}", candidate=WATCH, ts_ms=int(ts_s * 1000),
        path="/v1/models/m:predict", request_body=raw, primary_status=status,
        primary_ms=5.0 + (i % 10), primary_body=answer_body or answer("yes", 0.9),
        primary_content_type="application/json",
    )  # fmt: skip


def traffic(start_s: float, n: int, *, shift: bool, seed: int) -> list[PairRecord]:
    """n requests over 10 minutes: age ~ N(40, 10) and cities a/b/c, or (shift) ages
    +15 and a city training never saw; the answers grow less confident with it."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        age = rng.gauss(55 if shift else 40, 10)
        city = rng.choice(["a", "b", "marseille"] if shift else ["a", "b", "c"])
        conf = rng.uniform(0.5, 0.7) if shift else rng.uniform(0.8, 0.99)
        body = {"instances": [[age, city]]}
        out.append(record(start_s + i * 600 / n, body, i, answer_body=answer("yes", conf)))
    return out


OUTPUT_KEYS = {
    "kind", "class_mix", "class_mix_reference", "mean_confidence", "mean_confidence_reference",
    "confidence_drift", "confidence_p_adj", "confidence_flagged", "errors", "error_rate",
    "latency_p50_ms", "latency_p99_ms",
}  # fmt: skip


def assert_contract(doc: dict) -> None:
    """The document has exactly the keys of the contract (control.openapi WatchDocument,
    docs/operating.md) at every level the page reads."""
    from control.openapi import openapi_document

    schema = openapi_document()["components"]["schemas"]["WatchDocument"]
    props = schema["properties"]
    assert set(doc) == set(schema["required"])
    assert set(doc["reference"]) == set(props["reference"]["required"])
    assert set(doc["window"]) == {"from", "to", "seconds"}
    for feature in doc["features"]:
        assert set(feature) == set(props["features"]["items"]["required"])
        chart = feature["chart"]
        want = (
            {"kind", "edges", "now", "reference"}
            if chart["kind"] == "numeric"
            else {"kind", "values"}
        )
        assert set(chart) == want
    assert set(doc["outputs"]) == OUTPUT_KEYS
    assert set(doc["labels"]) == set(props["labels"]["required"])
    for step in doc["timeline"]:
        assert set(step) == {"start", "requests", "max_drift", "flagged", "mean_confidence"}
    assert set(doc["accounting"]) == set(props["accounting"]["required"])
    json.dumps(doc, allow_nan=False)


def send(client: redis.Redis, keys: Keys, records: list[PairRecord]) -> None:
    pipe = client.pipeline(transaction=False)
    for rec in records:
        pipe.xadd(keys.pairs(WATCH), rec.to_fields())
    pipe.execute()


def fold_all(worker: Worker) -> int:
    worker.discover()
    total = 0
    while done := worker.read_watch(block=False):
        total += done
    return total


def test_a_seeded_shift_is_flagged_and_the_same_traffic_is_not(
    redis_client: redis.Redis, prefix: str
) -> None:
    settings = watch_settings(prefix)
    keys = Keys(prefix)
    before, after = NOW - 86400 - 600, NOW - 600
    send(redis_client, keys, traffic(before, 600, shift=False, seed=1))
    send(redis_client, keys, traffic(after, 600, shift=True, seed=2))
    worker = Worker(redis_client, settings, clock=lambda: NOW)
    assert fold_all(worker) == 1200
    doc = watch_document(redis_client, settings, "15m", "day", now_s=NOW)
    assert_contract(doc)
    assert doc["reference"]["kind"] == "day" and doc["reference"]["available"]
    assert doc["requests"] == 600 and doc["reference"]["requests"] == 600
    assert set(doc["flagged"]) == {"age", "instances[1]"}
    city = next(f for f in doc["features"] if f["feature"] == "instances[1]")
    assert city["first_seen"] == ["marseille"] and 0.25 < city["unseen_rate"] < 0.45
    assert city["chart"]["kind"] == "categorical"
    age = next(f for f in doc["features"] if f["feature"] == "age")
    assert age["kind"] == "numeric" and age["drift"] > 1.0 and age["p_adj"] < 1e-6
    chart = age["chart"]
    assert len(chart["edges"]) == len(chart["now"]) + 1 and abs(sum(chart["now"]) - 1) < 1e-9
    outputs = doc["outputs"]
    assert outputs["kind"] == "classification" and outputs["class_mix"] == {"yes": 1.0}
    assert outputs["mean_confidence"] < 0.7 < 0.8 < outputs["mean_confidence_reference"]
    assert outputs["confidence_flagged"] and 5 <= outputs["latency_p50_ms"] <= 15
    assert doc["timeline"] and sum(t["requests"] for t in doc["timeline"]) == 600
    assert max(t["flagged"] for t in doc["timeline"]) >= 1
    # the same hours a day apart with the same traffic: nothing is flagged
    quiet = watch_settings(f"{prefix}q")
    keys_q = Keys(f"{prefix}q")
    try:
        send(redis_client, keys_q, traffic(before, 600, shift=False, seed=3))
        send(redis_client, keys_q, traffic(after, 600, shift=False, seed=4))
        assert fold_all(Worker(redis_client, quiet, clock=lambda: NOW)) == 1200
        calm = watch_document(redis_client, quiet, "15m", "day", now_s=NOW)
        assert calm["flagged"] == [] and not calm["outputs"]["confidence_flagged"]
        assert calm["requests"] == 600
    finally:
        for key in redis_client.scan_iter(match=f"{prefix}q:*"):
            redis_client.delete(key)


def test_hostile_values_are_counted_and_buckets_stay_bounded(
    redis_client: redis.Redis, prefix: str
) -> None:
    settings = watch_settings(prefix, max_features=6, max_categories=4)
    keys = Keys(prefix)
    at = NOW - 300
    bodies: list[object] = [
        {"instances": [{"k\x1b[31m\x00": 1, "\u202e": 2, "a:b": 3}]},
        {"instances": [["text in a number", "a"]]},
        b'{"instances": [[NaN, "b"]]}',
        {"instances": [[None]]},
        {"instances": [[list(range(100_000)), "c"]]},
        b"\xff\xfe not json",
        *({"instances": [[1.0, f"city{i}"]]} for i in range(40)),
    ]
    send(redis_client, keys, [record(at, b, i) for i, b in enumerate(bodies)])
    assert fold_all(Worker(redis_client, settings, clock=lambda: NOW)) == len(bodies)
    # a second batch of new features and categories: the caps hold across batches
    more = [{"instances": [{f"new{j}": j, "age": "x"}]} for j in range(30)]
    send(redis_client, keys, [record(at, b, 1000 + i) for i, b in enumerate(more)])
    fold_all(Worker(redis_client, settings, clock=lambda: NOW))
    (bucket,) = read_buckets(redis_client, settings, at - 60, NOW)
    inputs = bucket.states["i"]
    assert inputs.requests == len(bodies) + 30 and inputs.unreadable == 1
    assert len(inputs.features) == 6 and inputs.over_cap > 30
    city = inputs.features["instances[1]"]
    assert len(city.categories) <= 5 and city.categories["<other>"] >= 37
    age = inputs.features["age"]
    assert age.nan == 1 and age.null == 1 and age.categories.get("text in a number") == 1
    assert redis_client.hlen(keys.watch_bucket(int(at - at % 60))) < 2000
    doc = watch_document(redis_client, settings, "1h", "day", now_s=NOW)
    assert_contract(doc)  # and strict JSON, whatever came in
    assert doc["reference"]["available"] is False and doc["flagged"] == []
    names = {f["feature"] for f in doc["features"]}
    assert {"k\x1b[31m\x00", "\u202e", "a:b"} <= names  # raw here: the readers sanitise


def test_a_worker_that_dies_before_folding_leaves_its_batch_to_one_other(
    redis_client: redis.Redis, prefix: str
) -> None:
    settings = watch_settings(prefix)
    keys = Keys(prefix)
    send(redis_client, keys, traffic(NOW - 600, 50, shift=False, seed=5))
    dead = Worker(redis_client, settings, consumer="dead", clock=lambda: NOW)
    dead.discover()
    taken = redis_client.xreadgroup(WATCH_GROUP, "dead", {keys.pairs(WATCH): ">"}, count=30)
    assert len(taken[0][1]) == 30  # read, never folded: the worker died here
    alive = Worker(redis_client, settings, consumer="alive", clock=lambda: NOW)
    assert fold_all(alive) == 20
    redis_client.xclaim(keys.pairs(WATCH), WATCH_GROUP, "alive", 0, [e for e, _ in taken[0][1]])
    # the dead worker comes back and tries its batch: it is no longer pending for it
    assert dead.watch.process(taken[0][1], NOW) == 0
    assert alive._claim_watch(keys.pairs(WATCH)) == 0  # not idle long enough yet
    alive.settings = settings_from_mapping(
        {"redis": {"prefix": prefix}, "worker": {"claim_idle_ms": 100}, "watch": {"sample": 1}},
        environ={},
    )
    import time

    time.sleep(0.15)
    assert alive._claim_watch(keys.pairs(WATCH)) == 30
    doc = watch_document(redis_client, settings, "1h", "day", now_s=NOW)
    assert doc["requests"] == 50


def test_rollup_keeps_every_count_and_a_late_record_is_not_lost(
    redis_client: redis.Redis, prefix: str
) -> None:
    settings = watch_settings(prefix)
    keys = Keys(prefix)
    hour0 = int(NOW - 10 * HOUR) - int(NOW - 10 * HOUR) % HOUR
    send(redis_client, keys, traffic(hour0 + 60, 200, shift=False, seed=6))
    worker = Worker(redis_client, settings, clock=lambda: NOW)
    fold_all(worker)
    count = SCRIPTS["count"].register(redis_client)
    for start in (hour0 + 60, hour0 + 120):  # the proxies' accounting of the same requests
        count(bucket=keys.bucket(WATCH, start), index=keys.bucket_index(WATCH), start=start,
              ttl=3600 * 24, increments=["mirror:sampled", 100])  # fmt: skip
    before = watch_document(redis_client, settings, "11h", "day", now_s=NOW)
    assert before["accounting"]["captured"] == 200
    worker.roll_up()  # the watch's buckets and its accounting buckets
    assert redis_client.zrange(keys.bucket_index(WATCH), 0, -1) == [f"h{hour0}".encode()]
    members = redis_client.zrange(keys.watch_index(), 0, -1)
    assert members == [f"h{hour0}".encode()]
    after = watch_document(redis_client, settings, "11h", "day", now_s=NOW)
    assert after["requests"] == before["requests"] == 200
    assert after["accounting"] == before["accounting"]
    assert after["features"] == before["features"]
    assert after["outputs"]["mean_confidence"] == before["outputs"]["mean_confidence"]
    send(redis_client, keys, traffic(hour0 + 120, 10, shift=False, seed=7))  # late
    fold_all(worker)
    assert watch_document(redis_client, settings, "11h", "day", now_s=NOW)["requests"] == 210
    assert roll_up_watch(redis_client, settings, now_s=NOW) == 1
    assert redis_client.zrange(keys.watch_index(), 0, -1) == [f"h{hour0}".encode()]
    assert watch_document(redis_client, settings, "11h", "day", now_s=NOW)["requests"] == 210


def test_against_a_training_profile_the_skew_is_told(
    redis_client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    import orjson

    from analysis.profile import build_profile

    rng = random.Random(9)
    data = tmp_path / "train.csv"
    rows = [f"{rng.uniform(20, 60):.2f},{rng.choice(['a', 'b', 'c'])}" for _ in range(2000)]
    data.write_text("age,instances[1]\n" + "\n".join(rows) + "\n")
    profile = build_profile(data)
    settings = watch_settings(prefix)
    keys = Keys(prefix)
    redis_client.set(keys.watch_profile(), orjson.dumps(profile.to_dict()))
    send(redis_client, keys, traffic(NOW - 600, 400, shift=True, seed=10))
    fold_all(Worker(redis_client, settings, clock=lambda: NOW))
    doc = watch_document(redis_client, settings, "15m", None, now_s=NOW)  # auto: the profile
    assert doc["reference"] == {"kind": "profile", "from": None, "to": None,
                                "requests": 2000, "available": True, "problem": None}  # fmt: skip
    by_name = {f["feature"]: f for f in doc["features"]}
    assert by_name["instances[1]"]["first_seen"] == ["marseille"]
    assert 0.25 < by_name["instances[1]"]["unseen_rate"] < 0.45
    assert by_name["age"]["out_of_range_rate"] > 0.15 and by_name["age"]["flagged"]
    assert doc["outputs"]["class_mix_reference"] == {}  # a profile has no answers


def test_settings_and_parameters_are_validated_with_clear_errors(
    redis_client: redis.Redis, prefix: str
) -> None:
    import pytest

    from analysis.watch_live import WatchError, parse_reference, parse_window
    from common.errors import ConfigError

    bad = [
        ({"watch": {"sample": 1.5}}, "watch.sample"),
        ({"watch": {"reference": "yesterday"}}, "watch.reference"),
        ({"watch": {"window": "soon"}}, "watch.window"),
        ({"features": [{"name": "a", "from": "$.x["}]}, "features[0].from"),
        ({"features": [{"name": "a", "from": "x[0]"}, {"name": "a", "from": "x[1]"}]},
         "features[1].name"),
        ({"features": [{"name": "a\x1b", "from": "x[0]"}]}, "features[0].name"),
    ]  # fmt: skip
    for raw, key in bad:
        with pytest.raises(ConfigError) as err:
            settings_from_mapping(raw, environ={})
        assert key in str(err.value)
    settings = watch_settings(prefix)
    for text in ("-1h", "40d", "soon"):
        with pytest.raises(WatchError):
            parse_window(text, settings)
    for text in ("yesterday", "2030-01-02T00:00Z/2030-01-01T00:00Z", "x/y"):
        with pytest.raises(WatchError):
            parse_reference(text, settings, profile_known=False)
    doc = watch_document(redis_client, settings, "1h", "pinned", now_s=NOW)
    assert doc["reference"]["available"] is False and "pin" in doc["reference"]["problem"]
    assert doc["requests"] == 0 and doc["features"] == [] and doc["timeline"] == []


def test_a_rollup_refuses_when_a_bucket_changed_after_it_was_read(
    redis_client: redis.Redis, prefix: str
) -> None:
    from analysis.watch_rollup import swap_hour

    settings = watch_settings(prefix)
    keys = Keys(prefix)
    hour0 = int(NOW - 10 * HOUR) - int(NOW - 10 * HOUR) % HOUR
    send(redis_client, keys, traffic(hour0 + 60, 50, shift=False, seed=11))
    worker = Worker(redis_client, settings, clock=lambda: NOW)
    fold_all(worker)
    starts = sorted(int(m) for m in redis_client.zrange(keys.watch_index(), 0, -1))
    stale = [redis_client.hgetall(keys.watch_bucket(s)) for s in starts]
    send(redis_client, keys, traffic(hour0 + 60, 5, shift=False, seed=12))  # a fold meanwhile
    fold_all(worker)
    assert swap_hour(redis_client, settings, hour0, starts, stale) == 0
    assert watch_document(redis_client, settings, "11h", "day", now_s=NOW)["requests"] == 55
    assert roll_up_watch(redis_client, settings, now_s=NOW) == 1  # the next round: all of it
    assert watch_document(redis_client, settings, "11h", "day", now_s=NOW)["requests"] == 55


def test_the_worker_loop_folds_the_watch_beside_pairs(
    redis_client: redis.Redis, prefix: str
) -> None:
    raw = {
        "redis": {"prefix": prefix}, "worker": {"block_ms": 10},
        "watch": {"sample": 0.2}, "candidates": [{"name": "v2", "url": "http://127.0.0.1:9"}],
    }  # fmt: skip
    settings = settings_from_mapping(raw, environ={})
    keys = Keys(prefix)
    send(redis_client, keys, traffic(NOW - 600, 120, shift=False, seed=13))
    worker = Worker(redis_client, settings, clock=lambda: NOW)
    done = sum(worker.step() for _ in range(5))
    assert done == 120 and worker.watched == 120 and keys.pairs(WATCH) not in worker.streams
    assert keys.pairs("v2") in worker.streams  # the candidate's stream is read as before
    assert redis_client.xpending(keys.pairs(WATCH), WATCH_GROUP)["pending"] == 0
    worker.heartbeat()
    health = json.loads(redis_client.get(keys.worker_health(worker.consumer)))
    assert health["watched"] == 120 and WATCH in health["lag"]


def test_gauge_labels_are_printable_bounded_and_dropped_when_gone() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from control.watch import WatchGauges

    registry = CollectorRegistry()
    gauges = WatchGauges(registry)
    hostile = "\x1b[31m" + "x" * 500 + '"}\n'
    doc = {
        "features": [{"feature": hostile, "drift": 0.4, "unseen_rate": 0.2, "flagged": True},
                     {"feature": "age", "drift": None, "unseen_rate": None, "flagged": False}],
        "flagged": [hostile], "requests": 10,
        "outputs": {"mean_confidence": 0.8}, "labels": {"accuracy": None},
        "reference": {"available": True},
    }  # fmt: skip
    gauges.update(doc)
    text = generate_latest(registry).decode()
    assert "\x1b" not in text and "x" * 65 not in text
    assert "shadowtrial_watch_flagged_features 1.0" in text
    assert 'shadowtrial_watch_feature_drift{feature="age"}' not in text  # nothing to compare
    gauges.update({**doc, "features": [], "flagged": []})
    text = generate_latest(registry).decode()
    assert "shadowtrial_watch_feature_flagged{" not in text


def test_labels_join_watched_answers_whichever_comes_first_and_once(
    redis_client: redis.Redis, prefix: str
) -> None:
    from analysis.watch_fold import record_watch_label

    settings = watch_settings(prefix)
    keys = Keys(prefix)
    body = {"instances": [[30.0, "a"]]}
    records = [record(NOW - 300, body, i, answer_body=answer("yes" if i % 4 else "no", 0.9))
               for i in range(40)]  # fmt: skip
    early = [record_watch_label(redis_client, keys, r.request_id, "yes", settings, NOW)
             for r in records[:20]]  # fmt: skip
    assert set(early) == {"pending"}  # labels first: they wait for the fold
    send(redis_client, keys, records)
    worker = Worker(redis_client, settings, clock=lambda: NOW)
    fold_all(worker)
    late = [record_watch_label(redis_client, keys, r.request_id, "yes", settings, NOW)
            for r in records[20:]]  # fmt: skip
    assert set(late) == {"joined"}
    again = record_watch_label(redis_client, keys, records[25].request_id, "no", settings, NOW)
    assert again == "pending"  # its answer was labelled already: counted once, not twice
    assert record_watch_label(redis_client, keys, "r", None, settings, NOW) == "none"
    labels = watch_document(redis_client, settings, "1h", "day", now_s=NOW)["labels"]
    assert labels["labelled"] == 40 and labels["accuracy"] == 30 / 40
    assert labels["per_class_recall"] == {"yes": 0.75}
    assert labels["low"] < 0.75 < labels["high"] and len(labels["over_time"]) == 1


def test_huge_names_and_values_are_cut_before_they_reach_redis(
    redis_client: redis.Redis, prefix: str
) -> None:
    settings = watch_settings(prefix)
    keys = Keys(prefix)
    body = {"instances": [{"k" * 50_000: "v" * 200_000, "city": "w" * 100_000}]}
    long_class = json.dumps({"predictions": [{"label": "c" * 100_000}]}).encode()
    send(redis_client, keys, [record(NOW - 60, body, 0, answer_body=long_class)])
    fold_all(Worker(redis_client, settings, clock=lambda: NOW))
    start = int(NOW - 60) - int(NOW - 60) % 60
    assert redis_client.memory_usage(keys.watch_bucket(start)) < 20_000
    doc = watch_document(redis_client, settings, "1h", "day", now_s=NOW)
    names = {f["feature"] for f in doc["features"]}
    assert ("k" * 127 + "…") in names and "city" in names
    assert all(len(k) <= 200 for k in doc["outputs"]["class_mix"])


def test_configured_features_read_paths_and_headers(redis_client: redis.Redis, prefix: str) -> None:
    raw = {
        "redis": {"prefix": prefix}, "watch": {"sample": 1.0},
        "features": [{"name": "country", "from": "$.meta.country"},
                     {"name": "tenant", "from": "header:X-Tenant"},
                     {"name": "score", "from": "x[1]"}],
    }  # fmt: skip
    settings = settings_from_mapping(raw, environ={})
    keys = Keys(prefix)
    oip = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                       "data": [1, 2, 3, 4]}]}  # fmt: skip
    bodies = [
        {**oip, "meta": {"country": "FR"}},
        {**oip, "meta": {"country": ["a", "list"]}},
        oip,
    ]
    recs = [record(NOW - 60, b, i) for i, b in enumerate(bodies)]
    recs[0].headers = {"x-tenant": "acme"}
    send(redis_client, keys, recs)
    fold_all(Worker(redis_client, settings, clock=lambda: NOW))
    (bucket,) = read_buckets(redis_client, settings, NOW - 120, NOW)
    features = bucket.states["i"].features
    assert set(features) == {"x[0]", "score", "country", "tenant"}  # x[1] renamed
    country, tenant = features["country"], features["tenant"]
    assert country.categories == {"FR": 2} and country.invalid == 2 and country.null == 2
    assert tenant.categories == {"acme": 2} and tenant.null == 4  # per row of 2-row requests
    assert features["score"].n_numeric == 6
