"""The data port's HTTP/1.1 server: an asyncio.Protocol on httptools, no ASGI in between.

Why: with shadowing off, uvicorn's ASGI layer (scope dicts, message dicts, flow-control
objects, a task and timers per request) was most of the proxy's CPU per request. This
server parses with httptools (llhttp, strict: conflicting Content-Length /
Transfer-Encoding, obs-fold, bad chunk sizes and every other framing ambiguity a
smuggling attack relies on get a JSON 400, counted as `reason="bad_request"`) and hands
each request to the handler as an `Exchange` (proxy.exchange).

Per connection: keep-alive, pipelining (requests handled one at a time, answers in
order), `Expect: 100-continue` (the 100 goes out when the handler first reads the body),
answers framed by the primary's Content-Length or else chunked (close-delimited for an
HTTP/1.0 client). Limits as proxy.http_limits gives uvicorn: a request head over
`max_head_bytes` gets 431, one not complete within `head_timeout_s` 408, a body not
complete within `body_timeout_s` of its head 408 (only a close once an answer started), a
kept-alive connection idle for `keepalive_s` is closed. The timeouts are enforced by one
periodic sweep over the connections, not a timer per request.

`stop(grace_s)` stops accepting, closes idle connections, lets requests in flight finish
(their connections close after the answer) and closes what is left after `grace_s`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import httptools
import orjson

from proxy.exchange import ClientGone, Exchange

log = logging.getLogger("shadowtrial.dataport")

Handler = Callable[[Exchange], Awaitable[None]]
_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus}
_HIGH_WATER = 256 * 1024  # request body bytes buffered per connection before pausing reads
_MAX_QUEUED = 32  # pipelined requests parsed ahead of the one being answered
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Refuse(Exception):
    """Raised from a parser callback to stop parsing and refuse the request."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


