"""The admin port: health, readiness and metrics (more routes join here later).

A separate Starlette app on `proxy.admin_listen`; the data port never serves these. Its
handlers only read plain state of the proxy (flags, counters, the routing table), never
its event-loop-bound clients, so it can run on another loop or thread.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.metrics import METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from proxy.app import ProxyApp

PROBE_TIMEOUT_S = 1.0


async def primary_reachable(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """'' when a TCP connection to the primary opens in time, else the reason.

    A connection, not an HTTP request: any model server answers it, and a probe every few
    seconds must not show up as traffic in the primary's own logs and metrics.
    """
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no connection within {timeout_s:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    return ""


def create_admin_app(proxy: ProxyApp) -> Starlette:
    """The admin app for one proxy process."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        host, port = proxy.routing.primary_address()
        problem = await primary_reachable(host, port)
        body: dict[str, Any] = {
            "ready": not problem,
            "primary": {"url": proxy.routing.primary, "reachable": not problem},
            "redis": {
                "up": proxy.capture.redis_up,
                "spool": proxy.capture.depth,
                "last_error": proxy.capture.last_error,
            },
            "mirrors_in_flight": proxy.mirror.in_flight,
            "candidates": [
                {"name": m.name, "role": m.runner.role, "sample": m.sample}
                for m in proxy.routing.mirrors
            ],
        }
        if problem:
            body["primary"]["error"] = problem
        return JSONResponse(body, status_code=200 if not problem else 503)

    async def metrics(request: Request) -> Response:
        return Response(proxy.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": exc.detail, "detail": request.url.path}, status_code=exc.status_code
        )

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
