"""The admin port: health, metrics, the candidate registry, reports, decisions, the web page.

A separate Starlette app on `proxy.admin_listen`; the data port never serves these. It
may run on another event loop or thread than the data port (tests do that), so it never
touches the proxy's loop-bound clients: it has its own Redis clients (`AdminContext`),
and only reads plain state of the proxy (flags, counters, the routing table). Changes
go to Redis; every replica, this one included, applies them through its RegistrySync.

Errors are JSON `{"error": ..., "detail": ...}`. Writes need a bearer token
(control.auth.RequireToken). The route table and its OpenAPI document are in
control.openapi.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import shlex
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from common.errors import StoreError
from common.keys import Keys
from common.redis_client import store_errors
from common.settings import Settings, parse_duration
from common.urls import mask_url, mask_urls_in
from control import watch
from control.admin_guard import FailureLimit, HostAllowList
from control.auth import RequireToken
from control.canary import canary_plan, set_canary
from control.decisions import Decisions
from control.dispatch_metrics import dispatch_exposition
from control.openapi import OPERATIONS, admin_routes, openapi_document
from control.registry import (
    PROMOTED,
    Change,
    Conflict,
    Invalid,
    NotFound,
    RegistryError,
    Snapshot,
    new_entry,
    patched_entry,
    registry_audit,
)
from control.registry_store import RegistryStore, redis_client
from control.reports import Reports
from control.sync import RegistrySync
from control.worker_metrics import worker_exposition
from proxy.capture import Capture
from proxy.metrics import METRICS_CONTENT_TYPE, Metrics
from proxy.mirror import Mirror
from proxy.redact import REDACTED, BodyRedactor, secret_name
from proxy.routing import RoutingTable


class ServedProxy(Protocol):
    """What the admin port reads of the proxy process it serves (proxy.app.ProxyApp).

    A Protocol rather than an import: the proxy process builds its admin app, so the
    control plane must not import it back.
    """

    settings: Settings
    redis_url: str
    metrics: Metrics
    routing: RoutingTable
    capture: Capture
    mirror: Mirror
    registry: RegistrySync


PROBE_TIMEOUT_S = 1.0
DEFAULT_WINDOW = "1h"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_FEEDBACK_ITEMS = 10_000
MAX_PAIRS = 200
MAX_CASES = 10_000  # catalog lines one download holds (built in memory)
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


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


class AdminContext:
    """What the admin handlers and the web page (analysis.ui) work with.

    Attributes: `settings` (Settings), `keys` (common.keys.Keys), `redis` (a
    redis.asyncio.Redis client for the admin app's loop), `redis_url`, `store` (RegistryStore),
    `decisions` (control.decisions.Decisions), `proxy` (the ProxyApp). Coroutines:
    `candidates()` (registry entries as dicts), `routing()` (primary, previous, version),
    `report(name, window_s)` (analysis.report in a thread).
    """

    def __init__(self, proxy: ServedProxy) -> None:
        self.proxy = proxy
        self.settings: Settings = proxy.settings
        self.keys = Keys(self.settings.redis.prefix)
        self.redis_url = proxy.redis_url
        self.redis = redis_client(proxy.redis_url)
        self.store = RegistryStore(self.redis, self.keys, self.settings)
        self.reports = Reports.from_url(proxy.redis_url, self.keys, self.settings)
        self.decisions = Decisions(self.store, self.reports, self.settings)

    async def snapshot(self) -> Snapshot:
        """The registry from Redis; with Redis down, the last state this replica applied."""
        try:
            return await self.store.snapshot()
        except StoreError:
            known = self.proxy.registry.snapshot
            if known is None:
                raise
            return known

    async def candidates(self) -> list[dict[str, Any]]:
        """Every registry entry (name, url or onnx, sample, timeout_ms, role, state, ...)."""
        snap = await self.snapshot()
        return [snap.entries[name].as_dict() for name in sorted(snap.entries)]

    async def routing(self) -> dict[str, Any]:
        """Where traffic goes: the primary (and which candidate it is), the previous one."""
        snap = await self.snapshot()
        return _routing_view(snap, self.settings.proxy.primary)

    async def report(self, name: str, window_s: float) -> dict[str, Any]:
        """The report of one candidate over the last `window_s` seconds."""
        return await self.reports.build(name, window_s)

    async def close(self) -> None:
        """Release the admin app's clients."""
        await self.redis.aclose()
        self.reports.close()


def _routing_view(snap: Snapshot, fallback: str) -> dict[str, Any]:
    routing = snap.routing
    return {
        "primary": mask_url(snap.primary(fallback)),
        "primary_name": routing.get("primary_name", ""),
        "previous": mask_url(routing.get("previous", "")),
        "previous_name": routing.get("previous_name", ""),
        "version": snap.version,
    }


# -- request helpers --------------------------------------------------------------------


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise Invalid("body too large", f"at most {MAX_BODY_BYTES} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid("invalid JSON", str(exc)) from None


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise Invalid(f"invalid {name}", f"expected true or false, got {value!r}")


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Invalid(f"invalid {name}", f"expected a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise Invalid(f"invalid {name}", f"must be between {low} and {high}, got {value}")
    return value


def _actor(request: Request) -> str:
    return str(getattr(request.state, "actor", "") or "anonymous")


async def _known(ctx: AdminContext, name: str) -> Snapshot:
    """The snapshot, after checking the candidate is registered or has evidence."""
    snap = await ctx.snapshot()
    if name in snap.entries:
        return snap
    with store_errors("cannot read the candidates seen"):
        seen = await ctx.redis.hexists(ctx.keys.candidates_seen(), name)
    if not seen:
        raise NotFound(f"no candidate named {name!r}", "GET /v1/candidates lists them")
    return snap


def _window(ctx: AdminContext, request: Request, snap: Snapshot, name: str) -> float:
    text = request.query_params.get("window", DEFAULT_WINDOW)
    if text.strip().lower() == "trial":
        entry = snap.entries.get(name)
        if entry is None:
            raise Invalid("invalid window", f"{name} is not registered: it has no trial")
        return ctx.decisions.trial_window(entry, time.time())
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise Invalid("invalid window", str(exc)) from None


# -- copy-as-curl -----------------------------------------------------------------------


def _shown_body(body: str, redactor: BodyRedactor) -> str:
    """A stored request body (text) as the drill-down shows it: redacted again, since
    pairs stored by older versions may hold what proxy.redact removes now."""
    data = body.encode("utf-8", "surrogatepass")
    redacted = redactor.body(data)
    return body if redacted is data else redacted.decode("utf-8", "replace")


def curl_line(base_url: str, pair: Mapping[str, Any]) -> str:
    """A shell command that sends this (already redacted) pair's request to `base_url`."""
    path = str(pair.get("path") or "/")
    query = str(pair.get("query") or "")
    url = mask_url(base_url.rstrip("/")) + path + (f"?{query}" if query else "")
    parts = ["curl", "-sS", "-X", str(pair.get("method") or "POST"), shlex.quote(url)]
    for name, value in sorted((pair.get("headers") or {}).items()):
        parts += ["-H", shlex.quote(f"{name}: {value}")]
    body = str(pair.get("request_body") or "")
    if body:
        parts += ["--data-binary", shlex.quote(body)]
    return " ".join(parts)


def redact_pair(pair: dict[str, Any], redactor: BodyRedactor) -> dict[str, Any]:
    """The pair with secrets replaced by proxy.redact: secret-named headers, query
    parameters, fields of the request and both answers (the rules capture applies
    before storing)."""
    headers = pair.get("headers") or {}
    pair["headers"] = {k: REDACTED if secret_name(k) else v for k, v in headers.items()}
    pair["query"] = redactor.query(str(pair.get("query") or ""))
    if pair.get("request_body"):
        pair["request_body"] = _shown_body(str(pair["request_body"]), redactor)
    for side in ("primary", "candidate"):  # the answers, as capture redacts them too
        answer = pair.get(side)
        if isinstance(answer, dict) and answer.get("body"):
            answer["body"] = _shown_body(str(answer["body"]), redactor)
    return pair


def _with_curl(
    pairs: list[dict[str, Any]], primary: str, candidate: str | None, redactor: BodyRedactor
) -> list[dict[str, Any]]:
    for pair in pairs:
        redact_pair(pair, redactor)
        pair["curl"] = {
            "primary": curl_line(primary, pair),
            "candidate": None if candidate is None else curl_line(candidate, pair),
        }
        if pair.get("request_truncated"):
            pair["curl"]["note"] = "the request body was cut when it was stored"
    return pairs


# -- the app ----------------------------------------------------------------------------


class Endpoints:
    """Every admin endpoint, by the handler name control.openapi's route table uses."""

    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self.proxy = ctx.proxy
        self.settings = ctx.settings

    def table(self) -> dict[str, Callable[[Request], Any]]:
        """Handler name -> endpoint."""
        return {op.handler: getattr(self, op.handler) for op in OPERATIONS}

    # -- health --

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        proxy = self.proxy
        host, port = proxy.routing.primary_address()
        problem = await primary_reachable(host, port)
        body: dict[str, Any] = {
            "ready": not problem,
            "primary": {"url": mask_url(proxy.routing.primary), "reachable": not problem},
            "redis": {
                "up": proxy.capture.redis_up,
                "spool": proxy.capture.depth,
                "last_error": proxy.capture.last_error,
            },
            "registry": proxy.registry.status(),
            "mirrors_in_flight": proxy.mirror.in_flight,
            "candidates": [
                {"name": m.name, "role": m.runner.role, "sample": m.sample}
                for m in proxy.routing.mirrors
            ],
        }
        if problem:
            body["primary"]["error"] = problem
        return JSONResponse(body, status_code=200 if not problem else 503)

    async def metrics(self, request: Request) -> Response:
        workers = await worker_exposition(self.ctx.redis, self.ctx.keys)  # never fails
        queues = await dispatch_exposition(self.ctx.redis, self.ctx.keys, self._dispatched())
        body = self.proxy.metrics.exposition() + workers + queues
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    def _dispatched(self) -> list[str]:
        """The `run = "dispatcher"` candidates: configured, and registered at runtime."""
        names = [c.name for c in self.ctx.settings.candidates if c.run == "dispatcher" and c.url]
        snap = self.proxy.registry.snapshot
        if snap is not None:
            names += [n for n, e in snap.entries.items() if e.run == "dispatcher" and e.url]
        return names

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    # -- the registry --

    async def list_candidates(self, request: Request) -> Response:
        snap = await self.ctx.snapshot()
        entries = [snap.entries[n].as_dict() for n in sorted(snap.entries)]
        routing = _routing_view(snap, self.settings.proxy.primary)
        return JSONResponse({"routing": routing, "candidates": entries})

    async def add_candidate(self, request: Request) -> Response:
        now = time.time()
        allow = self.settings.proxy.allow_link_local_urls
        entry = new_entry(await _body(request), now, allow_link_local=allow)
        audit = registry_audit("add", _actor(request), entry.name, None, entry, now)

        def decide(snap: Snapshot) -> Change:
            if entry.name in snap.entries:
                raise Conflict(f"a candidate named {entry.name!r} exists",
                               "PATCH it, or DELETE it first")  # fmt: skip
            return Change(put={entry.name: entry}, audit=audit)

        _, version = await self.ctx.store.transaction(decide)
        return JSONResponse({**entry.as_dict(), "version": version}, status_code=201)

    async def patch_candidate(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await _body(request)
        now = time.time()
        changed: dict[str, Any] = {}

        def decide(snap: Snapshot) -> Change:
            before = snap.entry(name)
            entry = patched_entry(before, body, now)
            changed["entry"] = entry
            audit = registry_audit("patch", _actor(request), name, before, entry, now)
            return Change(put={name: entry}, audit=audit)

        _, version = await self.ctx.store.transaction(decide)
        return JSONResponse({**changed["entry"].as_dict(), "version": version})

    async def delete_candidate(self, request: Request) -> Response:
        name = request.path_params["name"]

        def decide(snap: Snapshot) -> Change:
            before = snap.entry(name)
            if before.state == PROMOTED:
                raise Conflict(f"{name} is the primary", "POST /v1/rollback first")
            audit = registry_audit("delete", _actor(request), name, before, None, time.time())
            return Change(delete=[name], audit=audit)

        _, version = await self.ctx.store.transaction(decide)
        return JSONResponse({"deleted": name, "version": version})

    # -- evidence --

    async def report(self, request: Request) -> Response:
        name = request.path_params["name"]
        snap = await _known(self.ctx, name)
        window_s = _window(self.ctx, request, snap, name)
        return JSONResponse(await self.ctx.report(name, window_s))

    async def pairs(self, request: Request) -> Response:
        ctx = self.ctx
        name = request.path_params["name"]
        snap = await _known(ctx, name)
        divergent = _flag(request, "divergent")
        where = request.query_params.get("slice") or None
        if where is not None and "=" not in where:
            raise Invalid("invalid slice", "expected feature=value, e.g. country=FR")
        limit = _int_param(request, "limit", 50, 1, MAX_PAIRS)
        found = await asyncio.to_thread(_recent_pairs, ctx, name, divergent, where, limit)
        entry = snap.entries.get(name)
        primary = snap.primary(self.settings.proxy.primary)
        redactor = BodyRedactor.from_settings(self.settings)
        found = _with_curl(found, primary, entry.url if entry else None, redactor)
        return JSONResponse({"candidate": name, "pairs": found})

    async def catalog(self, request: Request) -> Response:
        """The failure catalog as a JSONL download: what `shadowtrial export` writes."""
        name = request.path_params["name"]
        await _known(self.ctx, name)
        divergent, flips = _flag(request, "divergent"), _flag(request, "flips")
        where = request.query_params.get("slice") or None
        limit = _int_param(request, "limit", MAX_CASES, 1, MAX_CASES)
        body = await asyncio.to_thread(_catalog, self.ctx, name, divergent, where, flips, limit)
        filename = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "candidate"
        disposition = f'attachment; filename="{filename}-cases.jsonl"'
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": disposition})  # fmt: skip

    async def feedback(self, request: Request) -> Response:
        items = _feedback_items(await _body(request))
        results = await asyncio.to_thread(_record_feedback, self.ctx, items)
        return JSONResponse({"recorded": len(results), "results": results})

    # -- decisions --

    async def promote(self, request: Request) -> Response:
        name = request.path_params["name"]
        force = _flag(request, "force")
        result = await self.ctx.decisions.promote(name, _actor(request), force=force)
        return JSONResponse(result)

    async def canary(self, request: Request) -> Response:
        name = request.path_params["name"]
        plan = canary_plan(await _body(request))
        force = _flag(request, "force")
        return JSONResponse(
            await set_canary(self.ctx.decisions, name, plan, _actor(request), force)
        )

    async def reject(self, request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse(await self.ctx.decisions.reject(name, _actor(request)))

    async def rollback(self, request: Request) -> Response:
        return JSONResponse(await self.ctx.decisions.rollback(_actor(request)))

    async def decisions(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 100, 1, 1000)
        return JSONResponse({"decisions": await self.ctx.decisions.history(limit)})

    # -- the watch (control.watch) --

    async def watch(self, request: Request) -> Response:
        params = request.query_params
        doc = await asyncio.to_thread(
            watch.build_document, self.ctx.reports.client, self.settings,
            params.get("window"), params.get("reference"),
        )  # fmt: skip
        return Response(orjson.dumps(doc), media_type="application/json")

    async def watch_reference(self, request: Request) -> Response:
        lo, hi = watch.pin_reference(await _body(request))
        await watch.store_reference(self.ctx.store, self.ctx.keys, lo, hi, _actor(request))
        return JSONResponse({"reference": {"kind": "pinned", "from": lo, "to": hi}})

    async def watch_profile(self, request: Request) -> Response:
        text = watch.profile_text(await _body(request))
        summary = await watch.store_profile(self.ctx.store, self.ctx.keys, text, _actor(request))
        return JSONResponse({"profile": summary})


MAX_LABEL_ROW = 1_000_000  # a batched request's row index in a label


def _feedback_items(body: Any) -> list[tuple[str, Any, int]]:
    items = body if isinstance(body, list) else [body]
    if not items or len(items) > MAX_FEEDBACK_ITEMS:
        raise Invalid("invalid feedback", f"send 1 to {MAX_FEEDBACK_ITEMS} labels")
    return [
        _feedback_item(item, f"item {i}: " if isinstance(body, list) else "")
        for i, item in enumerate(items)
    ]


_LABEL_KEYS = ({"request_id", "label"}, {"request_id", "value"})


def _feedback_item(item: Any, where: str) -> tuple[str, Any, int]:
    """(request id, label, row) of one label; `row` (default 0) names a batch's row; a
    numeric ground truth comes as `value` and is returned as ("value", number)."""
    keys = set(item) - {"row"} if isinstance(item, dict) else set()
    if keys not in _LABEL_KEYS:
        raise Invalid(
            "invalid feedback",
            f'{where}expected {{"request_id": ..., "label" or "value": ...[, "row": k]}}',
        )
    rid, row = item["request_id"], item.get("row", 0)
    if not isinstance(rid, str) or not 0 < len(rid) <= 256:
        raise Invalid("invalid feedback", f"{where}request_id must be a non-empty string")
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= MAX_LABEL_ROW:
        raise Invalid("invalid feedback", f"{where}row must be an integer from 0")
    if "value" in item:
        value = item["value"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid("invalid feedback", f"{where}value must be a number")
        return rid, ("value", value), row
    label = item["label"]
    if isinstance(label, float) or not isinstance(label, str | int | bool):
        raise Invalid("invalid feedback", f"{where}label must be a string, integer or boolean")
    return rid, label, row


def _record_feedback(ctx: AdminContext, items: list[tuple[str, Any, int]]) -> list[dict[str, Any]]:
    from analysis.feedback import record_feedback
    from analysis.watch_fold import record_watch_label

    watching = ctx.settings.watch.sample > 0
    results = []
    for rid, label, row in items:
        try:
            numeric = isinstance(label, tuple)
            joined = record_feedback(
                ctx.reports.client, ctx.keys, rid, None if numeric else label,
                ctx.settings.worker, row=row, value=label[1] if numeric else None,
            )  # fmt: skip
        except ValueError as exc:
            raise Invalid("invalid feedback", f"{rid}: {exc}") from None
        result = {"request_id": rid, "candidates": joined}
        if watching and not numeric and row == 0:
            result["watch"] = record_watch_label(
                ctx.reports.client, ctx.keys, rid, label, ctx.settings
            )
        results.append(result | {"row": row} if row else result)
    return results


def _recent_pairs(
    ctx: AdminContext, name: str, divergent: bool, where: str | None, limit: int
) -> list[dict[str, Any]]:
    from analysis.drilldown import recent_pairs

    return recent_pairs(ctx.reports.client, ctx.keys, name, divergent, where, limit)


def _catalog(
    ctx: AdminContext, name: str, divergent: bool, where: str | None, flips: bool, limit: int
) -> bytes:
    from analysis.catalog import ExportTally, export_lines, filters_for

    client = ctx.reports.client
    with store_errors(f"cannot export the catalog of {name}"):
        try:
            filters = filters_for(client, ctx.keys, name, divergent, where, flips)
        except ValueError as exc:
            raise Invalid("invalid slice", str(exc)) from None
        lines = export_lines(client, ctx.keys, ctx.settings, name, filters, ExportTally(), limit)
        return b"".join(orjson.dumps(case) + b"\n" for case in lines)


def _ui_routes(ctx: AdminContext) -> list[BaseRoute]:
    """The web page's routes, when analysis.ui provides them (the API works without)."""
    if importlib.util.find_spec("analysis.ui") is None:
        return []
    factory = getattr(importlib.import_module("analysis.ui"), "ui_routes", None)
    return list(factory(ctx)) if factory is not None else []


# -- errors -----------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = exc.detail if exc.status_code != 404 else "not found"
    return JSONResponse({"error": error, "detail": request.url.path}, status_code=exc.status_code)


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    body = {"error": exc.error, "detail": exc.detail, **exc.extra}
    return JSONResponse(body, status_code=exc.status)


async def _store_error(request: Request, exc: Exception) -> Response:
    body = {"error": "Redis unavailable", "detail": mask_urls_in(str(exc))}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


async def _server_error(request: Request, exc: Exception) -> Response:
    body = {"error": "internal error", "detail": mask_urls_in(f"{type(exc).__name__}: {exc}")[:300]}
    return JSONResponse(body, status_code=500)


def create_admin_app(proxy: ServedProxy) -> Starlette:
    """The admin app for one proxy process."""

    ctx = AdminContext(proxy)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await ctx.close()

    admin = proxy.settings.admin
    refused = proxy.metrics.admin_refusal
    hosts = Middleware(HostAllowList, patterns=admin.allowed_hosts, on_refused=refused)
    guard = Middleware(
        RequireToken,
        token_env=admin.token_env,
        open_reads=admin.open_reads,
        limit=FailureLimit(admin.auth_failures_per_minute),
        on_refused=refused,
    )
    app = Starlette(
        routes=[*admin_routes(Endpoints(ctx).table()), *_ui_routes(ctx)],
        middleware=[hosts, guard],
        exception_handlers={
            HTTPException: _http_error,
            RegistryError: _registry_error,
            StoreError: _store_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.context = ctx
    return app


__all__ = ["AdminContext", "ServedProxy", "create_admin_app", "curl_line", "primary_reachable"]
