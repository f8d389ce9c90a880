"""The hot path: forward one request to the primary and stream its answer back unchanged.

Per request: one pass over the request headers (hop-by-hop dropped, X-Request-ID checked
or generated, X-Forwarded-For / -Proto added), the body read (fully when it is at most
max_capture_bytes, so it can be mirrored; streamed through otherwise), the mirror
decision, then the primary exchange over a keep-alive pool (proxy.upstream). The primary's
status and headers (minus hop-by-hop) go out as soon as they arrive, body chunks as they
arrive. Primary unreachable: 502 JSON; no answer within proxy.primary_timeout_ms: 504 JSON.

Everything here is written for speed: an `Exchange` (proxy.exchange) instead of ASGI
messages, precomputed header tables, no per-request logging, no copy of the answer unless
the request is mirrored. A canary candidate is still asked over aiohttp (proxy.canary).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson

from common.settings import Settings
from proxy.canary import SERVED_BY, CanaryAnswer, CanaryCounts, ask, shadow_primary
from proxy.exchange import ClientGone, Exchange
from proxy.metrics import Metrics
from proxy.mirror import Mirror, PrimaryAnswer
from proxy.routing import CanaryTarget, RoutingTable
from proxy.runner import MirrorRequest
from proxy.upstream import UpstreamError, UpstreamResponse, Upstreams, UpstreamTimeout

log = logging.getLogger("shadowtrial.forward")

# Request headers never forwarded: hop-by-hop ones (RFC 9110 7.6.1), Host (the primary's
# own is set by the client library), Content-Length / Transfer-Encoding (recomputed from
# the body actually sent) and Expect (the body is already read).
_DROP, _LENGTH, _CONNECTION, _REQUEST_ID, _XFF, _PROTO = range(6)
_REQUEST_ACTIONS: dict[bytes, int] = {
    b"host": _DROP,
    b"transfer-encoding": _DROP,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"proxy-authorization": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"upgrade": _DROP,
    b"expect": _DROP,
    b"content-length": _LENGTH,
    b"connection": _CONNECTION,
    b"x-request-id": _REQUEST_ID,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _PROTO,
}
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-shadowtrial-served-by",  # the proxy says who answered, not the upstream
    }
)
# A body chunk from uvicorn is at most its flow-control high-water mark (64 KiB) plus one
# socket read (uvloop: 256 KiB); reserved per connection while it waits for the next one.
_CHUNK_RESERVE = 320 * 1024
_SAFE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}").fullmatch
_JSON = [(b"content-type", b"application/json")]


class RequestIds:
    """Unpredictable request ids (32 hex digits, 128 random bits each).

    Not a prefix and a counter: the label join is keyed by request id, and an id a client
    can predict is one it can send first to claim another request's label. The bytes come
    from the OS's CSPRNG 256 ids at a time: one getrandom call per request was ~9% of the
    forward path's CPU. Nothing is shared across processes (workers are spawned, and a
    forked child refills before its first id)."""

    _BATCH = 16 * 256

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0
        self._pid = os.getpid()

    def new(self) -> str:
        """A fresh request id."""
        at = self._at
        if at >= len(self._hex) or os.getpid() != self._pid:  # a forked child refills
            self._hex = secrets.token_bytes(self._BATCH).hex()
            self._pid = os.getpid()
            at = 0
        self._at = at + 32
        return self._hex[at : at + 32]


class _Incoming:
    """What the header pass learned about a request."""

    __slots__ = ("content_length", "headers", "proto", "request_id", "sample_value", "xff")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.request_id = ""
        self.content_length = -1
        self.sample_value: str | None = None
        self.xff: bytes | None = None
        self.proto = False


class Forwarder:
    """Forwards data-port requests to the routing table's primary; starts mirrors."""

    def __init__(
        self, settings: Settings, routing: RoutingTable, mirror: Mirror, metrics: Metrics
    ) -> None:
        self._routing = routing
        self._mirror = mirror
        self._metrics = metrics
        self._limit = settings.proxy.max_capture_bytes
        self._max_buffered = settings.proxy.max_buffered_bytes
        self._buffered = 0  # bytes of request bodies being read right now, all connections
        self._timeout_s = settings.proxy.primary_timeout_ms / 1000
        self._pool_size = max(1024, settings.proxy.mirror_concurrency * 4)
        self._ids = RequestIds()
        self._actions = dict(_REQUEST_ACTIONS)
        header = mirror.policy.sample_header
        self._sample_header = None if header is None else header.encode("latin-1")
        self._session: aiohttp.ClientSession | None = None
        self._upstreams = Upstreams(self._timeout_s, self._pool_size)
        self.canary_counts = CanaryCounts(metrics.registry)

    async def start(self) -> None:
        """Open the canary's aiohttp session (inside the serving loop); the primary's
        pool (proxy.upstream) connects on first use."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=0, keepalive_timeout=60
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must never mix clients' cookies
            auto_decompress=False,  # bodies pass through as sent, Content-Encoding intact
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s
            ),
        )

    async def close(self) -> None:
        """Close the upstream sessions."""
        self._upstreams.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, ex: Exchange) -> None:
        """Handle one HTTP request on the data port."""
        try:
            incoming = self._read_headers(ex)
        except UnicodeDecodeError:
            await self._refuse_header(ex)
            return
        try:
            body, stream, too_large = await self._read_body(ex, incoming.content_length)
        except ClientGone:
            return
        method = ex.method
        path_text = ex.path.decode("latin-1")
        query = ex.query.decode("latin-1")
        primary: asyncio.Future[PrimaryAnswer] | None = None
        mirrors = self._routing.mirrors
        policy = self._mirror.policy
        key = incoming.sample_value or incoming.request_id
        canary = self._routing.canary
        # Path normalisation only when something could take the request (most have nothing).
        watching = self._mirror.watch_sample > 0
        eligible = bool(mirrors or canary or watching) and method in policy.methods
        eligible = eligible and policy.path_allowed(path_text)
        target = self.canary_counts.pick(canary, key) if eligible and stream is None else None
        if target is not None:
            path_query = f"{path_text}?{query}" if query else path_text
            if await self._serve_canary(ex, target, path_query, incoming, body or b""):
                return
            mirrors = ()  # its candidate already saw this request (and failed it)
        if (mirrors or watching) and eligible:
            request = MirrorRequest(
                incoming.request_id, method, path_text, query, incoming.headers, body or b""
            )
            primary = self._mirror.start(mirrors, key, request, too_large)
        target_bytes = ex.path + b"?" + ex.query if ex.query else ex.path
        data = body if stream is None else stream
        await self._exchange(ex, target_bytes, incoming, data, primary)

    async def _serve_canary(
        self,
        ex: Exchange,
        target: CanaryTarget,
        path_query: str,
        incoming: _Incoming,
        body: bytes,
    ) -> bool:
        """Answer from the candidate on canary; False (counted) when the primary must."""
        assert self._session is not None, "Forwarder.start() was not called"
        method = ex.method
        started = time.perf_counter()
        answer = await ask(
            self._session, target, method, path_query, incoming.headers, body, self._limit
        )
        if not isinstance(answer, CanaryAnswer):
            self.canary_counts.count(target.name, answer)
            return False
        elapsed = time.perf_counter() - started
        self.canary_counts.served(target.name, elapsed)
        headers, _, sized = _response_headers(answer.raw_headers, incoming.request_id)
        if not sized and method != "HEAD":  # read whole, so now it has a length
            headers.append((b"content-length", str(len(answer.body)).encode()))
        headers.append((SERVED_BY, target.name.encode()))
        self._metrics.request_done(method, answer.status, None)  # not the primary's latency
        await ex.start(answer.status, headers)
        await ex.end(answer.body)
        path, _, query = path_query.partition("?")
        request = MirrorRequest(incoming.request_id, method, path, query, incoming.headers, body)
        key = incoming.sample_value or incoming.request_id
        shadow_primary(self._mirror, self._session, self._routing, target, request, key, answer,
                       elapsed, self._timeout_s, self._limit)  # fmt: skip
        return True

    def _read_headers(self, ex: Exchange) -> _Incoming:
        """One pass over the request headers: what to forward and what to remember.

        Values are decoded as UTF-8 because aiohttp encodes them as UTF-8: the primary and
        the candidates then get the client's exact bytes (UnicodeDecodeError otherwise)."""
        out = _Incoming()
        headers = out.headers
        actions = self._actions
        connection: list[bytes] = []
        for name, value in ex.headers:
            action = actions.get(name)
            if action is None:
                headers.append((name.decode("latin-1"), value.decode()))
                if name == self._sample_header and out.sample_value is None:
                    out.sample_value = value.decode()
            elif action == _LENGTH:
                out.content_length = int(value) if value.isdigit() else -1
            elif action == _REQUEST_ID:
                # Not forwarded as sent unless printable ASCII (else replaced): any decoding.
                out.request_id = out.request_id or value.decode("latin-1")
            elif action == _XFF:
                out.xff = value if out.xff is None else out.xff + b", " + value
            elif action == _PROTO:
                out.proto = True
                headers.append(("x-forwarded-proto", value.decode()))
            elif action == _CONNECTION:
                connection.append(value)
        if connection:
            _drop_connection_listed(headers, connection)
        self._add_forwarding(out, ex)
        return out

    def _add_forwarding(self, out: _Incoming, ex: Exchange) -> None:
        """X-Request-ID (kept when safe, else a fresh one), X-Forwarded-For / -Proto."""
        if not out.request_id or not _SAFE_REQUEST_ID(out.request_id):
            out.request_id = self._ids.new()
        headers = out.headers
        headers.append(("x-request-id", out.request_id))
        client = ex.client
        xff = out.xff.decode() if out.xff else ""
        if client:
            headers.append(("x-forwarded-for", f"{xff}, {client}" if xff else client))
        elif xff:
            headers.append(("x-forwarded-for", xff))
        if not out.proto:
            headers.append(("x-forwarded-proto", ex.scheme))

    async def _read_body(
        self, ex: Exchange, declared: int
    ) -> tuple[bytes | None, AsyncIterator[bytes] | None, bool]:
        """(body, None, too_large) when read whole; (None, stream, True) when too large
        to hold (declared or found over max_capture_bytes), or when the bodies being read
        by this process already hold proxy.max_buffered_bytes (slow clients must not pin
        memory): it is streamed to the primary, not mirrored (counted too_large)."""
        limit = self._limit
        if declared > limit:
            return None, _stream_body(ex, []), True
        body, more = await ex.receive()
        if not more:
            return body, None, len(body) > limit
        parts = [body]
        held = 0  # bytes of this body counted in self._buffered
        try:
            size = len(body)
            while size <= limit:
                # What is held, plus room for the chunk about to arrive: reserved before
                # the wait, so many connections waiting at once cannot overshoot together.
                want = size + _CHUNK_RESERVE
                if self._buffered + want - held > self._max_buffered:
                    self._metrics.body_buffer_full.inc()  # memory first: stream it through
                    break
                self._buffered += want - held
                held = want
                chunk, more = await ex.receive()
                parts.append(chunk)
                size += len(chunk)
                if not more:
                    return b"".join(parts), None, size > limit
        finally:
            self._buffered -= held
        return None, _stream_body(ex, parts), True

    async def _exchange(
        self,
        ex: Exchange,
        target: bytes,
        incoming: _Incoming,
        data: bytes | AsyncIterator[bytes] | None,
        primary: asyncio.Future[PrimaryAnswer] | None,
    ) -> None:
        """Send to the primary and relay its answer; always resolves `primary`."""
        method = ex.method
        started = time.perf_counter()
        try:
            pool = self._upstreams.pool(self._routing.primary)
            resp = await pool.request(
                method, target, incoming.headers, data or None, incoming.content_length
            )
        except TimeoutError:
            await self._fail(ex, 504, "primary timeout",
                             f"no answer within {self._timeout_s * 1000:.0f} ms",
                             incoming, primary, started)  # fmt: skip
            return
        except (OSError, ValueError) as exc:
            await self._fail(ex, 502, "primary unreachable", _describe(exc),
                             incoming, primary, started)  # fmt: skip
            return
        except ClientGone:
            _resolve(primary, PrimaryAnswer(0, b"", "", 0.0, failed=True))
            return
        except BaseException:
            _resolve(primary, PrimaryAnswer(0, b"", "", 0.0, failed=True))
            raise
        await self._relay(ex, resp, incoming, primary, started)

    async def _relay(
        self,
        ex: Exchange,
        resp: UpstreamResponse,
        incoming: _Incoming,
        primary: asyncio.Future[PrimaryAnswer] | None,
        started: float,
    ) -> None:
        headers, content_type, sized = _response_headers(resp.raw_headers, incoming.request_id)
        headers.append((SERVED_BY, self._routing.primary_name))
        copy: list[bytes] | None = [] if primary is not None else None
        answered: float | None = None
        # An unsized answer (chunked, server-sent events) may never end: stop reading it
        # when the client goes away. A sized one is read to its end.
        watcher = None
        if not sized and not resp.at_eof:
            watcher = asyncio.get_running_loop().create_task(_close_on_disconnect(ex, resp))
        try:
            await ex.start(resp.status, headers)
            answered = await self._relay_body(ex, resp, copy)
        except (UpstreamError, UpstreamTimeout) as exc:
            if watcher is None or not watcher.done():
                # The primary failed mid-answer: the only honest signal left is to abort.
                _warn_sometimes("primary answer broken", _describe(exc))
                raise
        finally:
            if watcher is not None:
                watcher.cancel()
            self._finish(ex.method, resp, answered, started, content_type, copy, primary)

    def _finish(
        self,
        method: str,
        resp: UpstreamResponse,
        answered: float | None,
        started: float,
        content_type: str,
        copy: list[bytes] | None,
        primary: asyncio.Future[PrimaryAnswer] | None,
    ) -> None:
        """Count the exchange, give its connection back, hand the mirror its copy."""
        complete = answered is not None
        # The primary's latency ends with its last byte, before it is relayed: a slow
        # client must not make the primary look slow next to a candidate (whose time
        # ends with its answer too).
        elapsed = (answered if answered is not None else time.perf_counter()) - started
        if complete:
            resp.release()
        else:
            resp.close()
        self._metrics.request_done(method, resp.status, elapsed if complete else None)
        if primary is not None and copy is not None:
            body = copy[0] if len(copy) == 1 else b"".join(copy)
            if len(body) > self._limit:
                body = body[: self._limit]
            answer = PrimaryAnswer(resp.status, body, content_type, elapsed * 1000, not complete)
            _resolve(primary, answer)

    async def _relay_body(
        self, ex: Exchange, resp: UpstreamResponse, copy: list[bytes] | None
    ) -> float:
        """Forward body chunks as they arrive; keep a copy up to the capture limit.

        Returns the moment (perf_counter) the primary's answer was complete."""
        kept = 0
        limit = self._limit
        while True:
            chunk = await resp.read()
            if not chunk:
                answered = time.perf_counter()
                await ex.end()
                return answered
            if copy is not None and kept <= limit:
                copy.append(chunk)
                kept += len(chunk)
            if resp.at_eof:
                answered = time.perf_counter()
                await ex.end(chunk)
                return answered
            await ex.write(chunk)

    async def _fail(
        self,
        ex: Exchange,
        status: int,
        error: str,
        detail: str,
        incoming: _Incoming,
        primary: asyncio.Future[PrimaryAnswer] | None,
        started: float,
    ) -> None:
        body = orjson.dumps({"error": error, "detail": detail})
        elapsed_ms = (time.perf_counter() - started) * 1000
        _resolve(primary, PrimaryAnswer(status, body, "application/json", elapsed_ms, failed=True))
        self._metrics.request_done(ex.method, status, None)
        _warn_sometimes(error, detail)
        headers = [*_JSON, (b"x-request-id", incoming.request_id.encode("latin-1"))]
        await ex.start(status, headers)
        await ex.end(body)

    async def _refuse_header(self, ex: Exchange) -> None:
        """400 for header bytes that are not UTF-8: they cannot be forwarded unchanged."""
        incoming = _Incoming()
        incoming.request_id = self._ids.new()
        detail = "a header value is not valid UTF-8; it cannot be forwarded unchanged"
        await self._fail(ex, 400, "bad request", detail, incoming, None, 0.0)