class Request(Exchange):
    """One request on a native data-port connection, and its answer."""

    __slots__ = (
        "_chunked",
        "_chunks",
        "_complete",
        "_conn",
        "_continue",
        "_ended",
        "_head",
        "_no_body",
        "_waiter",
        "body_since",
        "http11",
        "keep_alive",
        "started",
        "url",
    )  # fmt: skip

    def __init__(self, conn: _Connection) -> None:
        super().__init__()
        self._conn = conn
        self.url = b""
        self._chunks: collections.deque[bytes] = collections.deque()
        self._complete = False
        self._waiter: asyncio.Future[None] | None = None
        self._continue = False
        self.keep_alive = True
        self.http11 = True
        self.body_since = 0.0
        self.started = False  # the answer's head was handed to `start`
        self._ended = False
        self._head = b""
        self._chunked = False
        self._no_body = False

    # -- the request body --
    def _feed(self, body: bytes) -> None:
        self._chunks.append(body)
        self._wake()

    def _done(self) -> None:
        self._complete = True
        self._continue = False
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> tuple[bytes, bool]:
        conn = self._conn
        while not self._chunks and not self._complete:
            if conn.lost:
                raise ClientGone
            if self._continue:  # the client waits for a go-ahead before its body
                self._continue = False
                conn.write(_CONTINUE)
            self._waiter = conn.loop.create_future()
            await self._waiter
        chunks = self._chunks
        if self._complete:  # all of it is here: one piece
            body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            conn.consumed(len(body))
            return body, False
        chunk = chunks.popleft()
        conn.consumed(len(chunk))
        return chunk, True

    # -- the answer --
    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        conn = self._conn
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
        sized = False
        for name, value in headers:
            if name == b"content-length":
                sized = True
            lines.append(b"%s: %s\r\n" % (name, value))
        self._no_body = self.method == "HEAD" or status in (204, 304) or status < 200
        if not sized and not self._no_body:
            if self.http11:
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 client reads to the close
        if not self._complete and conn.parsing_body(self):
            self.keep_alive = False  # the rest of the body would have to be read first
        if conn.closing:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        self._head = b"".join(lines)

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        data = self._frame(chunk)
        if self._head:
            data, self._head = self._head + data, b""
        await self._conn.send(data)

    async def end(self, chunk: bytes = b"") -> None:
        data = self._frame(chunk) if chunk else b""
        if self._chunked:
            data += b"0\r\n\r\n"
        if self._head:
            data, self._head = self._head + data, b""
        self._ended = True
        if data:
            self._conn.write(data)

    def _frame(self, chunk: bytes) -> bytes:
        if self._no_body:
            return b""
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    async def wait_disconnect(self) -> None:
        await asyncio.shield(self._conn.lost_future())


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order, enforce the limits."""

    def __init__(self, port: DataPort) -> None:
        self.port = port
        self.loop = port.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: str | None = None
        self.lost = False
        self.closing = False
        self._lost: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._queue: collections.deque[Request] = collections.deque()
        self._parsing: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._buffered = 0
        self._paused = False
        self._upgraded = False
        self._head_bytes = 0  # header names and values of the head being parsed
        self._head_raw = 0  # bytes received while that head is incomplete
        self._message_ended = False
        self.head_since: float | None = self.loop.time()  # a head is awaited (slowloris)
        self.idle_since = self.head_since

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.port.connections.discard(self)
        for request in self._queue:
            request._wake()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self.lost:
            return
        self._message_ended = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded = True  # answered like any request, then the connection closes
            return
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__ if isinstance(exc.__context__, _Refuse) else None
            if refusal is None:
                raise
            self.refuse(refusal.status, refusal.reason, str(refusal))
            return
        except httptools.HttpParserError as exc:
            self.refuse(400, "bad_request", f"the request is not valid HTTP/1.1: {exc}")
            return
        # Counted once parsed, so body bytes after a head in the same read never count
        # (httptools holds a header's bytes until it is complete: this bounds them).
        if self.head_since is not None and not self._message_ended and self._parsing:
            self._head_raw += len(data)
            if self._head_raw > self.port.max_head_bytes:
                self._head_too_large()

    def _head_too_large(self) -> None:
        detail = f"the request head is over {self.port.max_head_bytes} bytes"
        self.refuse(431, "head_too_large", detail)

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        self._parsing = Request(self)
        self._head_bytes = self._head_raw = 0
        if self.head_since is None:
            self.head_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        request = self._parsing
        if request is not None:
            request.url += url
            if len(request.url) > self.port.max_head_bytes:
                raise _Refuse(431, "head_too_large", "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        if request is not None:
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > self.port.max_head_bytes:
                detail = f"the request head is over {self.port.max_head_bytes} bytes"
                raise _Refuse(431, "head_too_large", detail)
            request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self._parsing
        if request is None:
            return
        parser = self.parser
        request.method = parser.get_method().decode("latin-1")
        request.http11 = parser.get_http_version() == "1.1"
        request.keep_alive = parser.should_keep_alive()
        request.client = self.client
        self._split_target(request)
        request._continue = any(
            n == b"expect" and v.lower() == b"100-continue" for n, v in request.headers
        )
        self.head_since = None
        request.body_since = self.loop.time()
        self._queue.append(request)
        if self._task is None:
            self._task = self.loop.create_task(self._run())
        if len(self._queue) > _MAX_QUEUED:
            self._pause()

    def _split_target(self, request: Request) -> None:
        url = request.url
        if not url.startswith(b"/"):  # absolute-form or "*": the path and query only
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Refuse(400, "bad_request", "the request target does not parse") from None
            request.path = parsed.path or b"/"
            request.query = parsed.query or b""
            return
        path, _, query = url.partition(b"?")
        request.path = path
        request.query = query.partition(b"#")[0]

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None:
            request._feed(body)
            self._buffered += len(body)
            if self._buffered > _HIGH_WATER:
                self._pause()

    def on_message_complete(self) -> None:
        request = self._parsing
        self._message_ended = True
        self._parsing = None
        if request is not None:
            request._done()

    # -- flow control --
    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self.lost:
            self._paused = False
            self.transport.resume_reading()

    def consumed(self, size: int) -> None:
        """The handler took `size` body bytes: read again once little is buffered."""
        self._buffered -= size
        if self._paused and self._buffered < _HIGH_WATER // 4 and len(self._queue) <= _MAX_QUEUED:
            self._resume()

    def parsing_body(self, request: Request) -> bool:
        """True while `request`'s body is still arriving."""
        return self._parsing is request

    def lost_future(self) -> asyncio.Future[None]:
        """Resolves when the client's connection is gone."""
        if self._lost is None:
            self._lost = self.loop.create_future()
            if self.lost:
                self._lost.set_result(None)
        return self._lost

    # -- writing --
    def write(self, data: bytes) -> None:
        """Write without waiting (dropped once the client is gone)."""
        if not self.lost and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def send(self, data: bytes) -> None:
        """Write, then wait while the client's socket is full (a slow reader)."""
        self.write(data)
        if self._drain is not None:
            await self._drain
        if self.lost:
            raise ClientGone

    # -- answering in order --
    async def _run(self) -> None:
        try:
            while self._queue and not self.lost:
                request = self._queue[0]
                if not request._complete:
                    request.body_since = self.loop.time()
                if not await self._answer(request):
                    return
                self._queue.popleft()
                self._buffered -= sum(len(c) for c in request._chunks)
                if self._upgraded or not request.keep_alive:
                    self.close()
                    return
                self._resume()
            if not self._queue:
                self.idle_since = self.loop.time()
                if self.closing and self._parsing is None:
                    self.close()
        finally:
            self._task = None

    async def _answer(self, request: Request) -> bool:
        """Run the handler; False when the connection cannot carry another request."""
        try:
            await self.port.handler(request)
        except ClientGone:
            self.close()
            return False
        except Exception:
            if not request.started:
                log.exception("the data-port handler failed")
                self.refuse(500, "", "internal error")
            else:  # an answer is under way: closing early is the only signal left
                self.close()
            return False
        if not request._ended:
            self.close()
            return False
        return True

    # -- limits --
    def sweep(self, now: float) -> None:
        """Enforce the head, body and keep-alive timeouts (called by the port's sweep)."""
        port = self.port
        if self.lost:
            return
        if self._queue:
            request = self._queue[0]
            if not request._complete and now - request.body_since > port.body_timeout_s:
                self._body_timed_out(request)
            return
        if self.head_since is not None:
            if now - self.head_since > port.head_timeout_s:
                detail = f"the request head was not complete within {port.head_timeout_s:g} s"
                self.refuse(408, "head_timeout", detail)
        elif now - self.idle_since > port.keepalive_s:
            self.close()

    def _body_timed_out(self, request: Request) -> None:
        if request.started:
            self.port.count("body_timeout")
            self.close()  # an answer is under way: no 408 can follow it
            return
        detail = f"the request body was not complete within {self.port.body_timeout_s:g} s"
        self.refuse(408, "body_timeout", detail)

    def refuse(self, status: int, reason: str, detail: str) -> None:
        """Answer `status` with a JSON error (if no answer is under way) and close."""
        if reason:
            self.port.count(reason)
        answering = any(r.started for r in self._queue)
        if not answering:
            phrase = _REASONS.get(status, b"")
            body = orjson.dumps({"error": phrase.decode().lower(), "detail": detail})
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, phrase, len(body))
            )
            self.write(head + body)
        self.close()

    def shutdown(self) -> None:
        """Stop taking requests: close now when idle, else after the answer in flight."""
        self.closing = True
        if not self._queue and self._parsing is None:
            self.close()

    def close(self) -> None:
        """Close the connection (idempotent); a handler waiting on it sees ClientGone."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class DataPort:
    """The native data-port server: `start(sock)`, then `stop(grace_s)`."""

    def __init__(
        self,
        handler: Handler,
        max_head_bytes: int = 65_536,
        head_timeout_s: float = 30.0,
        body_timeout_s: float = 30.0,
        keepalive_s: float = 65.0,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.handler = handler
        self.max_head_bytes = max_head_bytes
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s
        self.keepalive_s = keepalive_s
        self._on_refuse = on_refuse
        self.connections: set[_Connection] = set()
        self.loop: asyncio.AbstractEventLoop  # set by start()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        shortest = min(head_timeout_s, body_timeout_s, keepalive_s)
        self._sweep_s = max(0.05, min(1.0, shortest / 4))

    def count(self, reason: str) -> None:
        """Count one refused request (shadowtrial_http_refused_total{reason})."""
        if self._on_refuse is not None:
            self._on_refuse(reason)

    async def start(self, sock: socket.socket) -> None:
        """Serve on a listening socket (inside the serving loop)."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: _Connection(self), sock=sock, backlog=4096
        )
        self._sweeper = self.loop.call_later(self._sweep_s, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.sweep(now)
        self._sweeper = self.loop.call_later(self._sweep_s, self._sweep)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; let requests in flight finish within `grace_s`, then close."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + grace_s
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
