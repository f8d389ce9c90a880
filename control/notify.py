"""Webhook notifications: every new decision in the audit log, POSTed as JSON.

The audit stream (`Keys.decisions()`) already holds every promote, reject, rollback,
canary change and trial end, from the API and from the automation alike, so the notifier
tails it rather than hooking each decision: one replica at a time (a Redis lease) reads
the entries after a cursor kept in Redis, POSTs each one whose action is in
`[notify] events`, and moves the cursor only when the receiver answered 2xx. A failing
receiver is retried with backoff (1 s doubling to 60 s); nothing waits for it. The
payload carries a Slack-compatible `text`, so a Slack incoming webhook URL works as is.

The URL is a secret for such receivers (the token is in its path): it is never logged
(only its host) and never written to Redis.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from common.redis_client import STORE_FAILURES
from common.sanitize import printable
from common.scripts import SCRIPTS
from control.decisions import decision_from_stream
from control.registry_store import RegistryStore
from proxy.tasks import stop_tasks

log = logging.getLogger("shadowtrial.notify")

BACKOFF_START_S, BACKOFF_MAX_S = 1.0, 60.0
BATCH = 50  # audit entries read per round
STOP_TIMEOUT_S = 2.0


def payload(decision: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for one audit entry: the entry, an event name, and one line of text."""
    action = str(decision.get("action", ""))
    forced = " (forced)" if decision.get("forced") else ""
    weight = f" to weight {decision['weight_after']}" if "weight_after" in decision else ""
    text = (
        f"shadowtrial: {decision.get('actor', '?')} {action} {decision.get('candidate', '')}"
        f"{weight}{forced}: {decision.get('outcome', '')}, gate {decision.get('verdict', '')}"
    )
    return {"event": action, "text": printable(text), "decision": decision}


class Notifier:
    """Tails the audit log and POSTs new decisions to `[notify] url`."""

    def __init__(self, store: RegistryStore, interval_s: float) -> None:
        settings = store.settings.notify
        self.store = store
        self.url = settings.url
        self.events = frozenset(settings.events)
        self.timeout_s = settings.timeout_ms / 1000
        self.interval_s = interval_s
        self.owner = secrets.token_hex(8)
        self.started_ms = int(time.time() * 1000)
        self.sent = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def host(self) -> str:
        """The receiver's host, the only part of the URL that may be logged."""
        return urlsplit(self.url or "").hostname or "?"

    def start(self) -> None:
        """Start tailing when a URL is configured."""
        if self.url:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop tailing (the cursor stays: a restart goes on where this one stopped)."""
        self._stopping = True
        if self._task is not None:
            await stop_tasks([self._task], STOP_TIMEOUT_S, "notifications")

    async def _run(self) -> None:
        backoff = BACKOFF_START_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as s:
            while not self._stopping:
                try:
                    ok = await self.round(s)
                except Exception as exc:  # Redis away, or a bug: retried, never fatal
                    log.warning("notifications paused: %s", type(exc).__name__)
                    ok = False
                await asyncio.sleep(self.interval_s if ok else backoff)
                backoff = BACKOFF_START_S if ok else min(backoff * 2, BACKOFF_MAX_S)

    async def round(self, session: aiohttp.ClientSession) -> bool:
        """Send what is new (while holding the lease); False when the receiver failed."""
        client, keys = self.store.client, self.store.keys
        renew = SCRIPTS["renew"].register(client)
        lease_ms = int(max(self.interval_s, BACKOFF_MAX_S) * 3000)
        if not await renew(lock=keys.lock("notify"), owner=self.owner, ttl_ms=lease_ms):
            return True  # another replica notifies
        cursor_key = keys.lock("notify-cursor")  # not a lock: the last entry handled
        # First run: history is not news; what happened since this process began is.
        cursor = await client.get(cursor_key) or f"{self.started_ms}-0".encode()
        for entry_id, fields in await client.xrange(
            keys.decisions(), min=b"(" + cursor, count=BATCH
        ):
            decision = decision_from_stream(entry_id, fields)
            if decision.get("action") in self.events and not await self._post(session, decision):
                return False
            await client.set(cursor_key, entry_id)
        return True

    async def _post(self, session: aiohttp.ClientSession, decision: dict[str, Any]) -> bool:
        assert self.url is not None
        try:
            async with session.post(self.url, json=payload(decision)) as resp:
                ok = 200 <= resp.status < 300
                detail = f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError, *STORE_FAILURES) as exc:
            ok, detail = False, type(exc).__name__
        if ok:
            self.sent += 1
        else:
            self.failures += 1
            log.warning("notification to %s failed (%s); retrying", self.host, detail)
        return ok


__all__ = ["Notifier", "payload"]
