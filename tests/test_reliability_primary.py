"""The primary failing, as the client and the evidence see it.

Already covered in tests/test_proxy_passthrough.py and tests/test_proxy_mirror.py, not
repeated: unreachable primary -> 502 JSON and readyz 503; primary timeout -> 504 JSON;
a 502 not recorded unless proxy.mirror_on_primary_error, counted as primary_failed.
Here: the timeout with mirrors in flight, a primary dying half-way through its answer,
a primary answering 5xx itself (an answer, not a failure), and recovery.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
from proxy_upstreams import Candidate, Primary, proxy_settings, running_proxy, wait_until
from servers import LINGER_ZERO, free_port, raw_server, serve_app

from common.keys import Keys
from common.records import PairRecord


def pairs(client: redis.Redis, prefix: str) -> list[PairRecord]:
    return [PairRecord.from_fields(f) for _, f in client.xrange(Keys(prefix).pairs("c"))]


@contextmanager
def dies_mid_answer() -> Iterator[str]:
    """A primary that sends a head promising 1000 bytes, 10 of them, then resets."""

    def die(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"partial\":")  # fmt: skip
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)

    with raw_server(die, backlog=16) as url:
        yield url


@pytest.mark.parametrize("record_failures", [False, True])
def test_primary_timeout_with_mirrors_is_504_json_and_counted(
    redis_url: str, prefix: str, redis_client: redis.Redis, record_failures: bool
) -> None:
    cand = Candidate()
    with serve_app(Primary()) as primary, serve_app(cand) as cand_url:
        settings = proxy_settings(
            primary, [{"name": "c", "url": cand_url}], prefix=prefix, primary_timeout_ms=200,
            mirror_on_primary_error=record_failures,
        )  # fmt: skip
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
            answer = http.post(px.url + "/slow/600", content=b"{}")
            assert answer.status_code == 504
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["error"] == "primary timeout"
            wait_until(lambda: px.settled("c"), what="the mirror")
            px.check_accounting("c")
            assert px.outcome("c", "primary_failed") == (0 if record_failures else 1)
    records = pairs(redis_client, prefix)
    assert len(cand.bodies) == 1  # the candidate was asked at the same time as the primary
    if record_failures:
        (rec,) = records
        assert rec.primary_status == 504 and b"primary timeout" in rec.primary_body
    else:
        assert records == []


def test_primary_dying_mid_answer_aborts_the_client_and_records_nothing(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    with dies_mid_answer() as primary, serve_app(Candidate()) as cand_url:
        settings = proxy_settings(primary, [{"name": "c", "url": cand_url}], prefix=prefix)
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
            # The head was already relayed: the only honest signal left is an aborted body.
            with pytest.raises(httpx.RemoteProtocolError):
                http.post(px.url + "/infer", content=b"{}")
            wait_until(lambda: px.settled("c"), what="the mirror")
            assert px.outcome("c", "primary_failed") == 1
            px.check_accounting("c")
    assert pairs(redis_client, prefix) == []


def test_primary_5xx_is_an_answer_passed_through_and_recorded(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    with serve_app(Primary()) as primary, serve_app(Candidate()) as cand_url:
        settings = proxy_settings(primary, [{"name": "c", "url": cand_url}], prefix=prefix)
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
            answer = http.post(px.url + "/status/503", content=b"{}")
            assert answer.status_code == 503 and answer.content == b'{"status":1}'
            wait_until(lambda: px.captured("c", "recorded") == 1, what="the pair")
            px.check_accounting("c")
    (rec,) = pairs(redis_client, prefix)
    assert rec.primary_status == 503 and rec.candidate_outcome == "ok"


def test_a_primary_that_comes_back_is_used_again(redis_url: str) -> None:
    port = free_port()
    settings = proxy_settings(f"http://127.0.0.1:{port}")
    with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
        assert http.post(px.url + "/json", content=b"{}").status_code == 502
        assert http.get(px.admin + "/readyz").status_code == 503
        with serve_app(Primary(), port=port):
            assert http.post(px.url + "/json", content=b"{}").status_code == 200
            assert http.get(px.admin + "/readyz").status_code == 200
        assert http.post(px.url + "/json", content=b"{}").status_code == 502
