"""Decisions on candidates: promote, reject, rollback, and the end of a time-boxed trial.

Each decision is one registry transaction (control.registry_store): the state change and its
audit entry are written by the same Lua script, so there is never one without the other.
The audit stream (`Keys.decisions()`) records time, actor (the token's name), action,
candidate, outcome, the gate's verdict and reasons, the evidence of each deciding rule
(its bound or e-value, and whether it is valid at any look), whether the gate was forced,
and the primary before and after. Refused promotions are audited too.

Promote judges the gate (analysis.report + analysis.gate, built in a thread: they are
synchronous) over `gate.window`, or the candidate's whole trial so far, unless forced.
An ONNX candidate never becomes the primary: there is no URL to send traffic to.

The reports the gate reads come from control.reports; control.trials takes the decisions
nobody asked for (time boxes, gate automation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from common.redis_client import store_errors
from common.settings import Settings, format_instant
from common.urls import mask_url
from control.registry import (
    ACTIVE,
    ENDED,
    HISTORY_KEPT,
    PROMOTED,
    REJECTED,
    Change,
    Conflict,
    Entry,
    Snapshot,
)
from control.registry_store import RegistryStore
from control.reports import Reports

log = logging.getLogger("shadowtrial.decisions")

PASS, FAIL = "pass", "fail"
NOT_CHECKED = "not checked"
ACTOR_TIME_BOX = "time-box"
ACTOR_AUTOMATION = "automation"
END_LOCK_MS = 60_000
DECISIONS_MAX = 1000  # GET /v1/decisions returns at most this many
# The agreement a verdict was judged on (rate, anytime-valid bounds): for /metrics.
AGREEMENT_KEYS = ("rate", "cs_low", "cs_high")


def _gate_summary(report: dict[str, Any], window_s: float) -> dict[str, Any]:
    gate = report.get("gate") or {}
    return {
        "verdict": gate.get("verdict", NOT_CHECKED),
        "reasons": list(gate.get("reasons") or []),
        "rules": list(gate.get("rules") or []),
        "anytime_note": gate.get("anytime_note"),
        "window_s": window_s,
        "pairs": report.get("pairs", 0),
        "agreement": {k: (report.get("agreement") or {}).get(k) for k in AGREEMENT_KEYS},
    }


def _evidence(gate: dict[str, Any]) -> list[dict[str, Any]]:
    """Each rule that decided something, with the bound or e-value it decided on."""
    return [
        {k: r.get(k) for k in ("rule", "outcome", "anytime", "evidence")}
        for r in gate.get("rules") or []
        if r.get("outcome") in (PASS, FAIL)
    ]


def _unchecked(why: str) -> dict[str, Any]:
    return {"verdict": NOT_CHECKED, "reasons": [why], "window_s": None, "pairs": None}


def anytime_fail(gate: dict[str, Any]) -> bool:
    """A fail the automation may act on now: from a rule valid at every look (a rule judged
    only at the end of a trial fails the verdict on the page, but does not reject early)."""
    return gate.get("verdict") == FAIL and any(
        r.get("outcome") == FAIL and r.get("anytime") for r in gate.get("rules") or []
    )


class Decisions:
    """The decisions, on one event loop's registry store."""

    def __init__(
        self,
        store: RegistryStore,
        reports: Reports,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.reports = reports
        self.settings = settings
        self.clock = clock

    # -- the gate --

    def trial_window(self, entry: Entry, now: float) -> float:
        """Seconds of evidence a decision is judged on: gate.window, else the whole trial."""
        if self.settings.gate.window is not None:
            return self.settings.gate.window
        end = min(now, entry.ends_s or now)
        return max(end - entry.started_s, float(self.settings.worker.bucket_seconds))

    async def gate(self, entry: Entry, now: float | None = None) -> dict[str, Any]:
        """The verdict on a candidate's trial: {verdict, reasons, window_s, pairs}."""
        now = self.clock() if now is None else now
        window_s = self.trial_window(entry, now)
        end = min(now, entry.ends_s or now)
        report = await self.reports.build(entry.name, window_s, end)
        return _gate_summary(report, window_s)

    async def gate_over(self, entry: Entry, start: float, now: float) -> dict[str, Any]:
        """The verdict on the buckets from `start` (a bucket boundary) to `now` only: a
        canary step's own evidence, none from the bucket before."""
        window_s = max(now - start - 1e-6, 0.0)  # floors to `start` itself, never below
        report = await self.reports.build(entry.name, window_s, now)
        return _gate_summary(report, window_s)

    async def _gate_or_note(self, entry: Entry) -> dict[str, Any]:
        """The verdict for the audit log; a report that cannot be built is noted, not fatal."""
        try:
            return await self.gate(entry)
        except Exception as exc:  # evidence missing must not block a forced decision
            log.warning("no gate verdict for %s", entry.name, exc_info=True)
            return _unchecked(f"the report could not be built: {exc}")

    # -- decisions --

    async def promote(
        self, name: str, actor: str, force: bool = False, gate: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Make the candidate the primary on every replica (gate first unless forced)."""
        entry = (await self.store.snapshot()).entry(name)
        _check_promotable(entry)
        if gate is None:
            gate = await (self._gate_or_note(entry) if force else self.gate(entry))
        if not force and gate["verdict"] != PASS:
            await self.store.audit(self._audit("promote", actor, name, gate, "refused", force))
            raise Conflict(
                f"the gate refuses to promote {name}",
                f"verdict {gate['verdict']}; promote with force=true to override",
                gate=gate,
            )
        fallback = self.settings.proxy.primary
        now = self.clock()

        def decide(snap: Snapshot) -> Change:
            current = snap.entry(name)
            _check_promotable(current)
            before = snap.primary(fallback)
            history = [
                *snap.history(),
                {"url": before, "name": snap.routing.get("primary_name", "")},
            ]
            change = Change(routing=_routing(current.url or "", name, history[-HISTORY_KEPT:]))
            change.put[name] = _moved(current, PROMOTED, f"promoted by {actor}", now)
            _demote_previous(snap, change, name, now)
            after = current.url or ""
            change.audit = self._audit("promote", actor, name, gate, "done", force, before, after)
            return change

        snap, version = await self.store.transaction(decide)
        return {
            "action": "promote",
            "candidate": name,
            "actor": actor,
            "forced": force,
            "primary": mask_url(snap.entry(name).url or ""),
            "previous": mask_url(snap.primary(fallback)),
            "gate": gate,
            "version": version,
        }

    async def reject(
        self, name: str, actor: str, gate: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Stop mirroring the candidate; its stream and summaries stay as evidence."""
        entry = (await self.store.snapshot()).entry(name)
        _check_rejectable(entry)
        gate = gate if gate is not None else await self._gate_or_note(entry)
        now = self.clock()

        def decide(snap: Snapshot) -> Change:
            current = snap.entry(name)
            _check_rejectable(current)
            return Change(
                put={name: _moved(current, REJECTED, f"rejected by {actor}", now)},
                audit=self._audit("reject", actor, name, gate, "done", False),
            )

        _, version = await self.store.transaction(decide)
        return {
            "action": "reject",
            "candidate": name,
            "actor": actor,
            "state": REJECTED,
            "gate": gate,
            "version": version,
        }

    async def rollback(self, actor: str) -> dict[str, Any]:
        """The previous primary becomes the primary again (walks back one step)."""
        fallback = self.settings.proxy.primary
        now = self.clock()
        restored: dict[str, str] = {}

        def decide(snap: Snapshot) -> Change:
            history = snap.history()
            if not history:
                raise Conflict("nothing to roll back to", "no earlier primary is recorded")
            back = history.pop()
            restored.update(back)
            before, before_name = snap.primary(fallback), snap.routing.get("primary_name", "")
            change = Change(routing=_routing(back["url"], back.get("name", ""), history))
            undone = snap.entries.get(before_name)
            if undone is not None and undone.state == PROMOTED:
                change.put[before_name] = _moved(undone, REJECTED, f"rolled back by {actor}", now)
            again = snap.entries.get(back.get("name", ""))
            if again is not None:
                change.put[again.name] = _moved(again, PROMOTED, f"restored by {actor}", now)
            note = _unchecked("a rollback is not gated")
            after = back["url"]
            change.audit = self._audit(
                "rollback", actor, before_name, note, "done", False, before, after
            )
            return change

        snap, version = await self.store.transaction(decide)
        return {
            "action": "rollback",
            "actor": actor,
            "primary": mask_url(restored["url"]),
            "primary_name": restored.get("name", ""),
            "previous": mask_url(snap.primary(fallback)),
            "version": version,
        }

    async def end_trial(self, name: str, ends_at: str, lock_owner: str) -> bool:
        """Record a time-boxed trial's final verdict; True when this call recorded it."""
        client = self.store.client
        lock = self.store.keys.lock(f"end:{name}:{ends_at}")
        if not await client.set(lock, lock_owner, nx=True, px=END_LOCK_MS):
            return False
        entry = (await self.store.snapshot()).entries.get(name)
        if entry is None or entry.state != ACTIVE or entry.ends_at != ends_at:
            return False
        gate = await self._gate_or_note(entry)
        now = self.clock()
        recorded = False

        def decide(snap: Snapshot) -> Change | None:
            nonlocal recorded
            current = snap.entries.get(name)
            if current is None or current.state != ACTIVE or current.ends_at != ends_at:
                return None
            recorded = True
            return Change(
                put={name: _moved(current, ENDED, f"trial ended at {ends_at}", now)},
                audit=self._audit("end", ACTOR_TIME_BOX, name, gate, "done", False),
            )

        await self.store.transaction(decide)
        return recorded

    # -- the audit log --

    # For decisions kept in modules of their own (control.canary).
    def gate_or_note(self, entry: Entry) -> Any:
        """The verdict for the audit log, or a note why there is none."""
        return self._gate_or_note(entry)

    def audit_entry(self, *args: Any) -> dict[str, str]:
        """One audit entry (see _audit)."""
        return self._audit(*args)

    def _audit(
        self,
        action: str,
        actor: str,
        candidate: str,
        gate: dict[str, Any],
        outcome: str,
        forced: bool,
        before: str = "",
        after: str = "",
    ) -> dict[str, str]:
        """One audit entry (stream fields are text: reasons as JSON, forced as true/false)."""
        return {
            "time": format_instant(self.clock()),
            "actor": actor,
            "action": action,
            "candidate": candidate,
            "outcome": outcome,
            "verdict": str(gate.get("verdict", NOT_CHECKED)),
            "reasons": orjson.dumps(gate.get("reasons") or []).decode(),
            "evidence": orjson.dumps(_evidence(gate)).decode(),
            "forced": "true" if forced else "false",
            "primary_before": mask_url(before),
            "primary_after": mask_url(after),
        }

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The audit log, newest first."""
        limit = max(1, min(limit, DECISIONS_MAX))
        with store_errors("cannot read the audit log"):
            rows = await self.store.client.xrevrange(self.store.keys.decisions(), count=limit)
        return [_decision(entry_id, fields) for entry_id, fields in rows]


def _decision(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    item: dict[str, Any] = {"id": entry_id.decode()}
    for key, value in fields.items():
        item[key.decode()] = value.decode()
    try:
        item["reasons"] = orjson.loads(item.get("reasons", "[]"))
    except orjson.JSONDecodeError:
        item["reasons"] = [item.get("reasons", "")]
    try:
        item["evidence"] = orjson.loads(item.get("evidence", "[]"))
    except orjson.JSONDecodeError:
        item["evidence"] = []
    item["forced"] = item.get("forced") == "true"
    return item


def decision_from_stream(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One audit entry as GET /v1/decisions shows it (for control.notify)."""
    return _decision(entry_id, fields)


def _check_promotable(entry: Entry) -> None:
    if entry.url is None:
        raise Conflict(
            f"{entry.name} is an ONNX candidate and cannot become the primary",
            "the primary is an HTTP endpoint: serve the model behind a URL, register that"
            " URL as a candidate, and promote it",
        )
    if entry.state == PROMOTED:
        raise Conflict(f"{entry.name} is already the primary", "nothing to do")


def _check_rejectable(entry: Entry) -> None:
    if entry.state == PROMOTED:
        raise Conflict(
            f"{entry.name} is the primary", "POST /v1/rollback goes back to the previous primary"
        )
    if entry.state == REJECTED:
        raise Conflict(f"{entry.name} is already rejected", "nothing to do")


def _moved(entry: Entry, state: str, reason: str, now: float) -> Entry:
    return replace(entry, state=state, reason=reason, updated_at=format_instant(now))


def _routing(url: str, name: str, history: list[dict[str, str]]) -> dict[str, str]:
    previous = history[-1] if history else {"url": "", "name": ""}
    return {
        "primary": url,
        "primary_name": name,
        "previous": previous["url"],
        "previous_name": previous.get("name", ""),
        "history": orjson.dumps(history).decode(),
        "decided": "1",
    }


def _demote_previous(snap: Snapshot, change: Change, name: str, now: float) -> None:
    """A promoted candidate replaced as primary by another one ends its reign as `ended`."""
    old = snap.entries.get(snap.routing.get("primary_name", ""))
    if old is not None and old.name != name and old.state == PROMOTED:
        change.put[old.name] = _moved(old, ENDED, f"replaced as primary by {name}", now)
