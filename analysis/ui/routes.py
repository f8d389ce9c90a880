"""The web page's routes: `/ui/` (overview), `/ui/candidates/{name}`, `/ui/watch`, `/ui/static/*`.

`ui_routes(context)` returns Starlette routes the admin app mounts next to its own. The
context is duck-typed: `settings` (common.settings.Settings), `keys` (common.keys.Keys),
`redis` (a redis.asyncio client) and `async candidates() -> list[dict]` (registry entries:
name, url or onnx, sample, timeout_ms, role, state, ends_at). When the context also has
`async report(name, window_s) -> dict` (control.admin.AdminContext does), reports come from
it; otherwise the synchronous `analysis.report.build_report` runs in a worker thread on
a synchronous client of the same server: from `context.redis_url` when the context has
one, else `settings.redis.url`, else rebuilt from the async client's connection settings.
Candidates with evidence but no registry entry (a replay's target) are listed too, as
"unregistered". `/ui/watch` shows the live watch document: from `async watch(window_s,
reference)` when the context has it, else from `analysis.watch_live.watch_document`.

Pages are rendered on the server (jinja2, autoescape on; charts are SVG strings from
analysis.ui.charts, which escape their own text), served with a Content-Security-Policy
that allows only this origin's script and style, so a value from traffic can never run.
Every printed string also passes common.sanitize.printable (control characters and
bidirectional overrides shown as escapes, never acted on).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import redis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from analysis.report import build_report
from analysis.series import agreement_points
from analysis.ui import charts, present, watch_present
from common.errors import ShadowtrialError
from common.keys import Keys
from common.redis_client import store_errors, sync_client
from common.sanitize import printable
from common.settings import Settings, parse_duration

HERE = Path(__file__).parent
DEFAULT_WINDOW = "1h"
WINDOWS = ("15m", "1h", "6h", "24h", "7d")
REFRESH_S = 5
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class UiContext(Protocol):
    """What the pages need from the admin app (attributes, duck-typed)."""

    settings: Settings
    keys: Keys
    redis: Any

    async def candidates(self) -> list[dict[str, Any]]: ...


def sync_redis(context: Any) -> redis.Redis:
    """A synchronous client on the server the context's async client talks to."""
    url = getattr(context, "redis_url", None) or context.settings.redis.url
    if url:
        return sync_client(url)
    pool = context.redis.connection_pool
    kw = pool.connection_kwargs
    common = {k: kw[k] for k in ("db", "username", "password") if kw.get(k) is not None}
    if "path" in kw:
        return redis.Redis(unix_socket_path=kw["path"], **common)
    ssl = "SSL" in pool.connection_class.__name__
    return redis.Redis(
        host=kw.get("host", "localhost"), port=kw.get("port", 6379), ssl=ssl, **common
    )


def _shown(value: Any) -> Any:
    """Every text a template prints, made printable (HTML escaping comes after it)."""
    return printable(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown,
    )
    env.filters.update(present.FILTERS)
    env.globals["quote"] = lambda s: quote(str(s), safe="")
    return env


