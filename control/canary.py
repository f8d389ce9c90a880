"""Put a candidate on canary: it answers a share of live requests (proxy.canary).

`POST /v1/candidates/{name}/canary` with `{"weight": 0.2}` sets the share; weight 0 ends
the canary (the candidate goes back to shadow only). A weight above 0 needs the gate to
pass on the shadow's evidence, unless `?force=true` (audited as forced): the same rule
as promote. With a plan (`{"steps": [0.05, 0.25, 0.5, 1.0], "step_s": 600}`) the gate's lease holder
moves to the next step once a step has lasted `step_s` and the gate passes on the
evidence gathered during that step; a next step of 1 promotes the candidate.
The gate automation (control.trials) ends a canary at once, as actor "automation",
when the gate fails on an anytime-valid rule: the shadow's pairs and the canary's own
(the primary asked in the background, proxy.canary) keep the comparison going. The weight lives in the
candidate's registry entry, so it reaches every
replica the way routing changes do (pub/sub and the periodic re-read, control.sync).
Every change, and every refusal, is in the audit log with the gate's evidence.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

from common.settings import format_instant, parse_instant
from control.decisions import ACTOR_AUTOMATION, PASS, Decisions
from control.registry import ACTIVE, Change, Conflict, Entry, Invalid, Snapshot

ACTION = "canary"
MAX_STEPS = 20
USAGE = 'send {"weight": w} (0 ends it) or {"steps": [0.05, 0.25, 1.0], "step_s": 600}'


@dataclass(frozen=True)
class Plan:
    """What a canary request asks for: one weight, or steps with a least time on each."""

    weight: float
    steps: tuple[float, ...] = ()
    step_s: float = 0.0


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid("invalid canary", USAGE)
    if not math.isfinite(value) or not low <= value <= high:
        raise Invalid("invalid canary", f"{what} must be from {low:g} to {high:g}, got {value!r}")
    return float(value)


def canary_plan(body: Any) -> Plan:
    """The plan of a canary request body: {"weight": w} or {"steps": [...], "step_s": s}."""
    if not isinstance(body, dict) or sorted(body) not in (["weight"], ["step_s", "steps"]):
        raise Invalid("invalid canary", USAGE)
    if "weight" in body:
        return Plan(_number(body["weight"], "weight", 0, 1))
    steps = body["steps"]
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
        raise Invalid("invalid canary", f"steps: a list of 1 to {MAX_STEPS} weights")
    weights = tuple(_number(w, "a step", 0, 1) for w in steps)
    if weights[0] <= 0 or any(b <= a for a, b in itertools.pairwise(weights)):
        raise Invalid("invalid canary", "steps must grow, from above 0")
    step_s = _number(body["step_s"], "step_s", 0, 30 * 86400)
    return Plan(weights[0], weights, step_s)


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
    plan: Plan | float,
    actor: str,
    force: bool = False,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Set the candidate's canary weight on every replica (gate first unless forced)."""
    plan = plan if isinstance(plan, Plan) else Plan(float(plan))
    weight = plan.weight
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
        change.put[name] = replace(
            current,
            canary=weight,
            canary_steps=plan.steps,
            canary_step_s=plan.step_s,
            canary_since=stamp,
            updated_at=stamp,
        )
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
        "steps": list(plan.steps),
        "step_s": plan.step_s,
        "previous_weight": entry.canary,
        "gate": gate,
        "version": version,
    }


async def advance(decisions: Decisions, entry: Entry, now: float) -> bool:
    """The plan's next step once this one has lasted `step_s` and the gate passes on the
    evidence gathered during it; a next weight of 1 promotes. True when promoted."""
    since = parse_instant(entry.canary_since).timestamp() if entry.canary_since else now
    if now - since < entry.canary_step_s:
        return False
    gate = await decisions.gate_over(entry, now - since, now)
    if gate["verdict"] != PASS:
        return False
    later = [w for w in entry.canary_steps if w > entry.canary]
    if not later or later[0] >= 1:
        await decisions.promote(entry.name, ACTOR_AUTOMATION, gate=gate)
        return True
    plan = Plan(later[0], tuple(entry.canary_steps), entry.canary_step_s)
    await set_canary(decisions, entry.name, plan, ACTOR_AUTOMATION, gate=gate)
    return False


__all__ = ["Plan", "advance", "canary_plan", "set_canary"]
