"""The native data port (proxy.dataport) over raw sockets: keep-alive, pipelining,
limits, smuggling defences, 100-continue, byte-exact bodies, slow clients, graceful stop."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from proxy_upstreams import Primary, RunningProxy, proxy_settings, running_proxy
from servers import serve_app, serve_proxy

from proxy.app import create_app


@pytest.fixture(scope="module")
def primary() -> Iterator[tuple[Primary, str]]:
    app = Primary()
    with serve_app(app) as url:
        try:
            yield app, url
        finally:
            app.sse_gate.open()


@pytest.fixture(scope="module")
def proxy(primary: tuple[Primary, str], redis_url: str) -> Iterator[RunningProxy]:
    settings = proxy_settings(
        primary[1], max_header_bytes=2048, header_timeout_ms=400, body_timeout_ms=400
    )
    with running_proxy(settings, redis_url) as running:
        yield running


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def _read_answer(sock: socket.socket, buf: bytearray) -> tuple[int, dict[bytes, bytes], bytes]:
    """One answer off the socket (Content-Length or chunked), leaving the rest in buf."""
    while b"\r\n\r\n" not in buf:
        _fill(sock, buf)
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        size = int(headers[b"content-length"])
        while len(buf) < size:
            _fill(sock, buf)
        body = bytes(buf[:size])
        del buf[:size]
        return status, headers, body
    if headers.get(b"transfer-encoding") == b"chunked":
        return status, headers, _read_chunked(sock, buf)
    return status, headers, b""


def _read_chunked(sock: socket.socket, buf: bytearray) -> bytes:
    parts = []
    while True:
        while b"\r\n" not in buf:
            _fill(sock, buf)
        line, _, rest = bytes(buf).partition(b"\r\n")
        size = int(line, 16)
        while len(rest) < size + 2:
            _fill(sock, buf)
            line, _, rest = bytes(buf).partition(b"\r\n")
        parts.append(rest[:size])
        buf[:] = rest[size + 2 :]
        if size == 0:
            return b"".join(parts)


def _fill(sock: socket.socket, buf: bytearray) -> None:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("closed")
    buf += data


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_carries_many_requests_on_one_connection(proxy: RunningProxy) -> None:
    with _connect(proxy.url) as sock:
        buf = bytearray()
        for i in range(5):
            sock.sendall(b"GET /echo?n=%d HTTP/1.1\r\nhost: x\r\n\r\n" % i)
            status, _, body = _read_answer(sock, buf)
            assert status == 200
            assert orjson.loads(body)["query"] == f"n={i}"


def test_pipelined_requests_are_answered_in_order(proxy: RunningProxy) -> None:
    requests = b"".join(
        [
            b"GET /slow/150 HTTP/1.1\r\nhost: x\r\n\r\n",
            b"POST /echo?n=2 HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc",
            b"GET /echo?n=3 HTTP/1.1\r\nhost: x\r\n\r\n",
        ]
    )
    with _connect(proxy.url) as sock:
        sock.sendall(requests)
        buf = bytearray()
        first = _read_answer(sock, buf)
        second = _read_answer(sock, buf)
        third = _read_answer(sock, buf)
    assert b'"resp-1"' in first[2]
    assert orjson.loads(second[2])["body"] == "abc"
    assert orjson.loads(third[2])["query"] == "n=3"


def test_a_head_over_the_limit_gets_431_and_is_counted(proxy: RunningProxy) -> None:
    before = proxy.value("shadowtrial_http_refused_total", reason="head_too_large")
    with _connect(proxy.url) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 4000 + b"\r\n\r\n")
        status, headers, body = _read_answer(sock, bytearray())
        assert status == 431 and orjson.loads(body)["error"]
        assert headers[b"connection"] == b"close"
    with _connect(proxy.url) as sock:  # a header name that never ends: bounded as well
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\nx" + b"a" * 1500)
        sock.sendall(b"a" * 1500)
        assert _read_answer(sock, bytearray())[0] == 431
    after = proxy.value("shadowtrial_http_refused_total", reason="head_too_large")
    assert after == before + 2


def test_a_slow_head_and_a_slow_body_get_408(proxy: RunningProxy) -> None:
    with _connect(proxy.url) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        assert _read_answer(sock, bytearray())[0] == 408
        assert time.monotonic() - started < 3
    with _connect(proxy.url) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        assert _read_answer(sock, bytearray())[0] == 408
    assert proxy.value("shadowtrial_http_refused_total", reason="head_timeout") >= 1
    assert proxy.value("shadowtrial_http_refused_total", reason="body_timeout") >= 1


SMUGGLING = [
    b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
    b"GET /echo HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n folded\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nhost: x\r\nbad header: 1\r\n\r\n",
    b"GET /echo HTTP/1.1\nhost: x\n\n",
]


@pytest.mark.parametrize("raw", SMUGGLING)
def test_ambiguous_framing_is_refused_with_a_json_400(
    proxy: RunningProxy, primary: tuple[Primary, str], raw: bytes
) -> None:
    before = proxy.value("shadowtrial_http_refused_total", reason="bad_request")
    seen = len(primary[0].received)
    with _connect(proxy.url) as sock:
        sock.sendall(raw)
        status, headers, body = _read_answer(sock, bytearray())
        assert status == 400 and headers[b"content-type"] == b"application/json"
        assert "detail" in orjson.loads(body)
        assert _closed(sock)
    assert proxy.value("shadowtrial_http_refused_total", reason="bad_request") == before + 1
    assert len(primary[0].received) == seen  # nothing reached the primary


def test_expect_100_continue_gets_a_go_ahead_before_the_body(proxy: RunningProxy) -> None:
    with _connect(proxy.url) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        buf = bytearray()
        status, _, _ = _read_answer(sock, buf)
        assert status == 100
        sock.sendall(b"hello")
        status, _, body = _read_answer(sock, buf)
    assert status == 200 and orjson.loads(body)["body"] == "hello"


def test_large_and_chunked_bodies_pass_byte_exact_both_ways(proxy: RunningProxy) -> None:
    payload = os.urandom(3 * 1024 * 1024)  # over max_capture_bytes: streamed through
    with httpx.Client(timeout=10) as client:
        answer = client.post(f"{proxy.url}/echo", content=payload)
        assert orjson.loads(answer.content)["body"].encode("latin-1") == payload

        def chunks() -> Iterator[bytes]:
            for i in range(50):
                yield payload[i * 1000 : (i + 1) * 1000]

        answer = client.post(f"{proxy.url}/echo", content=chunks())
        assert orjson.loads(answer.content)["body"].encode("latin-1") == payload[:50_000]
        chunked = client.get(f"{proxy.url}/chunked")
        assert chunked.headers["transfer-encoding"] == "chunked"
        assert chunked.content == b"first chunk\nsecond chunk\nthird chunk\n"


def test_a_slow_reader_gets_the_whole_answer(proxy: RunningProxy) -> None:
    payload = os.urandom(512 * 1024)  # echoed as JSON: over 1 MiB back
    with _connect(proxy.url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        head = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(payload)
        sock.sendall(head + payload)
        time.sleep(0.5)  # the proxy's writes back up meanwhile
        status, _, body = _read_answer(sock, bytearray())
    assert status == 200 and orjson.loads(body)["body"].encode("latin-1") == payload


def test_an_http10_client_reads_an_unsized_answer_to_the_close(proxy: RunningProxy) -> None:
    with _connect(proxy.url) as sock:
        sock.sendall(b"GET /chunked HTTP/1.0\r\nhost: x\r\n\r\n")
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"first chunk\nsecond chunk\nthird chunk\n"


def test_graceful_stop_finishes_requests_in_flight(
    primary: tuple[Primary, str], redis_url: str
) -> None:
    app = create_app(proxy_settings(primary[1]), redis_url)
    answers: list[int] = []
    with serve_proxy(app, grace_s=5) as url:

        def slow() -> None:
            answers.append(httpx.get(f"{url}/slow/600", timeout=5).status_code)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.2)  # in flight when the stop begins
    thread.join(timeout=5)
    assert answers == [200]


def _answers(url: str) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    out = []
    with httpx.Client(timeout=10) as client:
        for method, path, body in [
            ("GET", "/json", None),
            ("POST", "/binary", b"x" * 100),
            ("GET", "/chunked", None),
            ("GET", "/hop", None),
            ("GET", "/status/204", None),
            ("HEAD", "/json", None),
            ("POST", "/status/503", b"{}"),
        ]:
            answer = client.request(method, f"{url}{path}", content=body)
            skip = {"x-request-id", "date", "server", "content-length", "transfer-encoding"}
            headers = sorted((n, v) for n, v in answer.headers.multi_items() if n not in skip)
            out.append((answer.status_code, headers, answer.content))
    return out


def test_the_native_port_answers_like_the_uvicorn_one(
    primary: tuple[Primary, str], redis_url: str
) -> None:
    seen = {}
    for kind in ("native", "uvicorn"):
        with running_proxy(proxy_settings(primary[1], data_port=kind), redis_url) as running:
            seen[kind] = _answers(running.url)
    assert seen["native"] == seen["uvicorn"]


def test_a_slow_reader_does_not_time_the_primary_out(
    primary: tuple[Primary, str], redis_url: str
) -> None:
    """The primary's answer waits while the client reads slowly: that is not the primary
    being silent (primary_timeout_ms is far shorter than the client's pause)."""
    payload = os.urandom(8 * 1024 * 1024)  # echoed as JSON: more than socket buffers hold
    settings = proxy_settings(primary[1], primary_timeout_ms=300)
    with running_proxy(settings, redis_url) as running, _connect(running.url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        head = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(payload)
        sock.sendall(head + payload)
        time.sleep(1.0)
        status, _, body = _read_answer(sock, bytearray())
    assert status == 200 and orjson.loads(body)["body"].encode("latin-1") == payload


def test_an_upgrade_request_is_answered_by_the_primary_then_the_connection_closes(
    proxy: RunningProxy,
) -> None:
    with _connect(proxy.url) as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
            b"\x81\x05hello"  # frames the proxy never parses as HTTP
        )
        status, _, body = _read_answer(sock, bytearray())
        assert status == 200
        names = [name for name, _ in orjson.loads(body)["headers"]]
        assert "upgrade" not in names
        assert _closed(sock)


def test_an_absolute_form_target_forwards_its_path_and_query(proxy: RunningProxy) -> None:
    with _connect(proxy.url) as sock:
        sock.sendall(b"GET http://elsewhere.example/echo?a=1 HTTP/1.1\r\nhost: x\r\n\r\n")
        status, _, body = _read_answer(sock, bytearray())
    seen = orjson.loads(body)
    assert status == 200 and seen["raw_path"] == "/echo" and seen["query"] == "a=1"
