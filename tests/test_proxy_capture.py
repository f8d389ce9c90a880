"""Capture: batched XADDs, bounded spool while Redis is away, recording resumes by itself."""

from __future__ import annotations

import dataclasses
import time

import httpx
import redis
from proxy_upstreams import (
    JSON_BODY,
    Candidate,
    Primary,
    proxy_settings,
    running_proxy,
    wait_until,
)
from reliability_harness import RedisServer
from servers import free_port, serve_app

from common.keys import Keys
from common.records import PairRecord
from proxy.capture import (
    ENQUEUE_RUN_BYTES,
    ENQUEUE_RUN_RECORDS,
    Capture,
    HeaderCapture,
    _enqueue_groups,
    _Pending,
)
from proxy.metrics import Metrics


def test_redis_outage_spools_drops_and_resumes(own_redis: RedisServer) -> None:
    keys = Keys("outage")
    store = redis.Redis.from_url(own_redis.url)
    with serve_app(Primary()) as primary, serve_app(Candidate()) as cand:
        settings = proxy_settings(
            primary, [{"name": "c", "url": cand}], prefix="outage", spool_max=5
        )
        with running_proxy(settings, own_redis.url) as px, httpx.Client(timeout=10) as client:

            def send(n: int) -> None:
                for _ in range(n):
                    started = time.monotonic()
                    assert client.post(px.url + "/json", content=b"{}").content == JSON_BODY
                    assert time.monotonic() - started < 1.0  # never waits on Redis

            send(3)
            wait_until(lambda: px.captured("c", "recorded") == 3, what="3 recorded")
            own_redis.kill()
            send(12)
            wait_until(lambda: px.captured("c", "dropped") == 7, what="7 dropped")
            assert px.app.capture.depth == 5
            assert px.captured("c", "spooled") >= 5
            assert px.value("shadowtrial_capture_spool_depth") == 5
            assert px.value("shadowtrial_capture_redis_up") == 0
            ready = client.get(px.admin + "/readyz")
            assert ready.status_code == 200  # Redis down is reported, not a failure
            assert ready.json()["redis"]["up"] is False and ready.json()["redis"]["spool"] == 5
            own_redis.start()  # same port: the writer reconnects by itself
            wait_until(lambda: px.captured("c", "recorded") == 8, what="spool flushed")
            send(2)
            wait_until(lambda: px.captured("c", "recorded") == 10, what="new pairs recorded")
            assert px.value("shadowtrial_capture_redis_up") == 1
            assert px.app.capture.depth == 0
            px.check_accounting("c")
    records = [PairRecord.from_fields(f) for _, f in store.xrange(keys.pairs("c"))]
    assert len(records) == 7  # the 5 spooled during the outage, then the 2 sent after it
    assert all(r.primary_body == JSON_BODY for r in records)
    store.close()


def _record(i: int) -> PairRecord:
    return PairRecord(request_id=f"r{i}", candidate="c", ts_ms=i, request_body=b"{}")


