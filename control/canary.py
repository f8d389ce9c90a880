"""Put a candidate on canary: it answers a share of live requests (proxy.canary).

`POST /v1/candidates/{name}/canary` with `{"weight": 0.2}` sets the share; weight 0 ends
the canary (the candidate goes back to shadow only). A weight above 0 needs the gate to
pass on the shadow's evidence, unless `?force=true` (audited as forced): the same rule
as promote. The gate automation (control.trials) ends a canary at once, as actor "automation",
when the gate fails on an anytime-valid rule: the canary's own requests are not
mirrored, the users outside it keep the comparison going. The weight lives in the
candidate's registry entry, so it reaches every
replica the way routing changes do (pub/sub and the periodic re-read, control.sync).
Every change, and every refusal, is in the audit log with the gate's evidence.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from common.settings import format_instant
from control.decisions import PASS, Decisions
from control.registry import ACTIVE, Change, Conflict, Entry, Invalid, Snapshot

ACTION = "canary"


def canary_weight(body: Any) -> float:
    """The weight of a canary request body: a number in [0, 1]."""
    weight = body.get("weight") if isinstance(body, dict) else None
    unknown = sorted(set(body) - {"weight"}) if isinstance(body, dict) else []
    if unknown or isinstance(weight, bool) or not isinstance(weight, int | float):
        raise Invalid("invalid canary", 'send {"weight": w} with w from 0 (end) to 1')
    if not math.isfinite(weight) or not 0 <= weight <= 1:
        raise Invalid("invalid canary", f"weight must be from 0 to 1, got {weight!r}")
    return float(weight)


def _check_canary(entry: Entry, weight: float) -> None:
    if weight == 0:
        return
    if entry.url is None:
        raise Conflict(
            f"{entry.name} is an ONNX candidate and cannot answer clients",
            "serve the model behind a URL and register that URL as a candidate",
        )
    if entry.state != ACTIVE:
        raise Conflict(f"{entry.name} is {entry.state}", "only an active trial can go canary")


async def set_canary(
    decisions: Decisions,
    name: str,
    weight: float,
    actor: str,
    force: bool = False,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Set the candidate's canary weight on every replica (gate first unless forced)."""
    entry = (await decisions.store.snapshot()).entry(name)
    _check_canary(entry, weight)
    if gate is None and (force or weight == 0):
        gate = await decisions.gate_or_note(entry)
    if gate is None:
        gate = await decisions.gate(entry)
    if weight > 0 and not force and gate["verdict"] != PASS:
        refused = decisions.audit_entry(ACTION, actor, name, gate, "refused", force)
        await decisions.store.audit(refused | {"weight_after": f"{weight:g}"})
        raise Conflict(
            f"the gate refuses to put {name} on canary",
            f"verdict {gate['verdict']}; use force=true to override",
            gate=gate,
        )
    now = decisions.clock()

    def decide(snap: Snapshot) -> Change:
        current = snap.entry(name)
        _check_canary(current, weight)
        change = Change()
        stamp = format_instant(now)
        change.put[name] = replace(current, canary=weight, updated_at=stamp)
        change.audit = decisions.audit_entry(ACTION, actor, name, gate, "done", force)
        change.audit |= {"weight_before": f"{current.canary:g}", "weight_after": f"{weight:g}"}
        return change

    _, version = await decisions.store.transaction(decide)
    return {
        "action": ACTION,
        "candidate": name,
        "actor": actor,
        "forced": force,
        "weight": weight,
        "previous_weight": entry.canary,
        "gate": gate,
        "version": version,
    }


__all__ = ["canary_weight", "set_canary"]
