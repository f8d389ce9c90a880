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
