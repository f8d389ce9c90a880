"""A candidate that answers every request after a fixed delay (default 500 ms).

Stock nginx cannot sleep per request (`echo_sleep` is a third-party module, and
`limit_rate` throttles bandwidth, which a 200-byte answer never feels), so this tiny aiohttp
server plays the slow candidate. It holds thousands of sleeping requests for almost no CPU.

    python -m proxybench.slow_upstream --port 8003 --body resp_candidate.json --delay-ms 500
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import uvloop
from aiohttp import web


def make_app(body: bytes, delay_s: float) -> web.Application:
    """An app whose every route reads the request, sleeps, then returns `body` as JSON."""

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay_s)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    return app


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT (aiohttp handles both and exits cleanly)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--body", type=Path, required=True)
    ap.add_argument("--delay-ms", type=float, default=500.0)
    a = ap.parse_args(argv)
    app = make_app(a.body.read_bytes().strip(), a.delay_ms / 1000)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        app,
        host="127.0.0.1",
        port=a.port,
        access_log=None,
        print=None,
        backlog=4096,
        shutdown_timeout=1.0,
        loop=loop,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
