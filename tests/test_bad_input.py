"""Bad input on a real `shadowtrial serve` process, over raw sockets where an HTTP client
would tidy the request up: every case gets a clear answer, or reaches the primary (and
the candidate) exactly as the client sent it; the proxy never crashes, and every pair it
records goes through the real comparison worker without an error.

Covered elsewhere, not repeated: hostile X-Request-ID values on the in-process proxy
(tests/test_proxy_passthrough.py), a client leaving an endless stream (same file).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httptools
import httpx
import orjson
import pytest
import redis
from pairs_factory import drain
from proxy_upstreams import Primary, wait_until
from reliability_harness import Metrics, Served, rss_kib, serve, write_config
from servers import serve_app

from analysis.worker import Worker
from common.keys import Keys
from common.records import PairRecord
from common.settings import load_settings

HEADER_TIMEOUT_MS = 1000
MAX_HEADER_BYTES = 65_536


@dataclass
class World:
    """The proxy process, its primary and its candidate (both echo what they receive)."""

    proxy: Served
    primary: Primary
    candidate: Primary
    store: redis.Redis
    keys: Keys
    worker: Worker
    port: int

    def raw(self, data: bytes, timeout_s: float = 10.0) -> bytes:
        """Send bytes on a fresh connection, read until the proxy closes it."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
            sock.sendall(data)
            return read_all(sock)

    def pairs(self) -> list[PairRecord]:
        """Every pair recorded for the candidate so far."""
        entries = self.store.xrange(self.keys.pairs("c"))
        return [PairRecord.from_fields(fields) for _, fields in entries]

    def digest(self) -> int:
        """Let the real worker apply every new pair (it raises if anything breaks it)."""
        return drain(self.worker)

    def metric(self, name: str, **labels: str) -> float:
        """One value from /metrics."""
        return self.proxy.metrics().get_value(name, **labels)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def request(
    path: str = "/echo", body: bytes = b"{}", headers: bytes = b"", method: bytes = b"POST"
) -> bytes:
    """A raw HTTP/1.1 request that closes its connection after the answer."""
    return (
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: proxy\r\n" + headers
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )  # fmt: skip


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


class _Body:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)


def body_of(answer: bytes) -> bytes:
    """The body of a raw answer, de-chunked."""
    sink = _Body()
    httptools.HttpResponseParser(sink).feed_data(answer)
    return b"".join(sink.parts)


