"""Redis killed (SIGKILL) and restarted under steady load, in front of a real `serve`
process: no client request fails or changes, pairs wait in the spool up to
proxy.spool_max and are counted as dropped beyond it, and recording resumes by itself.

The test's redis-server keeps an append-only file fsynced on every write, so what it
acknowledged before the kill is still there after the restart and the stream can be
compared with the proxy's counters record for record.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from proxy_upstreams import proxy_settings
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
from proxy.capture import Capture
from proxy.metrics import Metrics as ProxyMetrics

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


class LostAnswers:
    """A TCP relay to Redis that, once armed, passes the next request holding an XADD to
    Redis and then cuts the connection instead of passing the answer back: the records
    are written, and the proxy cannot know it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = threading.Event()
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.armed.is_set() and b"XADD" in data:
                    self.armed.clear()
                    client.shutdown(socket.SHUT_RDWR)  # the proxy sees a dead link, and ...
                    server.sendall(data)  # ... Redis runs what it got: the answer is lost
                    self.cut.set()
                    server.shutdown(socket.SHUT_WR)
                    return
                server.sendall(data)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


async def test_records_written_before_an_answer_was_lost_are_not_written_twice(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path) as store:
        relay = LostAnswers(store.port)
        try:
            settings = proxy_settings("http://127.0.0.1:1", prefix="lost")
            metrics = ProxyMetrics()
            capture = Capture.from_settings(settings, f"redis://127.0.0.1:{relay.port}/0", metrics)
            capture.start()
            capture.submit("c", _record(0))  # a first batch goes through: a known last id
            await _until(lambda: capture.depth == 0)
            relay.armed.set()
            for i in range(1, 200):
                capture.submit("c", _record(i))
            await _until(lambda: relay.cut.is_set() and capture.depth == 0)
            await capture.close()
        finally:
            relay.close()
        client = redis.Redis(port=store.port)
        ids = [
            PairRecord.from_fields(f).request_id for _, f in client.xrange(Keys("lost").pairs("c"))
        ]
        client.close()
    recorded = metrics.value("shadowtrial_capture_total", {"candidate": "c", "outcome": "recorded"})
    assert sorted(ids, key=lambda r: int(r[1:])) == [f"r{i}" for i in range(200)]
    assert recorded == 200


def _record(i: int) -> PairRecord:
    return PairRecord(request_id=f"r{i}", candidate="c", ts_ms=int(time.time() * 1000) + i)


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
