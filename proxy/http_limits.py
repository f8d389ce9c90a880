"""Three limits uvicorn's httptools protocol lacks: the size of a request head, the time
a client may take to send it, and the time it may take to send its body.

uvicorn (httptools) accepts a request head of any size, buffered in memory until it ends,
and waits for it forever; its only timer is the keep-alive one between requests. So one
client sending an endless header, or a few bytes a minute (slowloris), holds memory and a
connection for as long as it likes. `guarded_http(max_head_bytes, head_timeout_s)` is the
same protocol with both bounded: a head that grows past `proxy.max_header_bytes` gets 431,
a head not complete within `proxy.header_timeout_ms` of the connection opening (or of its
first byte, for a later request on a kept-alive connection) gets 408; either way the
connection is closed. Answers are JSON like the proxy's own errors.

A body not complete within `proxy.body_timeout_ms` of its head gets 408 too (while no
answer has started; after that the connection is only closed): without it, a client
sending a declared 1 MiB body a byte a second held its connection and the buffered part
for as long as it liked. Every refusal is reported to `on_refuse(reason)`, which the
server points at the `shadowtrial_http_refused_total` counter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head (see the module doc)."""

    max_head_bytes = 65_536
    head_timeout_s = 30.0
    body_timeout_s = 30.0
    on_refuse: Callable[[str], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request head (or waiting for the next one)
        self._head_bytes = 0
        self._head_ended = False  # a message ended inside the chunk being parsed
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._head_ended = False
        super().data_received(data)
        # Counted once parsed, so the body bytes that follow a head in one chunk never
        # count; a chunk in which a previous message ended is not counted at all.
        if self._in_head and not self._head_ended and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                detail = f"the request head is over {self.max_head_bytes} bytes"
                self._refuse(431, detail, "head_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm_body()
        super().on_message_complete()
        self._in_head = True
        self._head_ended = True

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.pipeline:  # queued behind an answer still being sent: its body waits too
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
            return
        if self.cycle is not None and self.cycle.response_started:
            self._count("body_timeout")
            self.transport.close()  # an answer is under way: no 408 can follow it
            return
        detail = f"the request body was not complete within {self.body_timeout_s:g} s"
        self._refuse(408, detail, "body_timeout")

    def _count(self, reason: str) -> None:
        if self.on_refuse is not None:
            self.on_refuse(reason)

    def _timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined head behind a response still being sent: wait
            return
        detail = f"the request head was not complete within {self.head_timeout_s:g} s"
        self._refuse(408, detail, "head_timeout")

    def _refuse(self, status: int, detail: str, reason: str) -> None:
        self._count(reason)
        body = orjson.dumps({"error": _REASONS[status].decode().lower(), "detail": detail})
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
        )
        self._disarm()
        self._disarm_body()
        self.transport.write(head + body)
        self.transport.close()


def guarded_http(
    max_head_bytes: int,
    head_timeout_s: float,
    body_timeout_s: float = 30.0,
    on_refuse: Callable[[str], None] | None = None,
) -> type[GuardedHttpTools]:
    """The protocol class for uvicorn.Config(http=...) with these limits."""
    limits = {
        "max_head_bytes": max_head_bytes,
        "head_timeout_s": head_timeout_s,
        "body_timeout_s": body_timeout_s,
        "on_refuse": staticmethod(on_refuse) if on_refuse is not None else None,
    }
    return type("GuardedHttpTools", (GuardedHttpTools,), limits)
