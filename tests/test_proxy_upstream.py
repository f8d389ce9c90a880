"""The primary's client (proxy.upstream) against real servers: reuse, framing, retries,
timeouts."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import orjson
import pytest
from proxy_upstreams import Primary
from servers import serve_app

from proxy.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout


def _run(coro_fn: Callable[[], object]) -> object:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


async def _body(resp: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await resp.read():
        parts.append(chunk)
    resp.release()
    return b"".join(parts)


@contextmanager
def counting_server(
    answer: Callable[[socket.socket, int], bool],
) -> Iterator[tuple[str, list[int]]]:
    """A raw server; `answer(conn, n)` handles the connection's n-th request and returns
    False to stop serving it. Yields its URL and the number of connections accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    accepted = [0]
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn, suppress(OSError):
            conn.settimeout(5)
            n = 0
            while answer(conn, n):
                n += 1

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted[0] += 1
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError
        data += chunk
    return data


@pytest.fixture(scope="module")
def primary_url() -> Iterator[str]:
    with serve_app(Primary()) as url:
        yield url


def test_connections_are_reused_and_bodies_pass_byte_exact() -> None:
    def answer(conn: socket.socket, n: int) -> bool:
        _read_request(conn)
        body = b"x" * 10 + bytes([n])
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
        return True

    with counting_server(answer) as (url, accepted):

        async def main() -> list[bytes]:
            pool = UpstreamPool(url, timeout_s=2)
            bodies = [await _body(await pool.request("GET", b"/", [], None)) for _ in range(5)]
            pool.close()
            return bodies

        bodies = _run(main)
    assert bodies == [b"x" * 10 + bytes([n]) for n in range(5)]
    assert accepted[0] == 1


def test_chunked_and_large_answers_stream_byte_exact(primary_url: str) -> None:
    payload = os.urandom(1024 * 1024)

    async def main() -> tuple[bytes, bytes, tuple]:
        pool = UpstreamPool(primary_url, timeout_s=5)
        chunked = await _body(await pool.request("GET", b"/chunked", [], None))
        resp = await pool.request("POST", b"/echo", [("content-type", "x/y")], payload)
        echoed = await _body(resp)

        async def stream() -> object:
            for i in range(0, len(payload), 100_000):
                yield payload[i : i + 100_000]

        streamed = await _body(await pool.request("POST", b"/echo", [], stream()))
        pool.close()
        return chunked, echoed, streamed

    chunked, echoed, streamed = _run(main)  # type: ignore[misc]
    assert chunked == b"first chunk\nsecond chunk\nthird chunk\n"
    assert orjson.loads(echoed)["body"].encode("latin-1") == payload
    assert ["content-type", "x/y"] in orjson.loads(echoed)["headers"]
    seen = orjson.loads(streamed)
    assert seen["body"].encode("latin-1") == payload
    assert ["transfer-encoding", "chunked"] in seen["headers"]


def _dies_after_first(conn: socket.socket, n: int) -> bool:
    """Answers the first request with keep-alive, then closes without answering."""
    _read_request(conn)
    if n == 0:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True
    return False


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("PUT", True), ("POST", False)])
def test_a_dead_pooled_connection_is_retried_for_idempotent_methods_only(
    method: str, retried: bool
) -> None:
    with counting_server(_dies_after_first) as (url, accepted):

        async def main() -> bytes | str:
            pool = UpstreamPool(url, timeout_s=2)
            await _body(await pool.request("GET", b"/", [], None))
            try:
                return await _body(await pool.request(method, b"/", [], b"body"))
            except UpstreamError as exc:
                return str(exc)
            finally:
                pool.close()

        result = _run(main)
    if retried:
        assert result == b"ok" and accepted[0] == 2
    else:
        assert isinstance(result, str) and accepted[0] == 1


def test_a_silent_primary_times_out_and_a_truncated_answer_fails() -> None:
    def silent(conn: socket.socket, n: int) -> bool:
        _read_request(conn)
        threading.Event().wait(1.0)
        return False

    def truncated(conn: socket.socket, n: int) -> bool:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        return False

    with counting_server(silent) as (slow_url, _), counting_server(truncated) as (cut_url, _):

        async def main() -> tuple[object, object]:
            pool = UpstreamPool(slow_url, timeout_s=0.2)
            with pytest.raises(UpstreamTimeout):
                await pool.request("GET", b"/", [], None)
            cut = UpstreamPool(cut_url, timeout_s=2)
            resp = await cut.request("GET", b"/", [], None)
            with pytest.raises(UpstreamError):
                await _body(resp)
            pool.close()
            cut.close()
            return None, None

        _run(main)


def test_an_answer_delimited_by_the_close_is_read_to_the_end() -> None:
    def until_close(conn: socket.socket, n: int) -> bool:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, part two")
        return False

    with counting_server(until_close) as (url, _):

        async def main() -> bytes:
            return await _body(await UpstreamPool(url, timeout_s=2).request("GET", b"/", [], None))

        assert _run(main) == b"part one, part two"


def test_an_unreachable_primary_is_an_upstream_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        with pytest.raises(UpstreamError):
            await UpstreamPool(f"http://127.0.0.1:{port}", timeout_s=1).request(
                "GET", b"/", [], None
            )

    _run(main)


def test_an_interim_answer_is_skipped_for_the_final_one() -> None:
    def early_hints(conn: socket.socket, n: int) -> bool:
        _read_request(conn)
        conn.sendall(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
        )
        return True

    with counting_server(early_hints) as (url, _):

        async def main() -> tuple[int, bytes]:
            pool = UpstreamPool(url, timeout_s=2)
            resp = await pool.request("GET", b"/", [], None)
            answer = resp.status, await _body(resp)
            pool.close()
            return answer

        assert _run(main) == (200, b"final")


def test_requests_beyond_max_open_wait_for_a_connection(primary_url: str) -> None:
    async def main() -> tuple[list[int], list[str]]:
        pool = UpstreamPool(primary_url, timeout_s=2, max_open=1)
        tight = UpstreamPool(primary_url, timeout_s=0.2, max_open=1)

        async def fetch(p: UpstreamPool, path: bytes) -> int:
            resp = await p.request("GET", path, [], None)
            await _body(resp)
            return resp.status

        statuses = await asyncio.gather(*(fetch(pool, b"/slow/50") for _ in range(4)))
        held = await tight.request("GET", b"/json", [], None)  # not read: its connection stays busy
        errors = []
        try:
            await fetch(tight, b"/json")
        except UpstreamTimeout as exc:
            errors.append(str(exc))
        held.close()
        pool.close()
        tight.close()
        return list(statuses), errors

    statuses, errors = _run(main)  # type: ignore[misc]
    assert statuses == [200] * 4
    assert errors and "busy" in errors[0]