def _response_headers(
    raw: tuple[tuple[bytes, bytes], ...], request_id: str
) -> tuple[list[tuple[bytes, bytes]], str, bool]:
    """The primary's headers minus hop-by-hop ones, plus X-Request-ID when it set none;
    also its content type and whether it declared a Content-Length."""
    headers: list[tuple[bytes, bytes]] = []
    content_type = ""
    has_id = sized = False
    for name, value in raw:
        lname = name.lower()
        if lname in _RESPONSE_DROP:
            continue
        if lname == b"content-type":
            content_type = value.decode("latin-1")
        elif lname == b"content-length":
            sized = True
        elif lname == b"x-request-id":
            has_id = True
        headers.append((lname, value))
    if not has_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    return headers, content_type, sized


def _drop_connection_listed(headers: list[tuple[str, str]], values: list[bytes]) -> None:
    """Remove headers the client named in Connection (they are hop-by-hop too)."""
    named = {
        token.strip().lower().decode("latin-1") for value in values for token in value.split(b",")
    }
    named -= {"close", "keep-alive", ""}
    if named:
        headers[:] = [(n, v) for n, v in headers if n not in named]


async def _stream_body(ex: Exchange, head: list[bytes]) -> AsyncIterator[bytes]:
    """The rest of a large request body, as it arrives from the client (the parts read
    already are let go of as they are sent: a stalled body must not pin them)."""
    head.reverse()
    while head:
        yield head.pop()
    while True:
        chunk, more = await ex.receive()
        yield chunk
        if not more:
            return


async def _close_on_disconnect(ex: Exchange, resp: UpstreamResponse) -> None:
    """Close the primary's answer when the client disconnects (the relay loop then ends)."""
    await ex.wait_disconnect()
    resp.close()


def _resolve(future: asyncio.Future[PrimaryAnswer] | None, answer: PrimaryAnswer) -> None:
    if future is not None and not future.done():
        future.set_result(answer)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]


_last_warning: dict[str, float] = {}


def _warn_sometimes(error: str, detail: str, every_s: float = 10.0) -> None:
    """A primary that is down fails every request: log it once per interval, not each time."""
    now = time.monotonic()
    if now - _last_warning.get(error, -every_s) >= every_s:
        _last_warning[error] = now
        log.warning("%s: %s", error, detail)
