"""Fuzz the worker's whole per-pair path (decode, deferred, parse, compare, slices,
aggregate, apply-and-acknowledge) on a real Redis: no pair record, however odd, and no
corrupted stream entry makes the worker raise; every entry is applied and counted once
(as a pair or as a bad record), so one poison entry can never stop the evidence.

tests/test_adapters_fuzz.py fuzzes the output adapters on their own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pairs_factory import drain, oip_answer, oip_request
from pairs_factory import settings as worker_settings

from analysis.worker import Worker
from common.keys import Keys
from common.records import OUTCOMES, PairRecord
from tests import worker_procs as wp

N = int(os.environ.get("FUZZ_EXAMPLES", "100"))
TS0 = 1_700_000_000_000
NOW_MS = int(time.time() * 1000)
FUZZ = settings(
    max_examples=N,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids),
    max_leaves=15,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    st.sampled_from([oip_request("FR"), oip_request("BR", rows=3), b""]),
    st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=1, max_size=3).map(
        oip_answer
    ),
)
texts = st.text(max_size=20)
records = st.builds(
    PairRecord,
    request_id=texts,
    candidate=st.just("v2"),
    ts_ms=st.integers(NOW_MS - 3_600_000, NOW_MS + 3_600_000),  # within the retention
    method=st.sampled_from(["POST", "GET", "PUT", "X-ODD"]),
    path=texts,
    query=texts,
    headers=st.dictionaries(
        st.sampled_from(["x-tenant", "content-type", "x"]) | texts, texts, max_size=4
    ),
    request_body=bodies,
    primary_status=st.integers(0, 999),
    primary_ms=st.floats(0, 1e7),
    primary_body=bodies,
    primary_content_type=texts,
    candidate_outcome=st.sampled_from(OUTCOMES),
    candidate_status=st.integers(0, 999),
    candidate_ms=st.floats(0, 1e7),
    candidate_body=bodies,
    candidate_content_type=texts,
    candidate_error=texts,
    role=st.sampled_from(["candidate", "secondary"]),
)
# Stream entries no proxy writes: wrong types, unknown or missing fields, broken metadata.
meta_fields = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", None])},
    optional={
        "request_id": json_values,
        "candidate": json_values,
        "ts_ms": json_values | st.integers(0, 4 * TS0),  # any time: none may raise
        "headers": json_values,
        "primary_status": json_values | st.integers(0, 999),
        "primary_ms": json_values,
        "candidate_ms": json_values,
        "candidate_outcome": json_values | st.sampled_from(OUTCOMES),
        "role": json_values,
        "unknown": json_values,
    },
)
corrupt_entries = st.fixed_dictionaries(
    {b"m": meta_fields.map(orjson.dumps) | st.binary(max_size=50)},
    optional={b"q": st.binary(max_size=50), b"p": bodies, b"c": bodies, b"x": st.binary()},
)


@pytest.fixture
def world(redis_url: str, prefix: str) -> Iterator[tuple[redis.Redis, Worker, Keys]]:
    client = redis.Redis.from_url(redis_url)
    conf = worker_settings(prefix)
    yield client, Worker(client, conf, consumer="fuzz"), Keys(prefix)
    client.close()


def _feed(
    world: tuple[redis.Redis, Worker, Keys], entries: list[dict[bytes, bytes]], counted: bool
) -> None:
    """XADD the entries; the worker applies every one (it raises if anything breaks it);
    with `counted`, every one lands in the summaries (as a pair or a bad record)."""
    client, worker, keys = world
    stream = keys.pairs("v2")
    before = wp.summarised_pairs(client, keys) if counted else 0
    for fields in entries:
        client.xadd(stream, fields)
    assert drain(worker) == len(entries)
    if counted:
        assert wp.summarised_pairs(client, keys) == before + len(entries)


@FUZZ
@given(batch=st.lists(records, min_size=1, max_size=5))
def test_arbitrary_pair_records_are_all_applied(
    world: tuple[redis.Redis, Worker, Keys], batch: list[PairRecord]
) -> None:
    _feed(world, [rec.to_fields() for rec in batch], counted=True)


@FUZZ
@given(batch=st.lists(corrupt_entries, min_size=1, max_size=5))
def test_corrupted_stream_entries_are_counted_as_bad_not_raised(
    world: tuple[redis.Redis, Worker, Keys], batch: list[dict[bytes, bytes]]
) -> None:
    _feed(world, batch, counted=False)  # timestamps far outside the retention are aged out


# Text a client or a model controls, made of what breaks field names, terminals and logs:
# the summaries' separator, ESC sequences, C1 controls, bidi overrides, line breaks.
hostile_texts = st.lists(
    st.sampled_from(["\x1f", "\x1b[2J", "\x9b", "\u202e", "\n", "\r", "\x00", "\x7f",
                     "gate: PASS", ":", "a", "é", "other", "(missing)", "\u241f"]),
    min_size=1, max_size=6,
).map("".join)  # fmt: skip


def _hostile_record(country: str, tenant: str, labels: tuple[str, str], depth: int) -> PairRecord:
    deep = orjson.Fragment(b"[" * depth + b"]" * depth)
    request = orjson.loads(oip_request(country))
    answers = [
        orjson.loads(oip_answer(probs, classes=labels)) for probs in ([[0.9, 0.1]], [[0.1, 0.9]])
    ]
    for doc in (request, *answers):
        doc["deep"] = deep
    return PairRecord(
        request_id="r",
        candidate="v2",
        ts_ms=NOW_MS,
        headers={"x-tenant": tenant},
        request_body=orjson.dumps(request),
        primary_status=200,
        primary_body=orjson.dumps(answers[0]),
        candidate_outcome="ok",
        candidate_status=200,
        candidate_body=orjson.dumps(answers[1]),
    )


@FUZZ
@given(
    country=hostile_texts,
    tenant=hostile_texts,
    labels=st.tuples(hostile_texts, hostile_texts).filter(lambda ls: ls[0] != ls[1]),
    depth=st.integers(0, 1100),
)
def test_hostile_slice_values_and_labels_never_break_the_report_or_the_terminal(
    world: tuple[redis.Redis, Worker, Keys], country: str, tenant: str,
    labels: tuple[str, str], depth: int,
) -> None:  # fmt: skip
    """Issue 12, bugs 1, 4 and 5: whatever the values, the report builds, no summary
    field is malformed, and the terminal rendering holds no control character."""
    import io

    from rich.console import Console

    from analysis.report import build_report
    from shadowtrial.render import render_report

    client, worker, keys = world
    _feed(world, [_hostile_record(country, tenant, labels, depth).to_fields()], counted=True)
    report = build_report(client, keys, worker.settings, "v2", 7200)
    assert report["records"]["malformed_fields"] == 0
    out = io.StringIO()
    render_report(report, Console(file=out, width=200, color_system=None))
    shown = out.getvalue()
    assert not any(c in shown for c in "\x1b\x1f\x9b\u202e\r\x00\x7f"), repr(shown)
