"""The decisions nobody asked for: trials whose time box is over, and the gate automation.

`TrialWatch` runs on every proxy replica: when a trial's time box is over it records the
final verdict, exactly once across replicas (a SET NX lock per trial end, and a
transaction that only ends a trial that is still active). With `[gate] auto_reject` or
`auto_promote_after_s`, one replica at a time (a Redis lease, common/lua/renew.lua)
re-judges active candidates every `gate.check_interval_s` and decides as actor
"automation"; it rejects only on a fail from an anytime-valid rule, so re-judging often
keeps the error rate. Without automation the lease holder still judges every interval,
to export each verdict on /metrics (proxy.gate_metrics) for alerting and for
progressive-delivery tools, and to end a canary (control.canary) whose gate fails on an
anytime-valid rule (weight 0, audited); it decides nothing else then.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from common.errors import ShadowtrialError
from common.redis_client import STORE_FAILURES
from common.scripts import SCRIPTS
from common.urls import mask_urls_in
from control.canary import advance, set_canary
from control.decisions import ACTOR_AUTOMATION, PASS, Decisions, anytime_fail
from control.notify import Notifier, gate_judged
from control.registry import ACTIVE, Entry
from control.reports import Reports
from control.sync import STOP_TIMEOUT_S, RegistrySync
from proxy.gate_metrics import GateGauges
from proxy.tasks import stop_tasks

log = logging.getLogger("shadowtrial.decisions")


class TrialWatch:
    """Ends time-boxed trials and, when configured, runs the gate automation."""

    def __init__(
        self,
        sync: RegistrySync,
        redis_url: str,
        on_error: Callable[[str], None] | None = None,
        gauges: GateGauges | None = None,
    ) -> None:
        self.sync = sync
        self.settings = sync.settings
        self.redis_url = redis_url
        self.owner = secrets.token_hex(8)
        self.ended: list[str] = []  # trials this replica ended (for tests and logs)
        self.ticks = 0
        self.errors = 0  # automation rounds or candidates that raised (also on /metrics)
        self._on_error = on_error
        self.gauges = gauges
        self._decisions: Decisions | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # ends the loop even if a cancellation was swallowed
        self.notifier: Notifier | None = None

    @property
    def automated(self) -> bool:
        """True when [gate] asks for auto-reject or auto-promote."""
        gate = self.settings.gate
        return gate.auto_reject or gate.auto_promote_after_s > 0

    def start(self) -> None:
        """Hook into the registry sync (after RegistrySync.start)."""
        reports = Reports.from_url(self.redis_url, self.sync.keys, self.settings)
        self._decisions = Decisions(self.sync.store, reports, self.settings, self.sync.clock)
        self.sync.on_tick.append(self.check_time_boxes)
        self.notifier = Notifier(self.sync.store, self.settings.gate.check_interval_s)
        self.notifier.start()
        if self.automated or self.gauges is not None:
            self._task = asyncio.get_running_loop().create_task(self._automate())

    async def stop(self) -> None:
        """Stop the automation and release the report client."""
        if self.check_time_boxes in self.sync.on_tick:
            self.sync.on_tick.remove(self.check_time_boxes)
        self._stopping = True
        if self.notifier is not None:
            await self.notifier.stop()
        if self._task is not None:
            await stop_tasks([self._task], STOP_TIMEOUT_S, "gate automation")
        if self._decisions is not None:
            self._decisions.reports.close()

    async def check_time_boxes(self) -> None:
        """End every trial whose time is up (once per sync tick, cheap when none is)."""
        self.ticks += 1
        snap = self.sync.snapshot
        if snap is None or self._decisions is None or self.sync.last_error:
            return  # Redis is down: the trial ends (mirroring stops) and is recorded later
        now = self.sync.clock()
        for entry in snap.entries.values():
            if entry.state != ACTIVE or not entry.expired(now) or entry.ends_at is None:
                continue
            try:
                if await self._decisions.end_trial(entry.name, entry.ends_at, self.owner):
                    self.ended.append(entry.name)
                    log.info("trial of %s ended; final verdict recorded", entry.name)
            except (ShadowtrialError, *STORE_FAILURES) as exc:
                log.warning("could not end the trial of %s: %s", entry.name, exc)

    async def _automate(self) -> None:
        """Forever: one round per interval. Any error ends the round, never the task."""
        interval = self.settings.gate.check_interval_s
        while not self._stopping:
            try:
                if await self._lease(int(interval * 3000)):
                    await self.automate_once()
                elif self.gauges is not None:
                    self.gauges.keep_only(())  # another replica exports the verdicts now
            except Exception as exc:  # the automation must outlive any bug: retried next round
                self._failed("gate automation skipped a round", exc)
            await asyncio.sleep(interval)

    def _failed(self, what: str, exc: Exception) -> None:
        """Log (class and masked message, no traceback unless debug) and count an error."""
        self.errors += 1
        if self._on_error is not None:
            self._on_error(type(exc).__name__)
        log.warning("%s: %s: %s", what, type(exc).__name__, mask_urls_in(str(exc))[:300])
        log.debug("%s", what, exc_info=True)

    async def _lease(self, ttl_ms: int) -> bool:
        store = self.sync.store
        renew = SCRIPTS["renew"].register(store.client)
        lock = store.keys.lock("automation")
        return bool(await renew(lock=lock, owner=self.owner, ttl_ms=ttl_ms))

    async def automate_once(self) -> None:
        """One round: reject failing candidates, promote one that passed long enough."""
        decisions = self._decisions
        assert decisions is not None
        snap = await decisions.store.snapshot()
        now = self.sync.clock()
        judged = [e for e in snap.entries.values() if e.role == "candidate" and e.mirrored(now)]
        if self.gauges is not None:
            self.gauges.keep_only(e.name for e in judged)
        for entry in judged:
            try:
                if await self._judge(decisions, entry, now):
                    return
            except (ShadowtrialError, *STORE_FAILURES):
                raise  # Redis or the store: the round is over, retried next interval
            except Exception as exc:  # one candidate's broken evidence must not stop the rest
                self._failed(f"gate automation skipped {entry.name!r}", exc)

    async def _judge(self, decisions: Decisions, entry: Entry, now: float) -> bool:
        """Reject or promote one candidate as the gate says; True when it was promoted."""
        gate = await decisions.gate(entry, now)
        if self.gauges is not None:
            self.gauges.judged(entry.name, gate)
        await gate_judged(decisions.store, entry.name, gate, now)  # notified if it changed
        if entry.canary > 0 and anytime_fail(gate):  # a failing canary ends at once
            await self._end_canary(decisions, entry, gate)
        elif entry.canary > 0 and entry.canary_steps and await advance(decisions, entry, now):
            return True  # the last step: promoted
        if not self.automated:
            return False
        if self.settings.gate.auto_reject and anytime_fail(gate):
            await decisions.reject(entry.name, ACTOR_AUTOMATION, gate=gate)
        elif await self._passed_long_enough(entry, gate, now):
            await decisions.promote(entry.name, ACTOR_AUTOMATION, gate=gate)
            await decisions.store.client.delete(decisions.store.keys.gate_passing())
            return True
        return False

    async def _end_canary(self, decisions: Decisions, entry: Entry, gate: dict[str, Any]) -> None:
        """Weight 0, or reject, as `gate.canary_on_fail` says."""
        if self.settings.gate.canary_on_fail == "reject":
            await decisions.reject(entry.name, ACTOR_AUTOMATION, gate=gate)
        else:
            await set_canary(decisions, entry.name, 0, ACTOR_AUTOMATION, force=True, gate=gate)
        log.warning("canary of %s ended (%s): the gate fails", entry.name,
                    self.settings.gate.canary_on_fail)  # fmt: skip

    async def _passed_long_enough(self, entry: Entry, gate: dict[str, Any], now: float) -> bool:
        """Track since when the gate has passed; True once it held auto_promote_after_s."""
        after_s = self.settings.gate.auto_promote_after_s
        client, key = self.sync.store.client, self.sync.store.keys.gate_passing()
        if gate["verdict"] != PASS or after_s <= 0 or entry.url is None:
            await client.hdel(key, entry.name)
            return False
        await client.hsetnx(key, entry.name, repr(now))
        since = float(await client.hget(key, entry.name) or now)
        return now - since >= after_s


__all__ = ["TrialWatch"]