class Pages:
    """Renders the two pages from reports; one synchronous Redis client, used in threads."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.env = _environment()
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = sync_redis(self.context)
        return self._client

    async def report(self, name: str, window_s: float) -> dict[str, Any]:
        """The candidate's report, built off the event loop (by the context, if it can)."""
        ctx = self.context
        if callable(getattr(ctx, "report", None)):
            return await ctx.report(name, window_s)
        with store_errors(f"cannot build the report of {name}"):
            return await asyncio.to_thread(
                build_report, self.client, ctx.keys, ctx.settings, name, window_s
            )

    def render(self, request: Request, template: str, status: int = 200, **values: Any) -> Response:
        root = request.scope.get("root_path", "")
        values.setdefault("window", DEFAULT_WINDOW)
        values.setdefault("extra_query", "")
        html = self.env.get_template(template).render(
            static=f"{root}/ui/static", root=root, refresh_s=REFRESH_S, windows=WINDOWS, **values
        )
        headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-store"}
        return HTMLResponse(html, status_code=status, headers=headers)

    def error(self, request: Request, status: int, title: str, detail: str) -> Response:
        return self.render(request, "error.html", status=status, title=title, detail=detail)

    # -- pages --

    def _window(self, request: Request) -> tuple[str, float]:
        """The `?window=` text and its seconds; ValueError names a bad one."""
        text = request.query_params.get("window", DEFAULT_WINDOW)
        return text, parse_duration(text)

    async def overview(self, request: Request) -> Response:
        try:
            window, window_s = self._window(request)
        except ValueError as exc:
            return self.error(request, 400, "Bad window", str(exc))
        try:
            entries = await self._entries()
            reports = await asyncio.gather(*(self.report(e["name"], window_s) for e in entries))
        except ShadowtrialError as exc:
            return self.error(request, 503, "Evidence unavailable", str(exc))
        rows = [present.overview_row(e, r) for e, r in zip(entries, reports, strict=True)]
        return self.render(request, "overview.html", window=window, rows=rows)

    async def candidate(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            window, window_s = self._window(request)
        except ValueError as exc:
            return self.error(request, 400, "Bad window", str(exc))
        try:
            entry = await self._entry(name)
            if entry is None:
                return self.error(request, 404, "No such candidate", f"{name!r} is not known")
            report = await self.report(name, window_s)
        except ShadowtrialError as exc:
            return self.error(request, 503, "Evidence unavailable", str(exc))
        root = request.scope.get("root_path", "")
        view = present.candidate_view(entry, report, self.context.settings, root)
        return self.render(
            request, "candidate.html", window=window, c=view, charts=self._charts(report, view)
        )

    async def watch(self, request: Request) -> Response:
        """The live watch: features, the primary's answers, labels, timeline."""
        try:
            window, window_s = self._window(request)
        except ValueError as exc:
            return self.error(request, 400, "Bad window", str(exc))
        asked = request.query_params.get("reference") or None
        try:
            doc = await self.watch_document(window_s, asked)
        except ValueError as exc:
            return self.error(request, 400, "Bad reference", str(exc))
        except ShadowtrialError as exc:
            return self.error(request, 503, "Watch unavailable", str(exc))
        root = request.scope.get("root_path", "")
        reference = asked or str((doc.get("reference") or {}).get("kind") or "auto")
        view = watch_present.watch_view(doc, root, window, reference)
        extra = "&" + urlencode({"reference": asked}) if asked else ""
        return self.render(request, "watch.html", window=window, w=view, extra_query=extra)

    async def watch_document(self, window_s: float, reference: str | None) -> dict[str, Any]:
        """The live watch document (ValueError: a reference that is not one; None: the
        configured default, `[watch] reference`)."""
        ctx = self.context
        if callable(getattr(ctx, "watch", None)):
            return await ctx.watch(window_s, reference)
        from analysis.watch_live import WatchError, watch_document

        try:
            with store_errors("cannot read the watch"):
                return await asyncio.to_thread(
                    watch_document, self.client, ctx.settings, window_s, reference
                )
        except WatchError as exc:  # a bad window or reference: the page answers 400
            raise ValueError(str(exc)) from None

    def _charts(self, report: dict[str, Any], view: dict[str, Any]) -> dict[str, Markup]:
        """Every chart of the candidate page; SVG text escaped by analysis.ui.charts."""
        window = report.get("window") or {}
        conf = report.get("confidence") or {}
        flips = report.get("flips") or {}
        latency = report.get("latency") or {}
        points = agreement_points(report.get("timeline") or [], window.get("bucket_seconds") or 60)
        return {
            "agreement": Markup(charts.agreement_chart(points, view["min_agreement"])),
            "confidence": Markup(
                charts.confidence_histograms(
                    (conf.get("primary") or {}).get("hist") or [],
                    (conf.get("candidate") or {}).get("hist") or [],
                )
            ),
            "flips": Markup(
                charts.flip_heatmap(flips.get("labels") or [], flips.get("matrix") or [])
            ),
            "latency": Markup(
                charts.latency_chart(latency.get("primary") or {}, latency.get("candidate") or {})
            ),
        }

    # -- registry --

    async def _entries(self) -> list[dict[str, Any]]:
        """Registry entries, then candidates with evidence but no entry (replayed ones)."""
        with store_errors("cannot read the candidates"):
            entries = list(await self.context.candidates())
            seen = await self.context.redis.hgetall(self.context.keys.candidates_seen())
        known = {e["name"] for e in entries}
        for raw_name, raw_role in sorted(seen.items()):
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            if name not in known:
                role = raw_role.decode() if isinstance(raw_role, bytes) else str(raw_role)
                entries.append({"name": name, "role": role, "state": "unregistered"})
        return entries

    async def _entry(self, name: str) -> dict[str, Any] | None:
        return next((e for e in await self._entries() if e["name"] == name), None)


def ui_routes(context: Any) -> list[BaseRoute]:
    """The web page's routes for the admin app (see the module docstring for `context`)."""
    pages = Pages(context)
    return [
        Route("/ui/", pages.overview, methods=["GET"], name="ui-overview"),
        Route("/ui/candidates/{name}", pages.candidate, methods=["GET"], name="ui-candidate"),
        Route("/ui/watch", pages.watch, methods=["GET"], name="ui-watch"),
        Mount("/ui/static", app=StaticFiles(directory=HERE / "static"), name="ui-static"),
    ]