@pytest.fixture(scope="module")
def world(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    prefix = f"bad{uuid.uuid4().hex[:10]}"
    primary, candidate = Primary(), Primary()
    store = redis.Redis.from_url(redis_url)
    with serve_app(primary) as primary_url, serve_app(candidate) as candidate_url:
        config = write_config(
            tmp_path_factory.mktemp("bad") / "shadowtrial.toml",
            primary_url,
            redis_url,
            prefix,
            [{"name": "c", "url": candidate_url}],
            header_timeout_ms=HEADER_TIMEOUT_MS,
            max_header_bytes=MAX_HEADER_BYTES,
            capture_headers=["content-type", "x-name"],
            redact_fields=["password"],
        )
        with serve(config) as proxy:
            settings = load_settings(config, environ={})
            worker = Worker(store, settings, consumer="bad-input")
            port = int(proxy.url.rsplit(":", 1)[1])
            yield World(proxy, primary, candidate, store, Keys(prefix), worker, port)
            log = proxy.log_text()
    for key in store.scan_iter(match=f"{prefix}:*"):
        store.delete(key)
    store.close()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


@pytest.fixture(autouse=True)
def still_serving(world: World) -> Iterator[None]:
    """After every case: the process is alive and a normal request is answered."""
    yield
    assert world.proxy.process.poll() is None, world.proxy.log_text()[-3000:]
    answer = httpx.post(world.proxy.url + "/json", content=b"{}", timeout=10)
    assert answer.status_code == 200


def _seen(app: Primary, marker: str) -> list[dict]:
    return [r for r in app.received if any(v == marker for n, v in r["headers"] if n == "x-mark")]


def test_malformed_json_empty_and_binary_bodies_pass_through_and_are_recorded(
    world: World,
) -> None:
    bodies = {
        "malformed": b'{"inputs": [1, 2,',
        "empty": b"",
        "binary": bytes(range(256)) * 16,
        "bad-utf8": b'{"name": "\xff\xfe\xc3("}',
    }
    for mark, body in bodies.items():
        answer = world.raw(request("/echo", body, b"X-Mark: %s\r\n" % mark.encode()))
        assert status_of(answer) == 200
        seen = orjson.loads(body_of(answer))
        assert seen["body"].encode("latin-1") == body
        assert ["content-length", str(len(body))] in seen["headers"]
    wait_until(lambda: len(world.pairs()) >= len(bodies), what="pairs recorded")
    recorded = {p.request_body for p in world.pairs()}
    assert set(bodies.values()) <= recorded
    for mark, body in bodies.items():
        (cand,) = _seen(world.candidate, mark)
        assert cand["body"].encode("latin-1") == body  # the candidate saw the same bytes
    assert world.digest() >= len(bodies)


def test_ten_megabyte_body_is_forwarded_not_captured_and_counted(world: World) -> None:
    before = world.metric("shadowtrial_mirror_outcomes_total", candidate="c", outcome="too_large")
    body = bytes(range(256)) * (10 * 4096)  # 10 MiB
    answer = httpx.post(world.proxy.url + "/json", content=body, headers={"x-mark": "10mb"})
    assert answer.status_code == 200
    (seen,) = _seen(world.primary, "10mb")
    assert seen["body"].encode("latin-1") == body
    assert _seen(world.candidate, "10mb") == []
    after = world.metric("shadowtrial_mirror_outcomes_total", candidate="c", outcome="too_large")
    assert after == before + 1


def test_utf8_header_values_reach_primary_and_candidate_byte_exact(world: World) -> None:
    value = "José 名前 ✓".encode()
    answer = world.raw(request(headers=b"X-Mark: utf8\r\nX-Name: " + value + b"\r\n"))
    assert status_of(answer) == 200
    for app in (world.primary, world.candidate):
        wait_until(lambda app=app: _seen(app, "utf8"), what="the request")
        (seen,) = _seen(app, "utf8")
        names = [(n, v.encode("latin-1")) for n, v in seen["headers"]]
        assert ("x-name", value) in names
    wait_until(lambda: any(p.headers.get("x-name") for p in world.pairs()), what="pair")
    assert any(p.headers.get("x-name") == value.decode() for p in world.pairs())
    world.digest()


def test_header_bytes_that_are_not_utf8_get_a_clear_400(world: World) -> None:
    answer = world.raw(request(headers=b"X-Mark: latin1\r\nX-Name: Jos\xe9\r\n"))
    assert status_of(answer) == 400
    assert orjson.loads(body_of(answer))["error"] == "bad request"
    assert b"content-type: application/json" in answer.lower()
    assert _seen(world.primary, "latin1") == []


def test_duplicate_headers_are_forwarded_in_order(world: World) -> None:
    answer = world.raw(request(headers=b"X-Mark: dup\r\nX-D: 1\r\nX-D: 2\r\nX-D: 3\r\n"))
    seen = orjson.loads(body_of(answer))
    assert [v for n, v in seen["headers"] if n == "x-d"] == ["1", "2", "3"]


def test_conflicting_framing_is_refused_and_never_reaches_the_primary_twice(
    world: World,
) -> None:
    smuggle = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    attempts = {
        "cl-te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggle,
        "te-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + smuggle,
        "two-cl": b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}" + smuggle,
        "same-cl-twice": b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}" + smuggle,
        "te-obfuscated": b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggle,
        "te-list": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + smuggle,
        "te-space": b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + smuggle,
        "bad-chunk": b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n" + smuggle,
        "negative-cl": b"Content-Length: -1\r\n\r\n{}" + smuggle,
        "lf-only": b"Content-Length: 2\n\n{}" + smuggle,
    }
    before = len(world.primary.received)
    for name, tail in attempts.items():
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Mark: smuggle-%s\r\n" % name.encode()
        if name == "lf-only":
            head = head.replace(b"\r\n", b"\n")
        answer = world.raw(head + tail)
        assert status_of(answer) == 400, (name, answer[:200])
    assert len(world.primary.received) == before
    assert not any(r["raw_path"] == "/smuggled" for r in world.primary.received)


