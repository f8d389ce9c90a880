"""Put a candidate on canary: it answers a share of live requests (proxy.canary).

`POST /v1/candidates/{name}/canary` with `{"weight": 0.2}` sets the share; weight 0 ends
the canary (the candidate goes back to shadow only). A weight above 0 needs the gate to
pass on the shadow's evidence, unless `?force=true` (audited as forced): the same rule
as promote. With a plan (`{"steps": [0.05, 0.25, 0.5, 1.0], "step_s": 600, "min_pairs": 500}`)
the gate's lease holder moves to the next step once a step has lasted `step_s`, holds at
least `min_pairs` pairs of its own (optional, 0 by default) and the gate passes on them;
a next step of 1 promotes the candidate. A step's evidence is the whole time buckets that
began after it did (`worker.bucket_seconds`): what was gathered at the earlier weight
never counts for the next.
The gate automation (control.trials) ends a canary at once, as actor "automation",
when the gate fails on an anytime-valid rule: the shadow's pairs and the canary's own
(the primary asked in the background, proxy.canary) keep the comparison going. The weight
lives in the candidate's registry entry, so it reaches every replica the way routing
changes do (pub/sub and the periodic re-read, control.sync).
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
MAX_MIN_PAIRS = 10_000_000
USAGE = (
    'send {"weight": w} (0 ends it) or {"steps": [0.05, 0.25, 1.0], "step_s": 600} '
    '(optionally with "min_pairs": 500)'
)
_PLAN_KEYS = (["weight"], ["step_s", "steps"], ["min_pairs", "step_s", "steps"])


@dataclass(frozen=True)
class Plan:
    """What a canary request asks for: one weight, or steps with a least time on each."""

    weight: float
    steps: tuple[float, ...] = ()
    step_s: float = 0.0
    min_pairs: int = 0


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid("invalid canary", USAGE)
    if not math.isfinite(value) or not low <= value <= high:
        raise Invalid("invalid canary", f"{what} must be from {low:g} to {high:g}, got {value!r}")
    return float(value)


def canary_plan(body: Any) -> Plan:
    """The plan of a canary request body: {"weight": w} or {"steps": [...], "step_s": s}."""
    if not isinstance(body, dict) or sorted(body) not in _PLAN_KEYS:
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
    min_pairs = _number(body.get("min_pairs", 0), "min_pairs", 0, MAX_MIN_PAIRS)
    if min_pairs != int(min_pairs):
        raise Invalid("invalid canary", f"min_pairs must be a whole number, got {min_pairs:g}")
    return Plan(weights[0], weights, step_s, int(min_pairs))


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
            canary_min_pairs=plan.min_pairs,
            canary_since=stamp,
            updated_at=stamp,
        )
        change.audit = decisions.audit_entry(ACTION, actor, name, gate, "done", force)
        change.audit |= {"weight_before": f"{current.canary:g}", "weight_after": f"{weight:g}"}
        change.audit |= _step_evidence(gate)
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
        "min_pairs": plan.min_pairs,
        "previous_weight": entry.canary,
        "gate": gate,
        "version": version,
    }


def _step_evidence(gate: dict[str, Any]) -> dict[str, str]:
    """What a step was judged on, for the audit entry (empty for a person's change)."""
    if "step_since" not in gate:
        return {}
    return {
        "step_since": str(gate["step_since"]),
        "step_pairs": str(gate.get("pairs") or 0),
        "step_min_pairs": str(gate.get("step_min_pairs") or 0),
    }


def step_start(since: float, bucket_s: int) -> float:
    """Where a step's own evidence starts: the first bucket boundary at or after `since`
    (the bucket holding `since` also holds pairs from the earlier weight)."""
    return math.ceil(since / bucket_s) * bucket_s


async def advance(decisions: Decisions, entry: Entry, now: float) -> bool:
    """The plan's next step once this one has lasted `step_s`, gathered `min_pairs` pairs of
    its own and the gate passes on them; a next weight of 1 promotes. True when promoted."""
    since = parse_instant(entry.canary_since).timestamp() if entry.canary_since else now
    if now - since < entry.canary_step_s:
        return False
    start = step_start(since, decisions.settings.worker.bucket_seconds)
    if now <= start:
        return False  # no whole bucket of this step's own yet
    gate = await decisions.gate_over(entry, start, now)
    if gate["verdict"] != PASS or (gate.get("pairs") or 0) < entry.canary_min_pairs:
        return False
    gate = gate | {"step_since": format_instant(start), "step_min_pairs": entry.canary_min_pairs}
    later = [w for w in entry.canary_steps if w > entry.canary]
    if not later or later[0] >= 1:
        await decisions.promote(entry.name, ACTOR_AUTOMATION, gate=gate)
        return True
    steps = tuple(entry.canary_steps)
    plan = Plan(later[0], steps, entry.canary_step_s, entry.canary_min_pairs)
    await set_canary(decisions, entry.name, plan, ACTOR_AUTOMATION, gate=gate)
    return False


__all__ = ["Plan", "advance", "canary_plan", "set_canary", "step_start"]
