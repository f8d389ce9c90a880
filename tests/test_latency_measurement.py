"""What the proxy times: the primary's answer, not the client taking it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from proxy_upstreams import JSON_BODY, Candidate, Primary, proxy_settings, wait_until
from servers import serve_app

from common.keys import Keys
from common.records import PairRecord
from proxy.app import create_app

SLOW_CLIENT_S = 0.3


async def test_primary_time_ends_with_its_answer_not_the_slow_client(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """A client that takes 300 ms to accept the answer must not add 300 ms to the
    primary's latency: the candidate's time ends with its answer too."""
    scope: dict[str, Any] = {
        "type": "http", "method": "POST", "path": "/json", "raw_path": b"/json",
        "query_string": b"", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 40000), "scheme": "http",
    }  # fmt: skip
    sent = False
    relayed: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b'{"x": 1}', "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            relayed.append(message.get("body", b""))
            if not message.get("more_body"):
                await asyncio.sleep(SLOW_CLIENT_S)  # the client is slow to take it

    with serve_app(Primary()) as primary_url, serve_app(Candidate()) as cand_url:
        settings = proxy_settings(primary_url, [{"name": "v2", "url": cand_url}], prefix=prefix)
        app = create_app(settings, redis_url)
        await app.startup()
        try:
            started = time.perf_counter()
            await app(scope, receive, send)
            total_s = time.perf_counter() - started
            key = Keys(prefix).pairs("v2")
            await asyncio.to_thread(wait_until, lambda: redis_client.xlen(key) == 1)
        finally:
            await app.shutdown()
    (record,) = [PairRecord.from_fields(f) for _, f in redis_client.xrange(key)]
    assert b"".join(relayed) == JSON_BODY
    assert total_s >= SLOW_CLIENT_S
    assert record.primary_ms < SLOW_CLIENT_S * 1000 / 2, record.primary_ms
