"""Real servers for tests: uvicorn apps and the proxy's data port in threads, and a
free-port helper."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import uvicorn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Poll until something accepts connections on the port, or fail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")


@contextmanager
def serve_app(app: object, port: int | None = None, **config: object) -> Iterator[str]:
    """Run an ASGI app on 127.0.0.1 in a background thread; yield its base URL."""
    port = port or free_port()
    cfg = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **config
    )
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server failed to start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_proxy(app: Any, port: int | None = None, grace_s: float = 5.0) -> Iterator[str]:
    """Run a ProxyApp's native data port (proxy.dataport) on 127.0.0.1 in a background
    thread, with the app's startup and shutdown around it; yield its base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port or 0))
    sock.listen(1024)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failed: list[BaseException] = []
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            await app.startup()
            data_port = app.data_port()
            await data_port.start(sock)
        except BaseException as exc:
            failed.append(exc)
            started.set()
            raise
        started.set()
        try:
            await stop.wait()
        finally:
            await data_port.stop(grace_s)
            await app.shutdown()

    thread = threading.Thread(target=lambda: _run_quietly(loop, main()), daemon=True)
    thread.start()
    if not started.wait(10) or failed:
        raise RuntimeError(f"the proxy failed to start: {failed[:1]}")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(lambda: stop.set() if stop is not None else None)
        thread.join(timeout=30)
        sock.close()


def _run_quietly(loop: asyncio.AbstractEventLoop, main: Any) -> None:
    with suppress(BaseException):
        loop.run_until_complete(main)
    loop.close()


# SO_LINGER on, timeout 0: close() sends RST instead of FIN (a connection reset).
LINGER_ZERO = struct.pack("ii", 1, 0)


@contextmanager
def raw_server(reply: Callable[[socket.socket], None], backlog: int = 128) -> Iterator[str]:
    """A bare TCP server calling `reply(conn)` for each connection; yields its base URL.

    For peers no HTTP framework would play: resets, truncated answers, bad framing.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn, suppress(OSError):
                conn.settimeout(5)
                reply(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
