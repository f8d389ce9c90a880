"""Golden counters: the exact Redis state the worker writes for a seeded set of pairs.

The worker's speed work (faster decode, cached names, adapter plans, fewer Lua arguments)
must not change a single number. This test runs a real worker on real Redis over
worker_bench's realistic pairs plus hostile entries (bad metadata, wrong types, NaN and
huge numbers, control characters, deep nesting, other protocols, row-count mismatches,
trimmed ids, labels before and after their pairs) and compares every bucket counter,
sample, join entry and admitted value with tests/fixtures/worker_golden.json.

A deliberate change of what the worker counts regenerates the fixture:
    SHADOWTRIAL_GOLDEN_REGEN=1 pytest tests/test_worker_golden.py
and the diff of the fixture is then reviewed like code.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from analysis.feedback import record_feedback
from analysis.worker import Worker
from benchmarks.worker_bench import T0_MS, bench_settings, make_pairs
from common.keys import WORKER_GROUP, Keys
from common.records import PairRecord
from common.settings import settings_from_mapping

FIXTURE = Path(__file__).parent / "fixtures" / "worker_golden.json"
REGEN = os.environ.get("SHADOWTRIAL_GOLDEN_REGEN") == "1"
NOW_S = T0_MS / 1000 + 3700  # a fixed clock: every expiry and join generation repeats
N_REALISTIC = 400


def _meta(**changes: Any) -> dict[str, Any]:
    rec = PairRecord(request_id="h", candidate="v2", ts_ms=T0_MS + 5000)
    meta = orjson.loads(rec.to_fields()[b"m"])
    meta.update(changes)
    return meta


def _entry(
    meta: Any, q: bytes = b"", p: bytes = b"", c: bytes = b"", raw_meta: bytes | None = None
) -> dict[bytes, bytes]:
    m = raw_meta if raw_meta is not None else orjson.dumps(meta)
    return {b"m": m, b"q": q, b"p": p, b"c": c}


def _oip(labels: list[Any], probs: list[Any], rows: int = 1) -> bytes:
    return orjson.dumps(
        {
            "outputs": [
                {"name": "predict", "shape": [rows, 1], "datatype": "BYTES", "data": labels},
                {"name": "predict_proba", "shape": [rows, 3], "datatype": "FP64", "data": probs},
            ]
        }
    )


def _request(country: Any, rows: int = 1) -> bytes:
    features = {
        "name": "features",
        "shape": [rows, 4],
        "datatype": "FP32",
        "data": [1.0] * 4 * rows,
    }
    countries = {
        "name": "country",
        "shape": [rows, 1],
        "datatype": "BYTES",
        "data": [country] * rows,
    }
    return orjson.dumps({"inputs": [features, countries]})


def hostile_entries() -> list[dict[bytes, bytes]]:
    """Entries a worker must count (as bad, unparseable, errors or pairs), never fail on."""
    good_p = _oip(["setosa"], [0.8, 0.1, 0.1])
    good_c = _oip(["versicolor"], [0.2, 0.7, 0.1])
    req = _request("FR")
    ok = _meta(request_id="h-ok", primary_status=200, candidate_status=200, primary_ms=3.5)
    nested = b"[" * 5000 + b"]" * 5000
    out = [
        _entry(None, raw_meta=b"{not json"),
        _entry(None, raw_meta=b"[1, 2, 3]"),
        _entry(_meta(v=99)),
        _entry(_meta(ts_ms="soon")),
        _entry(_meta(primary_status=True)),
        _entry(_meta(headers={"x-tenant": 7})),
        _entry(_meta(surprise="field")),
        {b"q": req, b"p": good_p},  # no metadata at all
        _entry(ok, req, good_p, good_c),
        _entry({**ok, "request_id": "h-same"}, req, good_p, good_p),
        _entry({**ok, "request_id": "h-cgarbage"}, req, good_p, b"\x00\xff not json"),
        _entry({**ok, "request_id": "h-pgarbage"}, req, b"<html>oops</html>", good_c),
        _entry(
            {**ok, "request_id": "h-nan"},
            req,
            good_p,
            b'{"outputs":[{"name":"predict_proba","shape":[1,3],"datatype":"FP64",'
            b'"data":[NaN,0.5,0.5]}]}',
        ),
        _entry(
            {**ok, "request_id": "h-huge"},
            req,
            good_p,
            b'{"outputs":[{"name":"predict_proba","shape":[1,3],"datatype":"FP64",'
            b'"data":[1e400,0.5,-1e308]}]}',
        ),
        _entry({**ok, "request_id": "h-strprob"}, req, good_p, _oip(["setosa"], ["a", {}, None])),
        _entry({**ok, "request_id": "h-labeldict"}, req, good_p, _oip([{"x": 1}], [0.3, 0.3, 0.4])),
        _entry(
            {**ok, "request_id": "h-rows"},
            req,
            good_p,
            _oip(["setosa", "virginica"], [0.8, 0.1, 0.1, 0.1, 0.1, 0.8], rows=2),
        ),
        _entry(
            {**ok, "request_id": "h-shape"},
            req,
            good_p,
            orjson.dumps(
                {
                    "outputs": [
                        {
                            "name": "predict_proba",
                            "shape": [5, 9],
                            "datatype": "FP64",
                            "data": [0.5],
                        }
                    ]
                }
            ),
        ),
        _entry(
            {**ok, "request_id": "h-ctrl", "headers": {"x-tenant": "\x1b[31mred\x00\u202e"}},
            _request("\x07bell\r\nX-Injected: 1"),
            good_p,
            good_c,
        ),
        _entry(
            {**ok, "request_id": "h-long", "headers": {"x-tenant": "t" * 3000}},
            _request("C" * 3000),
            good_p,
            good_c,
        ),
        _entry(
            {**ok, "request_id": "h-country-types"}, _request({"nested": [1, 2]}), good_p, good_c
        ),
        _entry({**ok, "request_id": "h-nested"}, nested, good_p, good_c),
        _entry({**ok, "request_id": "h-nested-answer"}, req, good_p, nested),
        _entry({**ok, "request_id": "h-p500", "primary_status": 500}, req, b"boom", good_c),
        _entry(
            {
                **ok,
                "request_id": "h-timeout",
                "candidate_outcome": "timeout",
                "candidate_status": 0,
                "candidate_ms": 2000.0,
            },
            req,
            good_p,
            b"",
        ),
        _entry(
            {
                **ok,
                "request_id": "h-http",
                "candidate_outcome": "http_error",
                "candidate_status": 503,
            },
            req,
            good_p,
            b"unavailable",
        ),
        _entry(
            {
                **ok,
                "request_id": "h-err",
                "candidate_outcome": "error",
                "candidate_error": "refused\x00",
            },
            req,
            good_p,
            b"",
        ),
        _entry(
            {**ok, "request_id": "h-tfs"},
            req,
            orjson.dumps({"predictions": [[0.1, 0.9]]}),
            orjson.dumps({"predictions": [[0.6, 0.4]]}),
        ),
        _entry(
            {**ok, "request_id": "h-tfs-labels"},
            req,
            orjson.dumps({"predictions": ["cat"]}),
            orjson.dumps({"predictions": ["dog"]}),
        ),
        _entry(
            {**ok, "request_id": "h-openai"},
            req,
            orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "yes"}}]}),
            orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "no"}}]}),
        ),
        _entry(
            {**ok, "request_id": "h-regress"},
            req,
            orjson.dumps({"predictions": [1.5]}),
            orjson.dumps({"predictions": [1.75]}),
        ),
        _entry({**ok, "request_id": "h-empty"}, b"", b"", b""),
        _entry(
            {**ok, "request_id": "h-neg-ms", "primary_ms": -5.0, "candidate_ms": 1e300},
            req,
            good_p,
            good_c,
        ),
        _entry({**ok, "request_id": "h-old", "ts_ms": T0_MS - 86_400_000}, req, good_p, good_c),
        _entry(
            {**ok, "request_id": "h-int-ms", "primary_ms": 4, "candidate_ms": 6},
            req,
            good_p,
            good_c,
        ),
        _entry({**ok, "request_id": "h-secondary", "role": "secondary"}, req, good_p, good_c),
        _entry({**ok, "request_id": "h-canary", "served_by": "v2"}, req, good_p, good_c),
        _entry({**ok, "request_id": "req-00000030"}, req, good_p, good_c),  # an id reused
        _entry({**ok, "request_id": "h-missing-slice"}, b'{"inputs": []}', good_p, good_c),
    ]
    return out


def golden_settings(prefix: str, url: str) -> Any:
    """worker_bench's settings, with small batches (several per run) and quick takeover."""
    raw = {
        "redis": {"url": url, "prefix": prefix},
        "worker": {"batch": 97, "block_ms": 10, "claim_idle_ms": 100, "label_join_rows": 3},
        "candidates": [{"name": "v2", "url": "http://127.0.0.1:9"}],
        "slices": [
            {"name": "country", "from": "$.inputs[1].data[*]"},
            {"name": "tenant", "from": "header:x-tenant"},
        ],
    }
    assert bench_settings(prefix, url).slices  # the same slices as the benchmark
    return settings_from_mapping(raw, environ={})


