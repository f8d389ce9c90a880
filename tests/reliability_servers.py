"""Model servers with one behaviour each, in a process of their own (for load tests).

    python tests/reliability_servers.py [--idle-s=S] primary=ok hang=hang slow=slow ...

prints one line `{"primary": PORT, ...}` once every server listens, then serves until
SIGTERM. With --idle-s, a connection with no request in progress for S seconds is
closed, as real servers close idle keep-alive connections. Behaviours (`BEHAVIOURS`):
ok (ANSWER), status500, hang (reads, never answers), reset (reads, then RST), slow
(ANSWER after SLOW_S), garbage (bytes that are not HTTP, then close), junk200 (200 with
a binary body that is not JSON), large (200 with a JSON body 100x ANSWER's size). A bare
asyncio protocol on uvloop: a load test measures the proxy, so its upstreams must cost
as little CPU as possible (uvicorn's cost per request would share the two cores with
the proxy under test).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import sys

import httptools
import uvloop

ANSWER = (
    b'{"model_name":"m","outputs":[{"name":"label","shape":[1],"datatype":"BYTES",'
    b'"data":["positive"]},{"name":"probabilities","shape":[1,2],"datatype":"FP32",'
    b'"data":[0.07,0.93]}]}'
)
LARGE = (
    b'{"model_name":"m","outputs":[{"name":"label","shape":[1],"datatype":"BYTES",'
    b'"data":["positive"]}],"padding":"' + b"x" * (100 * len(ANSWER) - 100) + b'"}'
)
JUNK = bytes(range(256)) * 4
GARBAGE = b"\x00\xff\xfeTHIS IS NOT HTTP\r\n\r\n\x01\x02"
SLOW_S = 5.0
_LINGER_ZERO = struct.pack("ii", 1, 0)


def response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    """One complete HTTP/1.1 answer with a Content-Length."""
    reason = {200: b"OK", 500: b"Internal Server Error"}[status]
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, reason, content_type, len(body))
    ) + body


FIXED = {
    "ok": response(200, ANSWER),
    "status500": response(500, b'{"error":"model crashed"}'),
    "junk200": response(200, JUNK, b"application/octet-stream"),
    "large": response(200, LARGE),
    "slow": response(200, ANSWER),
}
BEHAVIOURS = (*FIXED, "hang", "reset", "garbage")


class Model(asyncio.Protocol):
    """One connection of a server with behaviour `kind`."""

    idle_s: float | None = None

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()

    def _arm(self) -> None:
        if self.idle_s is not None:
            self.idle = asyncio.get_running_loop().call_later(self.idle_s, self._close)

    def data_received(self, data: bytes) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.kind == "hang":
            return
        if self.kind == "reset":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            transport.abort()
        elif self.kind == "garbage":
            transport.write(GARBAGE)
            transport.close()
        elif self.kind == "slow":
            asyncio.get_running_loop().call_later(SLOW_S, self._write, FIXED["slow"])
        else:
            self._write(FIXED[self.kind])

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self._arm()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def main(specs: list[str]) -> None:
    """Start one server per `name=behaviour`, print their ports, serve until SIGTERM."""
    loop = asyncio.get_running_loop()
    ports: dict[str, int] = {}
    servers = []
    for spec in specs:
        if spec.startswith("--idle-s="):
            Model.idle_s = float(spec.split("=", 1)[1])
            continue
        name, _, kind = spec.partition("=")
        if kind not in BEHAVIOURS:
            raise SystemExit(f"unknown behaviour {kind!r}; known: {', '.join(BEHAVIOURS)}")
        server = await loop.create_server(
            lambda kind=kind: Model(kind), "127.0.0.1", 0, backlog=4096
        )
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()
    await stop.wait()
    for server in servers:
        server.close()
    os._exit(0)  # hanging connections would keep wait_closed() waiting


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:]))