async def test_capture_flushes_on_close_and_trims_to_max_pairs(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    settings = proxy_settings("http://127.0.0.1:1", prefix=prefix)
    settings = dataclasses.replace(
        settings, redis=dataclasses.replace(settings.redis, max_pairs=100)
    )
    metrics = Metrics()
    capture = Capture.from_settings(settings, redis_url, metrics)
    capture.start()
    for i in range(1000):
        capture.submit("c", _record(i))
    await capture.close()
    assert (
        metrics.value("shadowtrial_capture_total", {"candidate": "c", "outcome": "recorded"})
        == 1000
    )
    length = redis_client.xlen(Keys(prefix).pairs("c"))
    assert 100 <= length < 300  # MAXLEN ~ trims whole stream nodes, approximately
    last = redis_client.xrevrange(Keys(prefix).pairs("c"), count=1)[0][1]
    assert PairRecord.from_fields(last).request_id == "r999"


async def test_records_still_spooled_at_shutdown_are_dropped_and_counted() -> None:
    settings = proxy_settings("http://127.0.0.1:1", spool_max=10)
    metrics = Metrics()
    capture = Capture.from_settings(settings, f"redis://127.0.0.1:{free_port()}/0", metrics)
    capture.start()
    for i in range(3):
        capture.submit("c", _record(i))
    await capture.close(timeout_s=0.3)
    counts = {
        o: metrics.value("shadowtrial_capture_total", {"candidate": "c", "outcome": o})
        for o in ("recorded", "spooled", "dropped")
    }
    assert counts == {"recorded": 0, "spooled": 3, "dropped": 3}
    assert capture.redis_up is False and "Redis unavailable" in capture.last_error


def test_header_capture_keeps_named_headers_and_redacts_secrets() -> None:
    capture = HeaderCapture(["Content-Type", "Authorization", "X-Tenant"], ["authorization"])
    headers = [
        ("content-type", "application/json"),
        ("Authorization", "Bearer x"),
        ("x-tenant", "a"),
        ("x-tenant", "b"),
        ("x-other", "1"),
    ]
    assert capture.select(headers) == {
        "content-type": "application/json",
        "authorization": "[redacted]",
        "x-tenant": "a, b",
    }


async def test_request_records_are_queued_a_batch_per_call_and_counted_by_bucket(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """run = "dispatcher": a candidate's request records go to enqueue.lua a run of one
    stream and one bucket per call; a full queue refuses the newest, counted in their own
    bucket; pairs between them keep their order and their XADD."""
    settings = proxy_settings("http://127.0.0.1:1", prefix=prefix)
    settings = dataclasses.replace(
        settings, dispatch=dataclasses.replace(settings.dispatch, max_queue=4)
    )
    keys, metrics = Keys(prefix), Metrics()
    capture = Capture.from_settings(settings, redis_url, metrics)
    early, late = 1_000_000_000_000, 1_000_000_000_000 + 3_600_000  # two buckets
    submitted = [("d", early), ("d", early), ("c", early), ("d", early), ("d", late),
                 ("d", late), ("d", late)]  # fmt: skip
    for i, (candidate, ts_ms) in enumerate(submitted):
        record = dataclasses.replace(_record(i), candidate=candidate, ts_ms=ts_ms)
        if candidate == "d":
            capture.submit_request("d", record, [("content-type", "application/json")])
        else:
            capture.submit("c", record)
    groups = _enqueue_groups(list(capture._pending), capture.counts.bucket)
    assert [len(g) for g in groups] == [2, 1, 1, 3]  # d d | c | d | d d d
    capture.start()
    await capture.close()
    queued = redis_client.xrange(keys.requests("d"))
    assert [PairRecord.from_fields(f).request_id for _, f in queued] == ["r0", "r1", "r3", "r4"]
    assert redis_client.xlen(keys.pairs("c")) == 1
    expected = {
        early: {b"dispatch:queued": b"3"},
        late: {b"dispatch:queued": b"1", b"dispatch:overflow": b"2"},
    }
    for ts_ms, want in expected.items():
        start = capture.counts.bucket(ts_ms)
        fields = redis_client.hgetall(keys.bucket("d", start))
        assert {k: v for k, v in fields.items() if k.startswith(b"dispatch:")} == want
    outcome = {"candidate": "d", "outcome": "dropped"}
    assert metrics.value("shadowtrial_capture_total", outcome) == 2


def test_an_enqueue_run_is_bounded_in_records_and_bytes() -> None:
    """A script call blocks Redis and holds its arguments twice: runs close at
    ENQUEUE_RUN_RECORDS records or ENQUEUE_RUN_BYTES of fields (a lone larger record still
    goes, alone)."""

    def items(n: int, size: int) -> list[_Pending]:
        out = []
        for _ in range(n):
            item = _Pending("d", "s", {b"q": b"x" * size}, 0)
            item.queue = 10
            out.append(item)
        return out

    def bucket(ts_ms: int) -> int:
        return 0

    small = _enqueue_groups(items(ENQUEUE_RUN_RECORDS + 6, 10), bucket)
    assert [len(g) for g in small] == [ENQUEUE_RUN_RECORDS, 6]
    big = _enqueue_groups(items(3, ENQUEUE_RUN_BYTES // 2 + 1), bucket)
    assert [len(g) for g in big] == [1, 1, 1]
    huge = _enqueue_groups(items(2, 2 * ENQUEUE_RUN_BYTES), bucket)
    assert [len(g) for g in huge] == [1, 1]
