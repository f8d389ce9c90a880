"""Two limits uvicorn's httptools protocol lacks: the size of a request head and the time
a client may take to send it.

uvicorn (httptools) accepts a request head of any size, buffered in memory until it ends,
and waits for it forever; its only timer is the keep-alive one between requests. So one
client sending an endless header, or a few bytes a minute (slowloris), holds memory and a
connection for as long as it likes. `guarded_http(max_head_bytes, head_timeout_s)` is the
same protocol with both bounded: a head that grows past `proxy.max_header_bytes` gets 431,
a head not complete within `proxy.header_timeout_ms` of the connection opening (or of its
first byte, for a later request on a kept-alive connection) gets 408; either way the
connection is closed. Answers are JSON like the proxy's own errors. Bodies are not
affected (they stream to the primary under proxy.primary_timeout_ms).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head (see the module doc)."""

    max_head_bytes = 65_536
    head_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request head (or waiting for the next one)
        self._head_bytes = 0
        self._head_ended = False  # a message ended inside the chunk being parsed
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._head_ended = False
        super().data_received(data)
        # Counted once parsed, so the body bytes that follow a head in one chunk never
        # count; a chunk in which a previous message ended is not counted at all.
        if self._in_head and not self._head_ended and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, f"the request head is over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
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

    def _timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined head behind a response still being sent: wait
            return
        self._refuse(408, f"the request head was not complete within {self.head_timeout_s:g} s")

    def _refuse(self, status: int, detail: str) -> None:
        body = orjson.dumps({"error": _REASONS[status].decode().lower(), "detail": detail})
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
        )
        self._disarm()
        self.transport.write(head + body)
        self.transport.close()


def guarded_http(max_head_bytes: int, head_timeout_s: float) -> type[GuardedHttpTools]:
    """The protocol class for uvicorn.Config(http=...) with these two limits."""
    return type(
        "GuardedHttpTools",
        (GuardedHttpTools,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s},
    )
