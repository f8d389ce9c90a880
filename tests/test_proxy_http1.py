"""The lean HTTP/1.1 client candidates are reached with, against real servers."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import pytest
from proxy_upstreams import CHUNKS, Gate, Primary
from servers import free_port, raw_server, serve_app

from proxy.http1 import Http1Client, ProtocolError


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class CountingApp:
    """Answers 200 and remembers which client port each request came from."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.ports.append(scope["client"][1])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_keeps_connections_alive_between_requests() -> None:
    app = CountingApp()
    with serve_app(app) as url:
        client = Http1Client(url, max_body=1000)
        for _ in range(5):
            answer = await client.request("POST", "/x", [], b"{}", 5)
            assert (answer.status, answer.body) == (200, b"ok")
        await client.close()
    assert len(app.ports) == 5 and len(set(app.ports)) == 1


async def test_sends_method_target_headers_and_body_exactly() -> None:
    primary = Primary()
    with serve_app(primary) as url:
        client = Http1Client(url + "/base", max_body=100_000)
        headers = [("content-type", "application/json"), ("x-request-id", "r1"), ("x-a", "1")]
        answer = await client.request("PUT", "/echo/a%2Fb?q=1&q=2", headers, b'{"k": 1}', 5)
        await client.close()
    seen = orjson.loads(answer.body)
    assert answer.content_type == "application/json"
    assert seen["method"] == "PUT"
    assert seen["raw_path"] == "/base/echo/a%2Fb" and seen["query"] == "q=1&q=2"
    assert seen["body"] == '{"k": 1}'
    port = url.rsplit(":", 1)[1]
    assert seen["headers"] == [
        ["host", f"127.0.0.1:{port}"],
        ["content-type", "application/json"],
        ["x-request-id", "r1"],
        ["x-a", "1"],
        ["content-length", "8"],
    ]


async def test_chunked_answer_read_whole_and_capped() -> None:
    with serve_app(Primary()) as url:
        whole = Http1Client(url, max_body=100_000)
        assert (await whole.request("GET", "/chunked", [], b"", 5)).body == b"".join(CHUNKS)
        capped = Http1Client(url, max_body=10)
        for _ in range(2):  # the rest was still read: the connection stays usable
            assert (await capped.request("GET", "/chunked", [], b"", 5)).body == CHUNKS[0][:10]
        assert len(capped._idle) == 1
        await whole.close()
        await capped.close()


async def test_answer_delimited_by_close() -> None:
    def reply(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, ")
        conn.sendall(b"world")

    with raw_server(reply) as url:
        client = Http1Client(url, max_body=1000)
        answer = await client.request("POST", "/", [], b"x", 5)
        assert (answer.status, answer.content_type, answer.body) == (
            200,
            "text/plain",
            b"hello, world",
        )
        await client.close()


async def test_server_closing_after_each_answer_is_handled() -> None:
    def reply(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")

    with raw_server(reply) as url:
        client = Http1Client(url, max_body=1000)
        for _ in range(5):
            assert (await client.request("POST", "/", [], b"{}", 5)).status == 201
        await client.close()


async def test_timeout_refused_and_garbage_raise() -> None:
    gate = Gate()

    class Hanging(CountingApp):
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                await gate.wait()
                await super().__call__(scope, receive, send)

    with serve_app(Hanging()) as url:
        try:
            client = Http1Client(url, max_body=1000)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await client.request("POST", "/", [], b"{}", 0.2)
            assert time.monotonic() - started < 2
            await client.close()
        finally:
            gate.open()
    with pytest.raises(OSError):
        await Http1Client(f"http://127.0.0.1:{free_port()}", 10).request("POST", "/", [], b"", 5)

    def garbage(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"SPDY/9 what\r\n\r\n")

    with raw_server(garbage) as url, pytest.raises(ProtocolError):
        await Http1Client(url, 10).request("POST", "/", [], b"", 5)


async def test_head_answer_completes_without_body() -> None:
    with serve_app(Primary()) as url:
        client = Http1Client(url, max_body=1000)
        answer = await client.request("HEAD", "/json", [], b"", 5)
        assert answer.status == 200 and answer.body == b""
        assert (await client.request("POST", "/json", [], b"", 5)).status == 200
        await client.close()


def test_rejects_non_http_urls() -> None:
    with pytest.raises(ValueError):
        Http1Client("ftp://example.com", 10)


async def test_connect_time_is_reported_apart_from_the_exchange() -> None:
    """A new connection's handshake is the proxy's cost: the candidate's latency is the
    exchange alone, so a pool that grows under a burst cannot make a twin look slow."""
    from proxy.candidates import HttpCandidate, MirrorRequest

    app = CountingApp()
    with serve_app(app) as url:
        client = Http1Client(url, max_body=1000)
        fresh = await client.request("POST", "/x", [], b"{}", 5)
        pooled = await client.request("POST", "/x", [], b"{}", 5)
        await client.close()
        candidate = HttpCandidate("twin", url, timeout_ms=5000)
        request = MirrorRequest("r1", "POST", "/x", "", [], b"{}")
        started = time.perf_counter()
        first = await candidate.run(request)
        total_ms = (time.perf_counter() - started) * 1000
        second = await candidate.run(request)
        await candidate.close()
    assert fresh.connect_ms > 0 and pooled.connect_ms == 0.0
    assert first.connect_ms > 0 and second.connect_ms == 0.0
    assert first.elapsed_ms + first.connect_ms <= total_ms
    assert first.elapsed_ms < total_ms - first.connect_ms + 1e-6
