"""A small world for admin API tests: real model servers, N proxy replicas on one Redis.

`Model` is a raw ASGI model server that answers an OIP-v2 style label (and can hold
`/hold` requests on a Gate). `trial(...)` starts a primary, a candidate and N ProxyApp
replicas (data port + admin port each, real uvicorn servers) sharing one Redis and key
prefix, with an admin token in the environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import redis
from proxy_upstreams import Gate, RunningProxy, running_proxy
from servers import serve_app

from common.keys import Keys
from common.settings import Settings, settings_from_mapping

TOKENS = "alice=alice-token-000001,bob=bob-token-0000002"
ALICE = {"authorization": "Bearer alice-token-000001"}
BOB = {"authorization": "Bearer bob-token-0000002"}
INFER = "/v2/models/m/infer"
# A gate a handful of agreeing local pairs can pass (the defaults need 1000 pairs).
EASY_GATE = {
    "min_pairs": 20,
    "min_agreement": 0.2,
    "max_p99_ratio": 0,  # latency not judged: 60 requests bound no p99
    "max_error_rate_increase": 0.5,
}


def answer(label: str) -> bytes:
    """An OIP-v2 answer with one label."""
    return orjson.dumps(
        {
            "model_name": "m",
            "outputs": [{"name": "label", "shape": [1], "datatype": "BYTES", "data": [label]}],
        }
    )


@dataclass
class Model:
    """A model server answering `label`; `/hold...` requests wait for `hold` to open."""

    label: str
    hold: Gate = field(default_factory=Gate)
    hits: list[str] = field(default_factory=list)  # paths received

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        self.hits.append(scope["path"])
        if scope["path"].startswith("/hold"):
            await self.hold.wait()
        body = answer(self.label)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def settings(
    primary: str,
    prefix: str,
    token_env: str,
    candidates: list[dict[str, Any]] | None = None,
    **sections: dict[str, Any],
) -> Settings:
    """Settings for an in-process proxy replica (environment ignored)."""
    raw: dict[str, Any] = {
        "proxy": {"primary": primary, "mirror_paths": ["**"], **sections.pop("proxy", {})},
        "redis": {"prefix": prefix},
        "admin": {"token_env": token_env, **sections.pop("admin", {})},
        "candidates": candidates or [],
        **sections,
    }
    return settings_from_mapping(raw, environ={})


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> float:
    """Poll until `predicate()` is truthy; the seconds it took (fails after the deadline)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.005)
    return time.monotonic() - started


@dataclass
class Trial:
    """Running servers of one test."""

    primary: Model
    primary_url: str
    candidate: Model
    candidate_url: str
    replicas: list[RunningProxy]
    http: httpx.Client
    keys: Keys
    redis: redis.Redis
    conf: Settings

    def admin(self, i: int = 0) -> str:
        """Base URL of replica i's admin port."""
        return self.replicas[i].admin

    def send(self, i: int = 0, path: str = INFER, n: int = 1) -> list[str]:
        """POST n requests through replica i's data port; the labels answered."""
        labels = []
        for _ in range(n):
            response = self.http.post(self.replicas[i].url + path, content=b'{"inputs": []}')
            assert response.status_code == 200, response.text
            labels.append(response.json()["outputs"][0]["data"][0])
        return labels

    def stream_length(self, name: str) -> int:
        """Pairs recorded for a candidate."""
        return int(self.redis.xlen(self.keys.pairs(name)))

    def decisions(self) -> list[dict[str, Any]]:
        """The audit log through the admin API, newest first."""
        return self.http.get(self.admin() + "/v1/decisions").json()["decisions"]


@contextmanager
def trial(
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    replicas: int = 1,
    candidates: list[dict[str, Any]] | None = None,
    tokens: str | None = TOKENS,
    **sections: dict[str, Any],
) -> Iterator[Trial]:
    """A primary answering "old", a candidate answering "new", N replicas in front."""
    token_env = f"ST_TOKEN_{prefix.upper()}"
    if tokens is not None:
        monkeypatch.setenv(token_env, tokens)
    primary, candidate = Model("old"), Model("new")
    with ExitStack() as stack:
        primary_url = stack.enter_context(serve_app(primary))
        candidate_url = stack.enter_context(serve_app(candidate))
        stack.callback(primary.hold.open)  # before the servers stop
        stack.callback(candidate.hold.open)
        if candidates is None:
            candidates = [{"name": "v2", "url": candidate_url}]
        conf = settings(primary_url, prefix, token_env, candidates, **sections)
        running = [stack.enter_context(running_proxy(conf, redis_url)) for _ in range(replicas)]
        http = stack.enter_context(httpx.Client(timeout=30))
        client = redis.Redis.from_url(redis_url)
        stack.callback(client.close)
        yield Trial(
            primary,
            primary_url,
            candidate,
            candidate_url,
            running,
            http,
            Keys(prefix),
            client,
            conf,
        )


def run_worker(conf: Settings, redis_url: str, pairs: int, timeout_s: float = 20.0) -> None:
    """Run a real comparison worker in this thread until `pairs` pairs are applied."""
    from analysis.worker import Worker

    client = redis.Redis.from_url(redis_url)
    try:
        worker = Worker(client, conf)
        deadline = time.monotonic() + timeout_s
        while worker.applied < pairs:
            assert time.monotonic() < deadline, f"worker applied {worker.applied} of {pairs}"
            worker.step()
    finally:
        client.close()
