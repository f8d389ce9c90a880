"""One request on the data port and the client's answer to it, whatever server carries it.

The forwarder (proxy.forward) reads the request's head from an `Exchange`, its body with
`receive()`, and answers with `start` / `write` / `end`. Two servers provide exchanges:
proxy.dataport (the native httptools server, no ASGI dicts on the hot path) and
`AsgiExchange` below (any ASGI server: uvicorn as `[proxy] data_port = "uvicorn"`, and
tests that mount the app in-process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


class Exchange:
    """A request's head (attributes) and body (`receive`), and the client's answer."""

    __slots__ = ("client", "headers", "method", "path", "query", "scheme")

    def __init__(self) -> None:
        self.method = "GET"
        self.path = b"/"  # raw, as sent
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []  # names lower-case, as received
        self.client: str | None = None
        self.scheme = "http"

    async def receive(self) -> tuple[bytes, bool]:
        """The next body chunk and whether more follows; ClientGone if the client left."""
        raise NotImplementedError

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the answer's status and headers (hop-by-hop ones already removed)."""
        raise NotImplementedError

    async def write(self, chunk: bytes) -> None:
        """Send one chunk of the answer's body."""
        raise NotImplementedError

    async def end(self, chunk: bytes = b"") -> None:
        """Send the last chunk: the answer is complete."""
        raise NotImplementedError

    async def wait_disconnect(self) -> None:
        """Return once the client has gone away (used while an unsized answer streams)."""
        raise NotImplementedError


class AsgiExchange(Exchange):
    """An exchange over ASGI's scope / receive / send."""

    __slots__ = ("_receive", "_send")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__()
        self.method = scope["method"]
        self.path = scope.get("raw_path") or scope["path"].encode()
        self.query = scope.get("query_string", b"")
        self.headers = scope["headers"]
        client = scope.get("client")
        self.client = client[0] if client else None
        self.scheme = scope.get("scheme", "http")
        self._receive = receive
        self._send = send

    async def receive(self) -> tuple[bytes, bool]:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        return message.get("body", b""), message.get("more_body", False)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self, chunk: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def wait_disconnect(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            await asyncio.sleep(0)
