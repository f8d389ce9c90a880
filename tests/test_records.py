"""The pair record round-trips through Redis stream fields, binary bodies included."""

from __future__ import annotations

import orjson
import pytest
import redis

from common.keys import Keys
from common.records import SCHEMA_VERSION, PairRecord, RecordError


def _record() -> PairRecord:
    return PairRecord(
        request_id="r-1",
        candidate="v2",
        ts_ms=1_700_000_000_000,
        headers={"x-tenant": "acme"},
        request_body=b'{"inputs": []}',
        primary_status=200,
        primary_ms=3.5,
        primary_body=b"\x00\xff binary",
        candidate_outcome="timeout",
        candidate_error="no answer within 2000 ms",
    )


def test_round_trip_through_a_real_stream(redis_client: redis.Redis, prefix: str) -> None:
    record = _record()
    stream = Keys(prefix).pairs("v2")
    redis_client.xadd(stream, record.to_fields())
    [(_, fields)] = redis_client.xrange(stream)
    assert PairRecord.from_fields(fields) == record


def test_metadata_carries_the_version_and_no_bodies() -> None:
    meta = orjson.loads(_record().to_fields()[b"m"])
    assert meta["v"] == SCHEMA_VERSION
    assert "request_body" not in meta and "primary_body" not in meta


def test_unknown_version_is_refused() -> None:
    fields = _record().to_fields()
    fields[b"m"] = orjson.dumps({**orjson.loads(fields[b"m"]), "v": 99})
    with pytest.raises(RecordError, match="version"):
        PairRecord.from_fields(fields)
    with pytest.raises(RecordError):
        PairRecord.from_fields({b"m": b"not json"})


def test_candidate_keys_share_one_cluster_hash_tag() -> None:
    keys = Keys("st")
    tags = {k[k.index("{") : k.index("}") + 1] for k in (keys.pairs("a"), keys.bucket("a", 60))}
    assert tags == {"{st:a}"}


def _general(fields: dict) -> PairRecord:
    """The general decoding path alone (the fast one switched off)."""
    from common import records

    saved = records._from_usual_fields
    records._from_usual_fields = lambda cls, f: None
    try:
        return PairRecord.from_fields(fields)
    finally:
        records._from_usual_fields = saved


def _variants() -> list[dict]:
    """Entries the fast path takes, and some it must leave to the general one."""
    base = _record().to_fields()
    meta = orjson.loads(base[b"m"])
    reordered = dict(reversed(list(meta.items())))
    partial = {k: v for k, v in meta.items() if k not in ("method", "role", "served_by")}
    return [
        base,
        {**base, b"m": orjson.dumps({**meta, "primary_ms": 4})},  # an int where a float is
        {**base, b"m": orjson.dumps(reordered)},
        {**base, b"m": orjson.dumps(partial)},
        {k.decode(): v for k, v in base.items()},  # str field names
        {**base, b"q": "text body"},
        {**base, b"m": orjson.dumps({**meta, "v": True})},
    ]


@pytest.mark.parametrize("index", range(7))
def test_fast_decoding_gives_the_general_paths_record(index: int) -> None:
    fields = _variants()[index]
    fast = PairRecord.from_fields(fields)
    assert fast == _general(fields)
    assert vars(fast).keys() == vars(_general(fields)).keys()
    assert fast.primary_ms == _general(fields).primary_ms


@pytest.mark.parametrize(
    "change",
    [
        {"ts_ms": "soon"},
        {"primary_status": True},
        {"headers": {"x-tenant": 7}},
        {"headers": ["x"]},
        {"surprise": "field"},
        {"request_id": None},
    ],
)
def test_fast_decoding_refuses_what_the_general_path_refuses(change: dict) -> None:
    base = _record().to_fields()
    fields = {**base, b"m": orjson.dumps({**orjson.loads(base[b"m"]), **change})}
    with pytest.raises(RecordError):
        PairRecord.from_fields(fields)