def run_golden(client: redis.Redis, prefix: str, url: str) -> dict[str, Any]:
    """Write the seeded entries, run a worker over them, return the canonical state."""
    settings = golden_settings(prefix, url)
    keys = Keys(prefix)
    stream = keys.pairs("v2")
    entries = [_in_few_buckets(f, i) for i, f in enumerate(make_pairs(N_REALISTIC, seed=14))]
    hostile = hostile_entries()
    for i, fields in enumerate(hostile):  # spread among the realistic ones
        entries.insert(7 + i * 13, fields)
    for i, fields in enumerate(entries):
        client.xadd(stream, fields, id=f"{T0_MS + i}-0")
    worker = Worker(client, settings, consumer="golden", clock=lambda: NOW_S)
    worker.discover()
    # labels that come first (they wait for their pairs) ...
    for rid, label in (("req-00000003", "setosa"), ("req-00000010", "virginica"), ("h-ok", "x")):
        record_feedback(client, keys, rid, label, settings.worker, now_s=NOW_S)
    # ... entries another consumer read, then died; two are trimmed before the takeover
    taken = client.xreadgroup(WORKER_GROUP, "ghost", {stream: ">"}, count=5)
    ghost_ids = [eid for eid, _ in taken[0][1]]
    client.xdel(stream, ghost_ids[1], ghost_ids[3])
    time.sleep(0.25)  # idle longer than claim_idle_ms
    applied = worker.claim_idle()
    while done := worker.read_new(block=False):
        applied += done
    # ... and labels that come after their pairs
    for rid, label in (("req-00000020", "setosa"), ("req-00000021", "versicolor")):
        record_feedback(client, keys, rid, label, settings.worker, now_s=NOW_S)
    assert client.xpending(stream, WORKER_GROUP)["pending"] == 0
    return {"applied": applied, "state": dump_state(client, prefix)}


