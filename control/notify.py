"""Webhook notifications: every new decision in the audit log, and every change of a
candidate's gate verdict, POSTed as JSON.

The audit stream (`Keys.decisions()`) already holds every promote, reject, rollback,
canary change and trial end, from the API and from the automation alike, so the notifier
tails it rather than hooking each decision: one replica at a time (a Redis lease) reads
the entries after a cursor kept in Redis, POSTs each one whose action is in
`[notify] events`, and moves the cursor only when the receiver answered 2xx. A failing
receiver is retried with backoff (1 s doubling to 60 s); nothing waits for it. The
payload carries a Slack-compatible `text`, so a Slack incoming webhook URL works as is.

Gate changes: the gate automation (control.trials) judges every mirrored candidate each
`gate.check_interval_s`; `gate_judged` keeps the last verdict per candidate in Redis (so a
new lease holder knows it) and appends a change (pass -> fail, insufficient -> pass, ...)
to a capped stream of its own, tailed the same way. A candidate's first verdict counts as
a change from `insufficient`. Events are named `gate:<new verdict>`; `[notify] events`
lists `gate` for every change or `gate:fail` / `gate:pass` / `gate:insufficient`.

The URL is a secret for such receivers (the token is in its path): it is never logged
(only its host) and never written to Redis.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from common.redis_client import STORE_FAILURES
from common.sanitize import printable
from common.scripts import SCRIPTS
from common.settings import format_instant
from control.decisions import decision_from_stream
from control.registry_store import RegistryStore
from proxy.tasks import stop_tasks

log = logging.getLogger("shadowtrial.notify")

GATE_EVENT = "gate"
GATE_CHANGES_MAX = 1000  # entries kept in the gate-change stream
FIRST_VERDICT = "insufficient"  # what a candidate's first verdict is a change from
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


def gate_payload(change: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for one gate change: event `gate:<to>`, the change, one line of text."""
    reasons = change.get("reasons") or []
    why = f": {reasons[0]}" if reasons else ""
    text = (
        f"shadowtrial: the gate on {change.get('candidate', '')} went from "
        f"{change.get('from', '')} to {change.get('to', '')} "
        f"({change.get('pairs', '?')} pairs){why}"
    )
    return {"event": f"{GATE_EVENT}:{change.get('to', '')}", "text": printable(text)[:1000],
            "change": change}  # fmt: skip


def gate_change_from_stream(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One gate-change entry as the payload carries it."""
    change: dict[str, Any] = {"id": entry_id.decode()}
    for key, value in fields.items():
        change[key.decode()] = value.decode("utf-8", "replace")
    try:
        change["reasons"] = orjson.loads(change.get("reasons", "[]"))
    except orjson.JSONDecodeError:
        change["reasons"] = []
    return change


async def gate_judged(store: RegistryStore, name: str, gate: dict[str, Any], now: float) -> bool:
    """Record a change of the candidate's verdict for notification; True when it changed.
    Called by the automation's lease holder only, once per candidate and interval."""
    client, keys = store.client, store.keys
    verdict = str(gate.get("verdict") or FIRST_VERDICT)
    before_raw = await client.hget(keys.gate_verdicts(), name)
    before = before_raw.decode() if before_raw else FIRST_VERDICT
    if before == verdict:
        if before_raw is None:
            await client.hset(keys.gate_verdicts(), name, verdict)
        return False
    change = {
        "time": format_instant(now),
        "candidate": name,
        "from": before,
        "to": verdict,
        "pairs": str(gate.get("pairs") or 0),
        "reasons": orjson.dumps(list(gate.get("reasons") or [])[:20]).decode(),
    }
    pipe = client.pipeline(transaction=False)  # two slots on a cluster; one writer anyway
    pipe.hset(keys.gate_verdicts(), name, verdict)
    pipe.xadd(keys.gate_changes(), change, maxlen=GATE_CHANGES_MAX, approximate=True)
    await pipe.execute()
    log.info("gate on %s: %s -> %s", printable(name), before, verdict)
    return True


def _wanted(events: frozenset[str], event: str) -> bool:
    """Whether `[notify] events` asks for this event (`gate` covers every `gate:*`)."""
    return event in events or (event.startswith(GATE_EVENT + ":") and GATE_EVENT in events)


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
        decisions = await self._tail(
            session, keys.decisions(), "notify-cursor",
            lambda i, f: payload(decision_from_stream(i, f)),
        )  # fmt: skip
        if not decisions:
            return False
        return await self._tail(
            session, keys.gate_changes(), "notify-gate-cursor",
            lambda i, f: gate_payload(gate_change_from_stream(i, f)),
        )  # fmt: skip

    async def _tail(
        self,
        session: aiohttp.ClientSession,
        stream: str,
        cursor_name: str,
        to_payload: Callable[[bytes, dict[bytes, bytes]], dict[str, Any]],
    ) -> bool:
        """POST the stream's entries after its cursor, in order; False at the first failure."""
        client = self.store.client
        cursor_key = self.store.keys.lock(cursor_name)  # not a lock: the last entry handled
        # First run: history is not news; what happened since this process began is.
        cursor = await client.get(cursor_key) or f"{self.started_ms}-0".encode()
        for entry_id, fields in await client.xrange(stream, min=b"(" + cursor, count=BATCH):
            body = to_payload(entry_id, fields)
            if _wanted(self.events, body["event"]) and not await self._post(session, body):
                return False
            await client.set(cursor_key, entry_id)
        return True

    async def _post(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> bool:
        assert self.url is not None
        try:
            async with session.post(self.url, json=body) as resp:
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


__all__ = ["Notifier", "gate_judged", "gate_payload", "payload"]
