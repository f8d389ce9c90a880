"""The primary's client: streaming keep-alive HTTP/1.1 on httptools, one pool per upstream.

Why not aiohttp: on the hot path its layers (request/response objects, stream readers,
per-request timeout contexts) cost more CPU than the proxy's own work. This client writes
a request head in one `transport.write`, streams the body (a Content-Length one as it is,
an unsized stream chunked), and hands the answer back as it arrives: status and raw
headers first, then the body chunks byte-exact (Content-Length, chunked or until close).

Timeouts use one `loop.call_at` timer per exchange that re-arms itself from the last
activity, not `asyncio.wait_for` per request: connecting, and every wait for the primary's
bytes (head or body), is bounded by `timeout_s`, as aiohttp's sock_connect / sock_read
were. A pooled connection the primary had already closed (no byte of the answer came
back) is retried once on a fresh connection, for idempotent methods with a body held in
memory only: a POST may have been processed before the connection died.

At most `max_open` connections per upstream (the old aiohttp connector's limit, 1024 or
mirror_concurrency x 4): a request beyond it waits up to `timeout_s` for one.

Errors: `UpstreamTimeout` (a TimeoutError), `UpstreamError` (an OSError: refused, reset,
closed early, an answer that does not parse).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from common.errors import ShadowtrialError

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_HIGH_WATER = 256 * 1024  # answer bytes buffered before the primary's socket is paused
_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamError(ShadowtrialError, OSError):
    """The primary could not be reached, or its answer broke or does not parse."""


class UpstreamTimeout(ShadowtrialError, TimeoutError):
    """The primary sent nothing for `timeout_s` (connecting, or waiting for its answer)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the primary; one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.pool: UpstreamPool | None = None
        self._reset()

    def _reset(self) -> None:
        self.response: UpstreamResponse | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._framed = False  # Content-Length or chunked: the end is known without close
        self._head_only = False
        self.received = False
        self.keep_alive = False
        self.complete = False
        self._interim = False
        self._last = 0.0

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        self._last = self._loop.time()
        if self._head is None:  # bytes between exchanges: the connection is not reusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the primary switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad HTTP answer from the primary: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pool is not None:
            self.pool.slot_freed()
        self._wake_drain(exc)
        resp = self.response
        if self._head is not None and resp is not None and not self.complete:
            if not self._framed and not self._head_only:
                self._message_done()  # an answer delimited by the end of the connection
            else:
                resp._fail(UpstreamError("the primary closed the connection mid-answer"))
        elif self._head is not None and not self._head.done():
            error = UpstreamError("the primary closed the connection before answering")
            error.retryable = not self.received  # type: ignore[attr-defined]
            self._head.set_exception(error)
        self._cancel_timer()

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        self._wake_drain(None)

    def _wake_drain(self, exc: Exception | None) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            if exc is None and not self.closed:
                drain.set_result(None)
            else:
                drain.set_exception(UpstreamError("the primary closed the connection"))

    # -- httptools callbacks --
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))  # httptools joins a header split over reads

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (103): the final follows
            self._headers = []
            self._interim = True
            return
        self.keep_alive = parser.should_keep_alive()
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"content-length" or (
                lname == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self._framed = True
        resp = UpstreamResponse(self, status, tuple(self._headers))
        self.response = resp
        no_body = self._head_only or status in _NO_BODY_STATUS or status < 200
        head = self._head
        if head is not None and not head.done():
            head.set_result(resp)
        if no_body:
            self._framed = True
            self.keep_alive = self.keep_alive and not self._head_only
            self._message_done()
            if self._head_only:  # the parser cannot be told a HEAD answer has no body
                self.close()

    def on_body(self, body: bytes) -> None:
        resp = self.response
        if resp is not None and not self.complete:
            resp._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._message_done()

    def _message_done(self) -> None:
        if self.complete:
            return
        self.complete = True
        self._cancel_timer()
        if self.response is not None:
            self.response._feed_eof()

    # -- the exchange --
    def start(self, head_only: bool) -> asyncio.Future[UpstreamResponse]:
        """Begin an exchange; the future resolves with the answer's status and headers."""
        self._reset()
        self._head_only = head_only
        self._head = self._loop.create_future()
        return self._head

    async def write(self, data: bytes) -> None:
        """Write request bytes, waiting while the primary's socket is full."""
        if self.closed or self.transport is None:
            raise UpstreamError("the primary closed the connection")
        self.transport.write(data)
        if self._drain is not None:
            await self._drain

    def arm(self) -> None:
        """Start the silence timer: the request is sent, the answer is awaited."""
        self._last = self._loop.time()
        if self._timer is None and not self.complete:
            self._timer = self._loop.call_at(self._last + self._timeout_s, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.complete or self.closed:
            return
        if self.response is not None and self.response._paused:
            self._last = self._loop.time()  # we stopped reading (a slow client), not the primary
        due = self._last + self._timeout_s
        if self._loop.time() < due:  # something arrived meanwhile: wait from then
            self._timer = self._loop.call_at(due, self._check)
            return
        error = UpstreamTimeout(f"no answer within {self._timeout_s * 1000:.0f} ms")
        self._fail(error)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: BaseException) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
        elif self.response is not None and not self.complete:
            self.response._fail(exc)
        self.close()

    def resume(self) -> None:
        """The reader drained the buffered answer: read from the primary again."""
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def pause(self) -> None:
        """Too much answer buffered: stop reading until the client takes it."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def close(self) -> None:
        """Close the connection (idempotent); an answer still being read fails."""
        self.closed = True
        self._cancel_timer()
        if self.response is not None and not self.complete:
            self.response._fail(UpstreamError("the answer was abandoned"))
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """The primary's answer: `status`, `raw_headers` as received, then `read()` chunks."""

    __slots__ = ("_buffered", "_chunks", "_conn", "_eof", "_error", "_paused", "_waiter",
                 "raw_headers", "status")  # fmt: skip

    def __init__(
        self, conn: _Connection, status: int, raw_headers: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        self._conn = conn
        self.status = status
        self.raw_headers = raw_headers
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause()
        self._wake()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    @property
    def at_eof(self) -> bool:
        """True once the whole answer has been read."""
        return self._eof and not self._chunks

    async def read(self) -> bytes:
        """The next body chunk; b"" at the end. Raises UpstreamError / UpstreamTimeout."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = self._conn._loop.create_future()
            await self._waiter
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= _HIGH_WATER // 4:
            self._paused = False
            self._conn.resume()
        return chunk

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool when reusable."""
        pool = self._pool_of()
        if pool is not None:
            pool.give_back(self._conn)

    def close(self) -> None:
        """Abandon the answer (the client went away, or it broke): close its connection."""
        self._conn.close()

    def _pool_of(self) -> UpstreamPool | None:
        return self._conn.pool


class UpstreamPool:
    """Keep-alive connections to one upstream base URL: at most `max_open` at once (a
    request beyond it waits up to `timeout_s` for one, as aiohttp's connector limit made it
    wait), at most `max_idle` of them kept between requests."""

    def __init__(
        self, base_url: str, timeout_s: float, max_idle: int = 1024, max_open: int = 1024
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/").encode("latin-1")
        default = self._port == (443 if self._ssl else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_line = b"\r\nhost: " + (host if default else f"{host}:{self._port}").encode()
        self._timeout_s = timeout_s
        self._max_idle = max_idle
        self._max_open = max_open
        self._open = 0  # connections made and not yet lost (idle ones included)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle: list[_Connection] = []
        self.closed = False

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        length: int = -1,
    ) -> UpstreamResponse:
        """Send one request; the answer's head once it arrives (its body via `read()`).

        `body` is bytes (sent with its Content-Length) or a stream (`length` bytes when
        known, else chunked)."""
        head = self._head(method, target, headers, body, length)
        retry = method in IDEMPOTENT and not isinstance(body, AsyncIterator)
        try:
            return await self._exchange(method, head, body, length, fresh=False)
        except UpstreamError as exc:
            if not (retry and getattr(exc, "retryable", False)):
                raise
            # A pooled connection the primary had closed: once more on a new one.
            return await self._exchange(method, head, body, length, fresh=True)

    async def _exchange(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        length: int,
        fresh: bool,
    ) -> UpstreamResponse:
        conn, reused = await self._acquire(fresh)
        answer = conn.start(method == "HEAD")
        try:
            if isinstance(body, bytes | None):
                await conn.write(head + body if body else head)
            else:
                await conn.write(head)
                await _send_stream(conn, body, chunked=length < 0)
            conn.arm()
            return await answer
        except BaseException as exc:
            conn.close()
            if not reused and isinstance(exc, UpstreamError):
                exc.retryable = False  # type: ignore[attr-defined]
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()  # retrieved: the exception raised here is the one that counts
            raise

    async def _acquire(self, fresh: bool) -> tuple[_Connection, bool]:
        idle = self._idle
        while True:
            while idle and not fresh:
                conn = idle.pop()
                if not conn.closed:
                    return conn, True
            if self._open < self._max_open:
                break
            await self._wait_slot()
        self._open += 1
        try:
            conn = await self._connect()
        except BaseException:
            self.slot_freed()
            raise
        conn.pool = self
        return conn, False

    async def _wait_slot(self) -> None:
        """Wait until a connection is given back or closed (bounded by the timeout)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._timeout_s):
                await waiter
        except TimeoutError:
            limit = f"{self._timeout_s * 1000:.0f} ms"
            raise UpstreamTimeout(f"all {self._max_open} connections busy for {limit}") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def slot_freed(self) -> None:
        """A connection of this pool is gone: a waiting request may open one."""
        self._open -= 1
        self._wake_one()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self._timeout_s), self._host, self._port,
                    ssl=self._ssl, server_hostname=self._host if self._ssl else None,
                )  # fmt: skip
        except TimeoutError:
            limit = f"{self._timeout_s * 1000:.0f} ms"
            raise UpstreamTimeout(f"cannot connect within {limit}") from None
        except OSError as exc:
            error = UpstreamError(f"cannot connect to the primary: {exc.strerror or exc}")
            error.retryable = False  # type: ignore[attr-defined]
            raise error from None
        return conn

    def give_back(self, conn: _Connection) -> None:
        """Pool a connection whose answer was read to its end, if it can carry another."""
        reusable = conn.complete and conn.keep_alive and not conn.closed and not self.closed
        conn._head = None
        conn.response = None
        if reusable and len(self._idle) < self._max_idle:
            self._idle.append(conn)
            self._wake_one()
        else:
            conn.close()

    def _head(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        length: int,
    ) -> bytes:
        lines = [method, " "]
        for name, value in headers:
            lines.append(f"\r\n{name}: {value}")
        if isinstance(body, bytes | None):
            if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE"):
                lines.append(f"\r\ncontent-length: {len(body or b'')}")
        elif length >= 0:
            lines.append(f"\r\ncontent-length: {length}")
        else:
            lines.append("\r\ntransfer-encoding: chunked")
        lines.append("\r\n\r\n")
        start = lines[0].encode() + b" " + self.prefix + target + b" HTTP/1.1" + self._host_line
        return start + "".join(lines[2:]).encode()  # values are the client's UTF-8 text

    def close(self) -> None:
        """Close every idle connection; answers under way finish on theirs."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def _send_stream(conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    async for chunk in body:
        if not chunk:
            continue
        await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
    if chunked:
        await conn.write(b"0\r\n\r\n")


class Upstreams:
    """One pool per upstream base URL (the primary can change while serving)."""

    def __init__(self, timeout_s: float, max_open: int = 1024) -> None:
        self._timeout_s = timeout_s
        self._max_open = max_open
        self._pools: dict[str, UpstreamPool] = {}

    def pool(self, base_url: str) -> UpstreamPool:
        """The pool for this base URL (created on first use)."""
        pool = self._pools.get(base_url)
        if pool is None:
            pool = UpstreamPool(base_url, self._timeout_s, self._max_open, self._max_open)
            self._pools[base_url] = pool
        return pool

    def close(self) -> None:
        """Close every pool's idle connections."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
