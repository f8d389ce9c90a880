"""The proxy of one process: the data port's handler and everything it owns.

`create_app(settings, redis_url)` builds the candidate runners (a model that cannot be
loaded fails here, before anything listens), the routing table, capture, mirror and
forwarder. The data port is `data_port()`, the native server of proxy.dataport calling
`handle(exchange)`; the same object is also an ASGI app (`[proxy] data_port = "uvicorn"`).
`startup`/`shutdown` (or the ASGI lifespan) open and close the upstream clients and the
capture writer, and
starts the registry sync (control.sync: live primary and candidates from Redis) with
its time-box and gate-automation watch (control.trials). The admin port is a separate
Starlette app, `app.admin`, that reads this object's state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from common.settings import Settings
from control.admin import create_admin_app
from control.sync import STOP_TIMEOUT_S, RegistrySync
from control.trials import TrialWatch
from control.watch import WatchGauges, WatchTask
from proxy.candidates import build_runners
from proxy.capture import Capture
from proxy.dataport import DataPort
from proxy.exchange import AsgiExchange, Exchange, Receive, Scope, Send
from proxy.forward import Forwarder
from proxy.gate_metrics import GateGauges
from proxy.looplag import LoopLag
from proxy.metrics import Metrics
from proxy.mirror import Mirror
from proxy.routing import RoutingTable
from proxy.runner import CandidateRunner
from proxy.tasks import bounded

log = logging.getLogger("shadowtrial.proxy")

CAPTURE_FLUSH_S = 5.0
CLOSE_S = 2.0  # closing one client (the primary's session, a candidate) at shutdown


class ProxyApp:
    """Data-port ASGI app. Start/stop via the ASGI lifespan (or `startup`/`shutdown`)."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        runners: Sequence[CandidateRunner] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.metrics = metrics or Metrics()
        self.runners = list(build_runners(settings) if runners is None else runners)
        self.routing = RoutingTable.from_settings(settings, self.runners)
        self.capture = Capture.from_settings(settings, redis_url, self.metrics)
        self.mirror = Mirror(
            settings.proxy, self.capture, self.metrics, protocol=settings.outputs.protocol,
            strata=settings.strata, watch_sample=settings.watch.sample,
        )  # fmt: skip
        self.forwarder = Forwarder(settings, self.routing, self.mirror, self.metrics)
        self.forwarder.canary_counts.capture = self.capture  # served-by counts in the buckets
        self.registry = RegistrySync(settings, redis_url, self.routing, self.runners)
        self.gate_gauges = GateGauges(self.metrics.registry)
        self.trials = TrialWatch(
            self.registry, redis_url, self.metrics.automation_error, self.gate_gauges
        )
        self.loop_lag = LoopLag(self.metrics)
        self.watch_gauges = WatchGauges(self.metrics.registry)
        self.watch_task = WatchTask(settings, redis_url, self.watch_gauges)
        self.started = False
        self.admin = create_admin_app(self)

    async def handle(self, exchange: Exchange) -> None:
        """Answer one data-port request (the native server calls this directly)."""
        await self.forwarder.handle(exchange)

    def data_port(self) -> DataPort:
        """The native data-port server (proxy.dataport) in front of `handle`, with the
        limits of [proxy]; refusals are counted on shadowtrial_http_refused_total."""
        proxy = self.settings.proxy
        return DataPort(
            self.handle,
            max_head_bytes=proxy.max_header_bytes,
            head_timeout_s=proxy.header_timeout_ms / 1000,
            body_timeout_s=proxy.body_timeout_ms / 1000,
            on_refuse=self.metrics.refused,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI data port (`[proxy] data_port = "uvicorn"`, in-process tests)."""
        kind = scope["type"]
        if kind == "http":
            await self.forwarder.handle(AsgiExchange(scope, receive, send))
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not proxied
            await send({"type": "websocket.close", "code": 1003})

    async def startup(self) -> None:
        """Open upstream sessions and start the capture writer (inside the serving loop)."""
        await self.forwarder.start()
        self.capture.start()
        await self.registry.start()
        self.trials.start()
        self.loop_lag.start()
        self.watch_task.start()
        self.started = True

    @property
    def drain_s(self) -> float:
        """How long shutdown lets in-flight mirrors run: the slowest candidate's timeout."""
        slowest = max((c.timeout_ms for c in self.settings.candidates), default=0)
        return slowest / 1000 + 1.0

    @property
    def shutdown_budget_s(self) -> float:
        """An upper bound on `shutdown()`: every step below is bounded (proxy.tasks)."""
        steps = 3 * STOP_TIMEOUT_S + self.drain_s + 1.0 + 3 * STOP_TIMEOUT_S
        return steps + CAPTURE_FLUSH_S + 3.0 + CLOSE_S * (1 + len(self.runners))

    async def shutdown(self) -> None:
        """Let in-flight mirrors end, flush capture, close every client; each step is
        bounded, so a shutdown ends within `shutdown_budget_s` whatever hangs."""
        await self.trials.stop()
        await self.loop_lag.stop()
        await bounded(self.watch_task.stop(), STOP_TIMEOUT_S, "the watch gauges")
        await self.mirror.drain(timeout_s=self.drain_s)
        await self.registry.stop()
        await self.capture.close(timeout_s=CAPTURE_FLUSH_S)
        await bounded(self.forwarder.close(), CLOSE_S, "closing the primary's session")
        for runner in self.runners:  # one failing or hanging must not stop the others
            await bounded(runner.close(), CLOSE_S, f"closing candidate {runner.name}")
        self.started = False

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, redis_url: str) -> ProxyApp:
    """The proxy for these settings, recording to the Redis at `redis_url`."""
    return ProxyApp(settings, redis_url)
