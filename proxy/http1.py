"""A minimal HTTP/1.1 client for mirrored requests: one write out, one parsed answer back.

Why not aiohttp here: a mirror needs no streaming, redirects, cookies or traces, and
with every request mirrored the candidate's client costs as much CPU as the primary's.
This client keeps a pool of keep-alive connections per candidate, writes each request
in a single `transport.write`, and parses the answer with httptools (the parser uvicorn
uses). It reads answers of any framing (Content-Length, chunked, until close) and keeps
at most `max_body` bytes of the body. Errors are raised as `TimeoutError`, `OSError`
(refused, reset, closed early) or `ProtocolError` (an answer that does not parse); the
candidate runner turns them into outcomes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

import httptools

from common.errors import DecodeError


class ProtocolError(DecodeError):
    """The peer's answer is not valid HTTP/1.x (the candidate runner counts it as `error`)."""


class Answer:
    """One parsed answer: status, content type, body (at most max_body bytes).

    `connect_ms` is the time spent opening a connection for it (0.0 on a pooled one),
    so a caller can time the exchange alone: a fresh TCP (or TLS) handshake is the
    proxy's cost, not the model's, and a pool that grows under a burst would otherwise
    make a candidate look slower than a primary reached over warm connections.
    """

    __slots__ = ("body", "connect_ms", "content_type", "status")

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body
        self.connect_ms = 0.0


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one exchange at a time."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiter: asyncio.Future[Answer] | None = None
        self._reset_exchange(head_only=False)

    def _reset_exchange(self, head_only: bool) -> None:
        self._head_only = head_only
        self._parts: list[bytes] = []
        self._kept = 0
        self._content_type = b""
        self._header_name = b""
        self._headers_done = False
        self._keep_alive = False
        self._received = False

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._waiter is None:  # unexpected bytes between exchanges: not reusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"bad HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._head_only:
            # An answer delimited by the end of the connection ends here.
            self._finish()
            return
        error = ConnectionResetError("connection closed before a complete answer")
        error.retryable = not self._received  # type: ignore[attr-defined]
        self._fail(error)

    # -- httptools callbacks --
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self._content_type = value

    def on_headers_complete(self) -> None:
        self._headers_done = True
        # Asked here: once the message is complete the parser has reset its flags.
        self._keep_alive = self._parser.should_keep_alive()
        if self._head_only:  # the parser cannot be told a HEAD answer has no body
            self._finish()
            self.close()

    def on_body(self, body: bytes) -> None:
        room = self._max_body - self._kept
        if room > 0:
            self._parts.append(body if len(body) <= room else body[:room])
            self._kept += min(len(body), room)

    def on_message_complete(self) -> None:
        self._finish()

    # -- exchange --
    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        status = self._parser.get_status_code()
        waiter.set_result(Answer(status, self._content_type.decode("latin-1"), body))

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def send(self, data: bytes, head_only: bool) -> asyncio.Future[Answer]:
        """Write one request; the future resolves with its answer."""
        assert self.transport is not None
        self._reset_exchange(head_only)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def done(self) -> bool:
        """True when the last answer was complete and the connection can carry another."""
        reusable = not self.closed and self._keep_alive
        self._waiter = None
        if not reusable:
            self.close()
        return reusable

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Client:
    """Keep-alive connections to one base URL, for request/answer exchanges."""

    def __init__(self, base_url: str, max_body: int, max_idle: int = 256) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        default_port = self._port == (443 if self._ssl else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        authority = host if default_port else f"{host}:{self._port}"
        self._host_header = f"\r\nhost: {authority}"
        self._max_body = max_body
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> Answer:
        """One exchange, bounded by `timeout_s` in total (TimeoutError when exceeded)."""
        data = self._encode(method, target, headers, body)
        async with asyncio.timeout(timeout_s):
            try:
                return await self._exchange(data, method == "HEAD", allow_fresh_retry=True)
            except ConnectionResetError as exc:
                if not getattr(exc, "retryable", False):
                    raise
                # A pooled connection the peer had already closed: one retry on a new one.
                # (The failed attempt's time stays in the caller's span: it is rare.)
                return await self._exchange(data, method == "HEAD", allow_fresh_retry=False)

    async def _exchange(self, data: bytes, head_only: bool, allow_fresh_retry: bool) -> Answer:
        started = time.perf_counter()
        conn, reused = await self._acquire(use_idle=allow_fresh_retry)
        connect_ms = 0.0 if reused else (time.perf_counter() - started) * 1000
        try:
            answer = await conn.send(data, head_only)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, ConnectionResetError) and not reused:
                exc.retryable = False  # type: ignore[attr-defined]
            raise
        answer.connect_ms = connect_ms
        if conn.done() and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    async def _acquire(self, use_idle: bool) -> tuple[_Connection, bool]:
        while use_idle and self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _Connection(self._max_body),
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl else None,
        )
        return conn, False

    def _encode(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> bytes:
        lines = [f"{method} {self._prefix}{target} HTTP/1.1", self._host_header]
        for name, value in headers:
            lines.append(f"\r\n{name}: {value}")
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(f"\r\ncontent-length: {len(body)}")
        lines.append("\r\n\r\n")
        head = "".join(lines).encode()  # header values are UTF-8 text (proxy.forward)
        return head + body if body else head

    async def close(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