def _in_few_buckets(fields: dict[bytes, bytes], i: int) -> dict[bytes, bytes]:
    """The benchmark's pair i, two a second: 5 buckets instead of 60 keep the fixture small."""
    meta = orjson.loads(fields[b"m"])
    meta["ts_ms"] = T0_MS + i * 500
    return {**fields, b"m": orjson.dumps(meta)}


SKIPPED = (":pairs", ":workers", ":worker:")  # the stream itself, liveness keys


def dump_state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under the prefix (but the stream and liveness keys), canonical."""
    out: dict[str, Any] = {}
    for raw in sorted(client.scan_iter(match=f"{prefix}:*", count=1000)):
        key = raw.decode()
        name = key.replace(prefix, "P")
        if any(s in name for s in SKIPPED):
            continue
        kind = client.type(raw).decode()
        if kind == "hash":
            value: Any = {_text(k): _text(v) for k, v in sorted(client.hgetall(raw).items())}
        elif kind == "zset":
            value = [[_text(m), s] for m, s in client.zrange(raw, 0, -1, withscores=True)]
        elif kind == "list":
            value = [_text(v) for v in client.lrange(raw, 0, -1)]
        elif kind == "set":
            value = sorted(_text(v) for v in client.smembers(raw))
        elif kind == "string":
            value = _text(client.get(raw))
        else:
            value = kind
        out[name] = value
    return out


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def test_worker_counts_exactly_the_golden_numbers(redis_client: redis.Redis, prefix: str,
                                                  redis_url: str) -> None:  # fmt: skip
    got = run_golden(redis_client, prefix, redis_url)
    if REGEN:
        FIXTURE.write_bytes(orjson.dumps(got, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        pytest.skip("fixture regenerated: review its diff")
    expected = orjson.loads(FIXTURE.read_bytes())
    assert got["applied"] == expected["applied"]
    assert sorted(got["state"]) == sorted(expected["state"])
    for key, value in expected["state"].items():
        assert got["state"][key] == value, key


def test_golden_set_exercises_the_hostile_paths() -> None:
    """The fixture is only as good as what it covers: bad records, every failure kind,
    unparseable answers, contract examples, OTHER-free admission, joins both ways."""
    state = orjson.loads(FIXTURE.read_bytes())["state"]
    totals: dict[str, float] = {}
    for key, fields in state.items():
        if ":bucket:" in key:
            for f, v in fields.items():
                totals[f] = totals.get(f, 0) + float(v)
    failures = ("err:contract", "err:unparseable", "err:timeout", "err:http_error", "err:error")
    for counter in ("bad", "records", "rows", *failures, "err:primary", "ld", "label_dup"):
        assert totals.get(counter, 0) > 0, counter
    lists = {k.rsplit(":", 1)[-1]: v for k, v in state.items() if ":samples:" in k}
    for kind in ("unparseable", "contract", "divergent", "recent"):
        assert lists.get(kind), kind