def test_oversized_request_heads_get_431_and_reach_no_one(world: World) -> None:
    near = b"X-Mark: near\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES - 1024) + b"\r\n"
    assert status_of(world.raw(request(headers=near))) == 200
    assert _seen(world.primary, "near")
    for mark, headers in (
        ("one-big", b"X-Big: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n"),
        ("many", b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(2000))),
    ):
        answer = world.raw(request(headers=b"X-Mark: %s\r\n" % mark.encode() + headers))
        assert status_of(answer) == 431, mark
        assert orjson.loads(body_of(answer))["error"] == "request header fields too large"
        assert _seen(world.primary, mark) == []


def test_an_endless_header_is_cut_off_without_growing_memory(world: World) -> None:
    before = rss_kib(world.proxy.pid)
    chunk = b"a" * 65536
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            for _ in range(512):  # up to 32 MiB, if nobody stopped us
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    grew = rss_kib(world.proxy.pid) - before
    print(f"endless header: cut after {sent} bytes sent, RSS +{grew} KiB")
    assert sent < 32 * 2**20  # the proxy closed the connection
    assert answer == b"" or status_of(answer) == 431
    assert grew < 16 * 1024


def test_slowloris_is_cut_after_the_header_timeout_and_blocks_no_one(world: World) -> None:
    started = time.monotonic()  # before connecting: the server's head timer starts on connect
    slow = [socket.create_connection(("127.0.0.1", world.port), timeout=10) for _ in range(50)]
    stop = threading.Event()

    def drip() -> None:  # one header byte per socket every 100 ms
        for sock in slow:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while not stop.wait(0.1):
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        with httpx.Client(timeout=5) as client:  # others are served promptly meanwhile
            took = []
            for _ in range(20):
                t0 = time.monotonic()
                assert client.post(world.proxy.url + "/json", content=b"{}").status_code == 200
                took.append(time.monotonic() - t0)
        assert max(took) < 0.5, took
        answers = [read_all(sock) for sock in slow]
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        dripper.join(timeout=5)
        for sock in slow:
            sock.close()
    print(f"slowloris: 50 slow heads cut after {elapsed:.2f} s; others max {max(took):.3f} s")
    assert all(status_of(a) == 408 for a in answers), answers[:3]
    assert orjson.loads(body_of(answers[0]))["error"] == "request timeout"
    assert HEADER_TIMEOUT_MS / 1000 <= elapsed < HEADER_TIMEOUT_MS / 1000 + 5


def test_client_gone_mid_request_sends_nothing_and_is_not_counted(world: World) -> None:
    before = world.metric("shadowtrial_requests_total", method="POST", status_class="2xx")
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Mark: gone\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"{" * 10)  # fmt: skip
    time.sleep(0.3)  # a window for what must not happen (nothing to poll for)
    assert _seen(world.primary, "gone") == []
    assert world.metric("shadowtrial_requests_total", method="POST", status_class="2xx") == before


def test_client_gone_mid_streamed_body_ends_the_exchange(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Mark: gone-big\r\n"
                     b"Content-Length: 5000000\r\n\r\n" + b"x" * 2_000_000)  # fmt: skip
    # Over max_capture_bytes, the body streams to the primary as it arrives; when the
    # client goes, the proxy cuts the primary's request short too (the test primary then
    # reads what it got as the whole body).
    wait_until(lambda: _seen(world.primary, "gone-big"), what="the cut request")
    (seen,) = _seen(world.primary, "gone-big")
    assert len(seen["body"]) < 5_000_000
    assert _seen(world.candidate, "gone-big") == []


