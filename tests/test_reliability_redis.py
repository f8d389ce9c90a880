"""Redis killed (SIGKILL) and restarted under steady load, in front of a real `serve`
process: no client request fails or changes, pairs wait in the spool up to
proxy.spool_max and are counted as dropped beyond it, and recording resumes by itself.

The test's redis-server keeps an append-only file fsynced on every write, so what it
acknowledged before the kill is still there after the restart and the stream can be
compared with the proxy's counters record for record.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from reliability_harness import (
    INFER,
    LoadResult,
    Metrics,
    RedisServer,
    model_servers,
    open_loop,
    redis_server,
    serve,
    write_config,
)
from reliability_servers import ANSWER

from common.keys import Keys
from common.records import PairRecord

RATE = 100
LOAD_S = 9.0
DOWN_AT_S, UP_AT_S = 2.0, 5.0
SPOOL_MAX = 150


@pytest.mark.slow  # ~15 s: nine seconds of load with a three-second outage in it
def test_redis_killed_and_restarted_under_load(tmp_path: Path) -> None:
    prefix = "outage"
    with (
        redis_server(tmp_path, persist=True) as store,
        model_servers(primary="ok", candidate="ok") as models,
    ):
        config = write_config(
            tmp_path / "shadowtrial.toml", models.urls["primary"], store.url, prefix,
            [{"name": "c", "url": models.urls["candidate"]}], spool_max=SPOOL_MAX,
        )  # fmt: skip
        with serve(config) as proxy:
            result: list[LoadResult] = []
            load = threading.Thread(
                target=lambda: result.append(
                    open_loop(proxy.url + INFER, RATE, LOAD_S, (200, ANSWER))
                )
            )
            started = time.monotonic()
            load.start()
            depths, recorded_before = _watch_outage(proxy.admin, store, started)
            load.join(timeout=LOAD_S + 30)
            metrics = _settled(proxy.admin)
            ready = httpx.get(proxy.admin + "/readyz", timeout=10).json()
        client = redis.Redis.from_url(store.url)
        entries = client.xrange(Keys(prefix).pairs("c"))
        client.close()
    (run,) = result
    assert run.sent == RATE * LOAD_S
    assert run.failed == 0 and run.mismatched == 0, run.examples
    assert run.answered == run.sent  # no client request failed during the outage
    value = {
        o: metrics.get_value("shadowtrial_capture_total", candidate="c", outcome=o)
        for o in ("recorded", "spooled", "dropped")
    }
    sampled = metrics.get_value("shadowtrial_mirror_sampled_total", candidate="c")
    print("redis outage:", value, "sampled", sampled, "max spool", max(depths))
    assert max(depths) <= SPOOL_MAX  # the spool stayed within its bound
    assert value["spooled"] >= SPOOL_MAX and value["dropped"] > 0
    assert sampled == run.sent == value["recorded"] + value["dropped"]
    assert value["recorded"] > recorded_before  # recording resumed by itself
    assert metrics.get_value("shadowtrial_capture_redis_up") == 1 and ready["redis"]["up"]
    ids = [PairRecord.from_fields(fields).request_id for _, fields in entries]
    assert len(set(ids)) == value["recorded"]  # every pair counted as recorded is there
    assert len(ids) == len(set(ids))  # and none is there twice


def _watch_outage(admin: str, store: RedisServer, started: float) -> tuple[list[float], float]:
    """Kill Redis at DOWN_AT_S and restart it at UP_AT_S; the spool depths seen while it
    was down, and the pairs recorded when it went down."""
    depths: list[float] = []

    def metrics() -> Metrics:
        return Metrics.parse(httpx.get(admin + "/metrics", timeout=10).text)

    while time.monotonic() - started < DOWN_AT_S:
        time.sleep(0.05)
    recorded_before = metrics().get_value("shadowtrial_capture_total", candidate="c",
                                          outcome="recorded")  # fmt: skip
    store.kill()
    while time.monotonic() - started < UP_AT_S:
        depths.append(metrics().get_value("shadowtrial_capture_spool_depth"))
        time.sleep(0.1)
    store.start()
    return depths, recorded_before


def _settled(admin: str, timeout_s: float = 20.0) -> Metrics:
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = Metrics.parse(httpx.get(admin + "/metrics", timeout=10).text)
        handed = metrics.total("shadowtrial_mirror_outcomes_total", candidate="c")
        stored = metrics.get_value(
            "shadowtrial_capture_total", candidate="c", outcome="recorded"
        ) + metrics.get_value("shadowtrial_capture_total", candidate="c", outcome="dropped")
        if metrics.get_value("shadowtrial_mirrors_in_flight", candidate="c") == 0 and (
            handed == stored and metrics.get_value("shadowtrial_capture_spool_depth") == 0
        ):
            return metrics
        assert time.monotonic() < deadline, "capture did not settle"
        time.sleep(0.1)
