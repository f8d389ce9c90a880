"""Live sync: keeps one proxy process's RoutingTable in step with the registry in Redis.

`RegistrySync` runs on each proxy process's loop: it subscribes to `Keys.events()` and
also re-reads everything every `admin.sync_ms`, so a missed message heals by itself. It
swaps the RoutingTable's primary and mirror set by single assignments. With Redis down it
keeps the last state it applied. It seeds the registry from the config (control.seeding)
at start and again when Redis lost its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from common.errors import StoreError
from common.keys import Keys
from common.redis_client import STORE_FAILURES
from common.settings import Settings
from common.urls import mask_url
from control.pool import RunnerPool
from control.registry import RegistryError, Snapshot
from control.registry_store import RegistryStore, redis_client
from control.seeding import seed
from proxy.routing import CanaryTarget, MirrorTarget, RoutingTable
from proxy.runner import CandidateRunner
from proxy.tasks import bounded, stop_tasks

log = logging.getLogger("shadowtrial.registry")

STOP_TIMEOUT_S = 2.0  # each step of RegistrySync.stop waits at most this long


class RegistrySync:
    """Keeps one proxy process's RoutingTable in step with Redis (pub/sub + reconcile)."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        routing: RoutingTable,
        runners: Sequence[CandidateRunner],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self.redis_url = redis_url
        self.routing = routing
        self.clock = clock
        proxy = settings.proxy
        self.pool = RunnerPool(
            runners, proxy.max_capture_bytes, proxy.mirror_concurrency, proxy.redact_fields
        )
        self.snapshot: Snapshot | None = None
        self.synced_at = 0.0  # monotonic time of the last successful read
        self.last_error = ""
        self.seeded = False
        self.on_tick: list[Callable[[], Awaitable[None]]] = []
        self._client: aioredis.Redis | None = None
        self._store: RegistryStore | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._stopping = False  # ends the loops even if a cancellation was swallowed

    @property
    def store(self) -> RegistryStore:
        """The store on this loop's client (after `start`)."""
        assert self._store is not None, "RegistrySync.start() was not called"
        return self._store

    @property
    def interval_s(self) -> float:
        """How often every replica re-reads the registry."""
        return self.settings.admin.sync_ms / 1000

    async def start(self, first_read_timeout_s: float = 2.0) -> None:
        """Seed, read once (bounded: Redis down must not stop the proxy), then follow."""
        self._client = redis_client(self.redis_url)
        self._store = RegistryStore(self._client, self.keys, self.settings)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_read_timeout_s):
                await self.refresh()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._reconcile())]

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop following; close the runners made at runtime and the client. Bounded:
        a task that swallows its cancellation is left behind after `timeout_s`."""
        self._stopping = True
        await stop_tasks(self._tasks, timeout_s, "registry sync")
        self._tasks = []
        await bounded(self.pool.close(), timeout_s, "closing runtime candidates")
        if self._client is not None:
            await bounded(self._client.aclose(), timeout_s, "closing the registry client")
            self._client = None

    async def refresh(self) -> bool:
        """Read Redis and apply; False (state kept) when Redis cannot answer."""
        async with self._lock:
            try:
                snap = await self.store.snapshot()
                # Seed at start, and again if Redis lost its data (restarted without
                # persistence): the configured candidates and primary come back by themselves.
                if not self.seeded or not snap.routing.get("config_primary"):
                    await seed(self.store, self.settings, self.clock())
                    self.seeded = True
                    snap = await self.store.snapshot()
            except (StoreError, RegistryError) as exc:
                if str(exc) != self.last_error:
                    log.warning("registry not read, keeping the last state: %s", exc)
                self.last_error = str(exc)
                return False
            self.last_error = ""
            self.synced_at = time.monotonic()
            self.apply(snap)
            return True

    def apply(self, snap: Snapshot) -> None:
        """Swap primary and mirrors when they differ from what the routing table has."""
        self.snapshot = snap
        now = self.clock()
        primary = snap.primary(self.settings.proxy.primary)
        targets, canary = [], []
        for entry in sorted(snap.entries.values(), key=lambda e: (e.started_at, e.name)):
            runner = self.pool.runner_for(entry) if entry.mirrored(now) else None
            if runner is not None:
                targets.append(MirrorTarget(runner, entry.sample))
            if runner is not None and entry.canary > 0 and entry.url is not None:
                canary.append(CanaryTarget(entry.name, entry.url, entry.canary,
                                           entry.timeout_ms / 1000))  # fmt: skip
        self.pool.forget(snap.entries)
        routing = self.routing
        if primary.rstrip("/") != routing.primary:
            log.info("primary is now %s (registry version %d)", mask_url(primary), snap.version)
            routing.set_primary(primary)
        current = [(id(t.runner), t.sample) for t in routing.mirrors]
        if current != [(id(t.runner), t.sample) for t in targets]:
            routing.set_mirrors(targets)
        if canary != list(routing.canary):
            log.info("canary is now %s", {t.name: t.weight for t in canary} or "off")
            routing.set_canary(canary)
        routing.primary_name = (snap.routing.get("primary_name") or "primary").encode()
        routing.version = snap.version

    async def _listen(self) -> None:
        """Refresh on every event; resubscribe (and refresh) after a lost connection."""
        backoff = 0.05
        while not self._stopping:
            pubsub = None
            try:
                assert self._client is not None
                pubsub = self._client.pubsub()
                await pubsub.subscribe(self.keys.events())
                await self.refresh()
                backoff = 0.05
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        await self.refresh()
            except STORE_FAILURES as exc:
                self.last_error = f"events: {exc}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*STORE_FAILURES):
                        await pubsub.aclose()

    async def _reconcile(self) -> None:
        """Re-read every interval (heals missed events; applies time boxes on time)."""
        while not self._stopping:
            await asyncio.sleep(self.interval_s)
            if not await self.refresh() and self.snapshot is not None:
                self.apply(self.snapshot)  # a time box still ends with Redis down
            for hook in list(self.on_tick):
                try:
                    await hook()
                except Exception:  # a failing hook must not stop the sync
                    log.warning("registry tick hook failed", exc_info=True)

    def status(self) -> dict[str, Any]:
        """For /readyz: what this replica applied and when it last read Redis."""
        age = time.monotonic() - self.synced_at if self.synced_at else None
        return {
            "version": self.routing.version,
            "synced_s_ago": None if age is None else round(age, 3),
            "error": self.last_error,
        }


__all__ = ["STOP_TIMEOUT_S", "RegistrySync"]