def test_client_gone_mid_response_leaves_the_proxy_serving(world: World) -> None:
    body = b"z" * 3_000_000  # echoed back as JSON: a 3 MB answer
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request("/echo", body, b"X-Mark: leave\r\n"))
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    wait_until(lambda: _seen(world.primary, "leave"), what="the request")


def test_request_ids_a_shell_or_a_page_would_choke_on_are_kept_and_digested(
    world: World,
) -> None:
    hostile = [b"<script>alert(1)</script>", b"$(rm${IFS}-rf)';\"`", b"%00%0d%0a", b"a" * 128]
    for rid in hostile:
        answer = world.raw(request("/json", b"{}", b"X-Request-ID: " + rid + b"\r\n"))
        assert status_of(answer) == 200 and b"x-request-id: " + rid + b"\r\n" in answer
    too_long = b"b" * 10_000
    answer = world.raw(request("/json", b"{}", b"X-Request-ID: " + too_long + b"\r\n"))
    assert status_of(answer) == 200 and too_long not in answer  # replaced by a fresh one
    ids = {rid.decode() for rid in hostile}
    wait_until(lambda: ids <= {p.request_id for p in world.pairs()}, what="their pairs")
    world.digest()


def test_metrics_still_add_up_after_all_of_it(world: World) -> None:
    wait_until(
        lambda: (
            Metrics.parse(httpx.get(world.proxy.admin + "/metrics").text).get_value(
                "shadowtrial_mirrors_in_flight", candidate="c"
            )
            == 0
        ),
        what="mirrors to settle",
    )
    metrics = world.proxy.metrics()
    sampled = metrics.get_value("shadowtrial_mirror_sampled_total", candidate="c")
    outcomes = metrics.total("shadowtrial_mirror_outcomes_total", candidate="c")
    assert sampled == outcomes > 0
    world.digest()


@pytest.mark.parametrize("depth", [990, 1000, 1024])
def test_json_nested_near_the_recursion_limit_is_recorded_counted_and_shown(
    world: World, depth: int
) -> None:
    """Issue 12, bug 5: a body nested ~1,000 deep raised RecursionError in the mirror task
    (pair neither recorded nor counted, a long traceback per request) and made the
    drill-down answer 500 while the pair was among its samples."""
    nested = b"[" * depth + b"]" * depth
    body = b'{"note": "caf\\u00e9", "a": %s, "password": "hunter2-%d"}' % (nested, depth)
    plain = b'{"note": "caf\\u00e9", "a": %s}' % nested  # nothing to redact: kept as sent
    sampled = world.metric("shadowtrial_mirror_sampled_total", candidate="c")
    recorded = world.metric("shadowtrial_capture_total", candidate="c", outcome="recorded")
    for i, sent in enumerate((body, plain)):
        answer = world.raw(request("/echo", sent, b"X-Mark: deep-%d-%d\r\n" % (depth, i)))
        assert status_of(answer) == 200
    wait_until(
        lambda: (
            world.metric("shadowtrial_capture_total", candidate="c", outcome="recorded")
            == recorded + 2
        ),
        what="both pairs recorded",
    )
    assert world.metric("shadowtrial_mirror_sampled_total", candidate="c") == sampled + 2
    stored = [p.request_body for p in world.pairs()]
    assert plain in stored and b"hunter2-%d" % depth not in b"".join(stored)
    world.digest()
    shown = httpx.get(world.proxy.admin + "/v1/candidates/c/pairs?limit=200", timeout=10)
    assert shown.status_code == 200
    assert b"hunter2" not in shown.content
    assert "Traceback" not in world.proxy.log_text()
