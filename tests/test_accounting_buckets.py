"""Every sampled mirror is accounted for in the report: proxies add what became of the
mirrors that left no pair (shed, too large, no primary answer, dropped by capture) to the
worker's bucket hashes, so that, once nothing is in flight,

    sampled = pairs + shed + dropped.{too_large, primary_failed, cancelled, capture}
              + records.trimmed + records.bad

Real proxy, real candidate and primary servers, real Redis, the real worker and report."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis
from proxy_upstreams import JSON_BODY, Candidate, Gate, Primary, running_proxy, wait_until
from reliability_harness import RedisServer
from servers import serve_app

from analysis.apply import roll_up
from analysis.report import build_report
from analysis.worker import Worker
from common.keys import FIELD_SAMPLED, FIELD_SHED, Keys
from common.settings import Settings, settings_from_mapping
from proxy.capture import Capture
from proxy.metrics import Metrics

HOUR = 3600


def _settings(primary: str, candidate: str, prefix: str, **proxy: Any) -> Settings:
    raw = {
        "proxy": {"primary": primary, "mirror_paths": ["**"], **proxy},
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "candidates": [{"name": "c", "url": candidate, "timeout_ms": 30_000}],
    }
    return settings_from_mapping(raw, environ={})


def _accounting(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("pairs", "sampled", "shed", "dropped", "pending")}


def _settled_report(
    client: redis.Redis, settings: Settings, now: float | None = None
) -> dict[str, Any]:
    """Drain the worker and read the report until nothing is pending (counts are written
    at most once a second)."""
    worker = Worker(client, settings)
    found: dict[str, Any] = {}

    def settled() -> bool:
        worker.discover()
        while worker.read_new(block=False):
            pass
        found.update(build_report(client, Keys(settings.redis.prefix), settings, "c", HOUR, now))
        return found["pending"] == 0

    wait_until(settled, timeout_s=10, what="every sampled mirror accounted for")
    return found


def _identity_holds(report: dict[str, Any]) -> bool:
    ended = report["pairs"] + report["shed"] + sum(report["dropped"].values())
    ended += report["records"]["trimmed"] + report["records"]["bad"]
    return report["sampled"] == ended


def test_report_accounts_for_shed_too_large_and_failed_mirrors(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    gate = Gate()
    with serve_app(Primary()) as primary, serve_app(Candidate(gate=gate)) as cand:
        settings = _settings(
            primary, cand, prefix, mirror_concurrency=3, max_capture_bytes=1000,
            primary_timeout_ms=300,
        )  # fmt: skip
        try:
            with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
                # 1 slot: the primary times out (504), so its mirror ends without a pair
                assert http.post(px.url + "/slow/2000", content=b"{}").status_code == 504
                for _ in range(6):  # 2 slots left: 2 held by the gated candidate, 4 shed
                    assert http.post(px.url + "/json", content=b"{}").content == JSON_BODY
                big = http.post(px.url + "/echo", content=b"x" * 5000)  # forwarded, not mirrored
                assert big.status_code == 200
                assert px.outcome("c", "shed") == 4
                gate.open()
                wait_until(lambda: px.settled("c"), what="mirrors to finish")
                px.check_accounting("c")  # /metrics agrees with itself
                report = _settled_report(redis_client, settings)
        finally:
            gate.open()
    assert _accounting(report) == {
        "pairs": 2,
        "sampled": 8,
        "shed": 4,
        "dropped": {"too_large": 1, "primary_failed": 1, "cancelled": 0, "capture": 0},
        "pending": 0,
    }
    assert _identity_holds(report)
    assert report["sampled"] == px.sampled("c")  # the buckets and /metrics agree

    # An hourly rollup merges the proxies' fields with the worker's: the same report.
    later = time.time() + 2 * HOUR
    settings_w = settings.worker
    moved = roll_up(
        redis_client, Keys(prefix), "c", now_s=later, bucket_seconds=settings_w.bucket_seconds,
        after_s=0, ttl_s=settings_w.retention_hours * HOUR,
    )  # fmt: skip
    assert moved >= 1
    assert not [m for m in redis_client.zrange(Keys(prefix).bucket_index("c"), 0, -1)
                if not m.startswith(b"h")]  # fmt: skip
    rolled = build_report(redis_client, Keys(prefix), settings, "c", 3 * HOUR, now=later)
    assert _accounting(rolled) == _accounting(report)


async def test_counts_only_buckets_are_indexed_found_and_rolled_up(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """A bucket with nothing but mirror counts (everything shed) is still in the window."""
    settings = _settings("http://127.0.0.1:1", "http://127.0.0.1:2", prefix)
    capture = Capture.from_settings(settings, redis_url, Metrics())
    capture.start()
    old_ms = int((time.time() - 3 * HOUR) * 1000)
    for _ in range(5):
        capture.count("c", FIELD_SAMPLED, old_ms)
    for _ in range(4):
        capture.count("c", FIELD_SHED, old_ms)
    await capture.close()
    keys = Keys(prefix)
    report = build_report(redis_client, keys, settings, "c", 4 * HOUR)
    assert (report["sampled"], report["shed"], report["pairs"], report["pending"]) == (5, 4, 0, 1)
    assert redis_client.ttl(keys.bucket("c", report["timeline"][0]["t"])) > 0  # expires
    moved = roll_up(
        redis_client, keys, "c", now_s=time.time(), bucket_seconds=60, after_s=HOUR, ttl_s=HOUR
    )
    assert moved == 1
    again = build_report(redis_client, keys, settings, "c", 4 * HOUR)
    assert (again["sampled"], again["shed"]) == (5, 4)
    assert again["timeline"][0]["hour"] is True


def test_counts_and_capture_drops_survive_a_redis_outage(own_redis: RedisServer) -> None:
    """Counted while Redis is down, written when it returns: the spool's drops included."""
    prefix = "outage"
    with serve_app(Primary()) as primary, serve_app(Candidate()) as cand:
        settings = _settings(primary, cand, prefix, spool_max=3)
        with running_proxy(settings, own_redis.url) as px, httpx.Client(timeout=10) as http:
            own_redis.kill()
            for _ in range(8):
                assert http.post(px.url + "/json", content=b"{}").content == JSON_BODY
            wait_until(lambda: px.captured("c", "dropped") == 5, what="5 dropped")
            assert sum(f for c in px.app.capture.counts.waiting.values() for f in c.values())
            own_redis.start()  # empty, on the same port: the writer reconnects by itself
            wait_until(lambda: px.captured("c", "recorded") == 3, what="spool flushed")
            store = redis.Redis.from_url(own_redis.url)
            try:
                report = _settled_report(store, settings)
            finally:
                store.close()
    assert _accounting(report) == {
        "pairs": 3,
        "sampled": 8,
        "shed": 0,
        "dropped": {"too_large": 0, "primary_failed": 0, "cancelled": 0, "capture": 5},
        "pending": 0,
    }
    assert _identity_holds(report)
