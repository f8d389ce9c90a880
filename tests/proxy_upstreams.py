"""Real upstreams for the proxy tests: a primary with one behaviour per path, candidates
that answer, fail, hang on a gate or reset the connection, and an in-process proxy."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
from servers import LINGER_ZERO, raw_server, serve_app, serve_proxy

from common.records import OUTCOME_DISPATCHED, OUTCOMES
from common.settings import Settings, settings_from_mapping
from proxy.app import ProxyApp, create_app

JSON_BODY = b'{"id":"resp-1","outputs":[{"name":"label","data":["positive"]}],"score":0.97}'
BINARY_BODY = bytes(range(256)) * 64
GZIP_BODY = gzip.compress(b'{"big": "' + b"x" * 5000 + b'"}', mtime=0)
CHUNKS = [b"first chunk\n", b"second chunk\n", b"third chunk\n"]
HANDED = (*OUTCOMES, OUTCOME_DISPATCHED)  # mirror outcomes handed to capture
MIRROR_OUTCOMES = (*HANDED, "shed", "too_large", "primary_failed")
CANDIDATE_BODY = b'{"id":"resp-1","outputs":[{"name":"label","data":["negative"]}]}'


class Gate:
    """An event a test opens from its own thread to release handlers waiting on a loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.arrived = threading.Event()  # set when the first handler starts waiting
        self.count = 0

    async def wait(self) -> None:
        """Block this handler until `open()` (returns at once if already open)."""
        event = asyncio.Event()
        with self._lock:
            self.count += 1
            if self._opened:
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        self.arrived.set()
        await event.wait()

    def open(self) -> None:
        """Release every waiting handler, now and later."""
        with self._lock:
            self._opened = True
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)


async def _read_body(receive: Any, partial: threading.Event | None = None) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)
        if partial is not None:
            partial.set()


async def _respond(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Primary:
    """Raw ASGI primary: /json /binary /gzip /chunked /sse /hop /echo /status/N /slow/MS."""

    sse_gate: Gate = field(default_factory=Gate)
    received: list[dict[str, Any]] = field(default_factory=list)
    partial_body: threading.Event = field(default_factory=threading.Event)  # body in parts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive, self.partial_body)
        path: str = scope["path"]
        seen = {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "body": body.decode("latin-1"),
        }
        self.received.append(seen)
        head = path.split("/")[1]
        handler = getattr(self, f"_{head}", None) or self._echo
        await handler(scope, send, seen)

    async def _echo(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        await _respond(send, 200, [(b"content-type", b"application/json")], orjson.dumps(seen))

    async def _json(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        await _respond(send, 200, [(b"content-type", b"application/json")], JSON_BODY)

    async def _binary(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        await _respond(send, 200, [(b"content-type", b"application/octet-stream")], BINARY_BODY)

    async def _gzip(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await _respond(send, 200, headers, GZIP_BODY)

    async def _chunked(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in CHUNKS:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _sse(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        """Event 1, then nothing until the test opens the gate, then event 2."""
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await self.sse_gate.wait()
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _hop(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-authenticate", b"Basic"),
            (b"upgrade", b"h2c"),
            (b"x-model-version", b"v1"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
        ]
        await _respond(send, 200, headers, JSON_BODY)

    async def _status(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        status = int(scope["path"].split("/")[2])
        body = b"" if status in (204, 304) else b'{"status":1}'
        await _respond(send, status, [(b"content-type", b"application/json")], body)

    async def _slow(self, scope: dict[str, Any], send: Any, seen: dict[str, Any]) -> None:
        await asyncio.sleep(int(scope["path"].split("/")[2]) / 1000)
        await self._json(scope, send, seen)


@dataclass
class Candidate:
    """Raw ASGI candidate: answers `status` after `delay_s`, or waits on `gate` first."""

    status: int = 200
    delay_s: float = 0.0
    gate: Gate | None = None
    request_ids: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        headers = dict(scope["headers"])
        self.request_ids.append(headers.get(b"x-request-id", b"").decode())
        self.bodies.append(body)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        await _respond(send, self.status, [(b"content-type", b"application/json")], CANDIDATE_BODY)


@contextmanager
def reset_server() -> Iterator[str]:
    """A TCP server that reads a request and resets the connection (RST, no answer)."""

    def reset(conn: socket.socket) -> None:
        conn.settimeout(2)
        with suppress(OSError):
            conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)

    with raw_server(reset) as url:
        yield url


def proxy_settings(primary: str, candidates: list[dict[str, Any]] | None = None,
                   prefix: str = "shadowtrial", slices: list[dict[str, Any]] | None = None,
                   **proxy: Any) -> Settings:  # fmt: skip
    """Settings for an in-process proxy (environment ignored); every path is mirrored
    unless `mirror_paths` is given (the tests use paths like /json and /echo)."""
    raw: dict[str, Any] = {
        "proxy": {"primary": primary, "mirror_paths": ["**"], **proxy},
        "redis": {"prefix": prefix},
        "candidates": candidates or [],
        "slices": slices or [],
    }
    return settings_from_mapping(raw, environ={})


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll until `predicate()` holds, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


@dataclass
class RunningProxy:
    """An in-process proxy serving both ports on 127.0.0.1."""

    app: ProxyApp
    url: str
    admin: str

    def value(self, name: str, **labels: str) -> float:
        """A metric's current value."""
        return self.app.metrics.value(name, labels)

    def outcome(self, candidate: str, outcome: str) -> float:
        """shadowtrial_mirror_outcomes_total for one candidate and outcome."""
        return self.value("shadowtrial_mirror_outcomes_total", candidate=candidate, outcome=outcome)

    def captured(self, candidate: str, outcome: str) -> float:
        """shadowtrial_capture_total for one candidate and outcome."""
        return self.value("shadowtrial_capture_total", candidate=candidate, outcome=outcome)

    def sampled(self, candidate: str) -> float:
        """shadowtrial_mirror_sampled_total for one candidate."""
        return self.value("shadowtrial_mirror_sampled_total", candidate=candidate)

    def settled(self, candidate: str) -> bool:
        """No mirror in flight and nothing waiting for Redis."""
        in_flight = self.value("shadowtrial_mirrors_in_flight", candidate=candidate)
        return in_flight == 0 and self.app.capture.depth == 0

    def check_accounting(self, candidate: str) -> None:
        """sampled = sum of mirror outcomes; candidate outcomes = recorded + dropped."""
        outcomes = {o: self.outcome(candidate, o) for o in MIRROR_OUTCOMES}
        assert self.sampled(candidate) == sum(outcomes.values()), outcomes
        handed = sum(outcomes[o] for o in HANDED)
        stored = self.captured(candidate, "recorded") + self.captured(candidate, "dropped")
        assert handed == stored, (outcomes, stored)


@contextmanager
def running_proxy(settings: Settings, redis_url: str) -> Iterator[RunningProxy]:
    """Serve a ProxyApp (its data port as [proxy] data_port says) and its admin app."""
    app = create_app(settings, redis_url)
    if settings.proxy.data_port == "native":
        with serve_proxy(app) as url, serve_app(app.admin) as admin:
            yield RunningProxy(app, url, admin)
        return
    quiet = {"server_header": False, "date_header": False, "proxy_headers": False}
    with serve_app(app, **quiet) as url, serve_app(app.admin) as admin:
        yield RunningProxy(app, url, admin)
