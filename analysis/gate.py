"""The promotion gate: a verdict from a report and a policy, with a reason per rule.

Each rule answers pass, fail, insufficient (the evidence cannot tell yet) or skip (the
rule does not apply, e.g. no labels). The verdict is `fail` if any rule fails, else
`insufficient` if any rule cannot tell, else `pass`. Every rule here except latency is
anytime-valid (docs/statistics.md): its error rate holds however often the verdict is
read, so the automation may act at any look. Rules:

- pairs: at least `min_pairs` compared.
- agreement: judged on the beta-binomial confidence sequence on effective rows (rows /
  design effect): pass when its lower bound is at least `min_agreement`, fail when its
  upper bound is below. With a noise floor (a secondary replica), the disagreement
  beyond the noise is judged instead, on its asymptotic confidence sequence, against
  1 - `min_agreement`.
- slices: fail when a slice is flagged (its one-sided e-value survives e-BH, and the gap
  is large) with an agreement drop of at least `max_slice_drop` versus the rest.
- latency: anytime-valid p99 bounds from the latency histograms, time buckets as
  clusters (analysis.latency): fail when the candidate's lower bound is beyond
  `max_p99_ratio` times the reference's upper bound (a secondary replica when there is
  one, else the primary), pass when its upper bound is within the ratio times the
  reference's lower bound; skipped when `max_p99_ratio` is 0.
- errors: the candidate's error rate at most `max_error_rate_increase` above the primary's,
  each rate bounded by its own confidence sequence at half the level.
- labels: with ground truth, fail when the sequential McNemar finds the candidate more
  often wrong where the primary was right than the reverse, or when the accuracy change's
  confidence sequence lies beyond -`max_accuracy_loss`; pass when its lower bound is within.
- recall (only with `max_recall_drop` > 0): with labels, per true class, fail when the
  Bonferroni interval of a class's recall change lies below -`max_recall_drop`
  (analysis.recall); judged at the end of a trial, not anytime.
- confidence (only with `max_confidence_drop` or `max_near_boundary_increase` > 0): fail
  when the paired confidence change's 95% interval lies below -max_confidence_drop, or the
  near-boundary share rises by more than max_near_boundary_increase (McNemar p < 0.05);
  judged at the end of a trial, not anytime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from analysis import latency as latency_rule
from common.settings import GateSettings

PASS, FAIL, INSUFFICIENT, SKIP = "pass", "fail", "insufficient", "skip"
SIGNIFICANCE = 0.05


ANYTIME_NOTE = (
    "Every rule marked anytime-valid keeps its 5% error rate however often this verdict is"
    " read: you, the page and the automation may check it at any moment and act on it."
)
END_ONLY_NOTE = " Rules not marked so are judged once, at the end of the trial."


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome and its explanation in plain words.

    `anytime` says the outcome keeps its error rate at any look (a confidence sequence or
    an e-process); `evidence` is the number it was decided on (a bound or an e-value), for
    the audit log.
    """

    rule: str
    outcome: str
    detail: str
    anytime: bool = False
    evidence: dict[str, Any] | None = None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100 * x:.1f} points"


def evaluate_gate(report: dict[str, Any], gate: GateSettings) -> dict[str, Any]:
    """{"verdict": pass | fail | insufficient, "reasons": [...], "rules": [...]}."""
    results = [rule(report, gate) for rule in (*RULES, *_optional_rules(gate))]
    outcomes = {r.outcome for r in results}
    verdict = FAIL if FAIL in outcomes else INSUFFICIENT if INSUFFICIENT in outcomes else PASS
    end_only = [r.rule for r in results if not r.anytime and r.outcome != SKIP]
    return {
        "verdict": verdict,
        "reasons": [f"{r.outcome}: {r.detail}" for r in results],
        "rules": [asdict(r) for r in results],
        "anytime_note": ANYTIME_NOTE + (END_ONLY_NOTE if end_only else ""),
        "end_only_rules": end_only,
    }


def _optional_rules(gate: GateSettings) -> list[Callable[[dict[str, Any], GateSettings], Any]]:
    """The rules a policy switches on (off by default, so they add no reason unless asked)."""
    rules: list[Callable[[dict[str, Any], GateSettings], Any]] = []
    if gate.max_recall_drop > 0:
        rules.append(_recall)
    if gate.max_confidence_drop > 0 or gate.max_near_boundary_increase > 0:
        rules.append(_confidence)
    return rules


def _pairs(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    pairs = int(report.get("pairs") or 0)
    evidence = {"pairs": pairs}
    if pairs >= gate.min_pairs:
        text = f"{pairs:,} pairs compared (the policy needs {gate.min_pairs:,})"
        return RuleResult("pairs", PASS, text, True, evidence)
    text = f"only {pairs:,} pairs compared so far; the policy needs {gate.min_pairs:,}"
    return RuleResult("pairs", INSUFFICIENT, text, True, evidence)


def _agreement(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    agreement = report.get("agreement") or {}
    if agreement.get("rate") is None:
        return RuleResult("agreement", INSUFFICIENT, "no compared answers yet")
    excess = (report.get("noise_floor") or {}).get("excess")
    if excess and excess.get("excess") is not None:
        return _excess(report, excess, gate)
    rate, low, high = agreement["rate"], agreement["cs_low"], agreement["cs_high"]
    minimum = gate.min_agreement
    bounds = f"agreement {_pct(rate)}, anytime-valid 95% bounds [{_pct(low)}, {_pct(high)}]"
    evidence = {"bound": "confidence sequence", "low": low, "high": high, "minimum": minimum}
    if low >= minimum:
        text, outcome = f"{bounds}: above the {_pct(minimum)} minimum", PASS
    elif high < minimum:
        text, outcome = f"{bounds}: below the {_pct(minimum)} minimum", FAIL
    else:
        text = f"{bounds} still include the {_pct(minimum)} minimum: more pairs needed"
        outcome = INSUFFICIENT
    return RuleResult("agreement", outcome, text, True, evidence)


def _excess(report: dict[str, Any], excess: dict[str, Any], gate: GateSettings) -> RuleResult:
    noise = report["noise_floor"]
    allowed = 1.0 - gate.min_agreement
    text = (
        f"disagreement beyond the noise floor ({noise.get('candidate')} agrees"
        f" {_pct(noise.get('agreement'))} with the primary) is {_pts(excess['excess'])},"
        f" anytime-valid 95% bounds [{_pts(excess['ci_low'])}, {_pts(excess['ci_high'])}]"
    )
    evidence = {
        "bound": "confidence sequence on the excess",
        "low": excess["ci_low"],
        "high": excess["ci_high"],
        "allowed": allowed,
    }
    if excess["ci_high"] <= allowed:
        text, outcome = f"{text}: within the allowed {_pts(allowed)}", PASS
    elif excess["ci_low"] > allowed:
        text, outcome = f"{text}: beyond the allowed {_pts(allowed)}", FAIL
    else:
        text, outcome = f"{text} still includes the allowed {_pts(allowed)}", INSUFFICIENT
    return RuleResult("agreement", outcome, text, True, evidence)


def _slice_name(row: dict[str, Any]) -> str:
    return f"{row['slice']}={row['value']}"


def _slices(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    flagged = [r for r in report.get("slices") or [] if r.get("flagged")]
    large = [
        r
        for r in flagged
        if (r.get("complement_agreement") or 0) - (r.get("agreement") or 0) >= gate.max_slice_drop
    ]
    if large:
        worst = max(large, key=lambda r: r["complement_agreement"] - r["agreement"])
        drop = worst["complement_agreement"] - worst["agreement"]
        detail = (
            f"slice {_slice_name(worst)} agrees {_pct(worst['agreement'])} against"
            f" {_pct(worst['complement_agreement'])} elsewhere ({worst['pairs']:,} pairs,"
            f" e-value {_e(worst.get('e_value'))}, e-BH adjusted p = {worst['p_adj']:.2g}):"
            f" a drop of {_pts(drop)}, the policy allows {_pts(gate.max_slice_drop)}"
        )
        if len(large) > 1:
            detail += f"; {len(large) - 1} more slice(s) too"
        evidence = {
            "test": "e-value, e-BH over slices",
            "slice": _slice_name(worst),
            "e_value": worst.get("e_value"),
            "p_adj": worst["p_adj"],
            "drop": drop,
        }
        return RuleResult("slices", FAIL, detail, True, evidence)
    tested = [r for r in report.get("slices") or [] if r.get("p_adj") is not None]
    evidence = {"test": "e-value, e-BH over slices", "tested": len(tested)}
    if flagged:
        names = ", ".join(_slice_name(r) for r in flagged[:3])
        text = f"{names} differ significantly but by less than {_pts(gate.max_slice_drop)}"
        return RuleResult("slices", PASS, text, True, evidence)
    text = f"no slice is significantly worse ({len(tested)} slices tested)"
    return RuleResult("slices", PASS, text, True, evidence)


def _e(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _latency(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    latency = report.get("latency") or {}
    if latency.get("comparable") is False:
        return RuleResult(
            "latency", SKIP, "the candidate runs in the worker: its latency is not comparable"
        )
    if gate.max_p99_ratio == 0:
        return RuleResult("latency", SKIP, "the policy does not judge latency (max_p99_ratio = 0)")
    sequential = latency.get("sequential")
    if not sequential or not sequential["candidate"]["n"] or not sequential["reference_side"]["n"]:
        return RuleResult("latency", INSUFFICIENT, "no latency measured on both sides yet")
    outcome, detail = latency_rule.judge(sequential, gate.max_p99_ratio)
    cand, ref = sequential["candidate"], sequential["reference_side"]
    evidence = {
        "reference": sequential["reference"],
        "candidate_p99": [cand["p99_low"], cand["p99_high"]],
        "reference_p99": [ref["p99_low"], ref["p99_high"]],
        "max_ratio": gate.max_p99_ratio,
    }
    return RuleResult("latency", outcome, detail, True, evidence)


def _errors(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    """Anytime-valid: each side's error rate has a confidence sequence at half the level."""
    errors = report.get("errors") or {}
    pairs = int(report.get("pairs") or 0)
    if not pairs:
        return RuleResult("errors", INSUFFICIENT, "no pairs yet", True)
    primary_low, primary_high = errors.get("primary_cs") or (0.0, 1.0)
    low, high = errors.get("candidate_cs") or (0.0, 1.0)
    rate = errors.get("candidate", 0) / pairs
    allowed = gate.max_error_rate_increase
    text = (
        f"candidate errors {_pct(rate)} (anytime-valid bound up to {_pct(high)}) against the"
        f" primary's {_pct(errors.get('primary', 0) / pairs)} (at least {_pct(primary_low)})"
    )
    evidence = {
        "bound": "confidence sequences",
        "increase_low": low - primary_high,
        "increase_high": high - primary_low,
        "allowed": allowed,
    }
    if high - primary_low <= allowed:
        text, outcome = f"{text}, within +{_pts(allowed)}", PASS
    elif low - primary_high > allowed:
        text, outcome = f"{text}, more than +{_pts(allowed)}", FAIL
    else:
        text, outcome = f"{text}: cannot tell yet whether it exceeds +{_pts(allowed)}", INSUFFICIENT
    return RuleResult("errors", outcome, text, True, evidence)


def _labels(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    """Sequential McNemar on the discordant pairs, and anytime bounds on the accuracy change."""
    labels = report.get("labels") or {}
    n = int(labels.get("n") or 0)
    if not n:
        return RuleResult("labels", SKIP, "no ground-truth labels yet: accuracy not checked")
    b, c = int(labels.get("negative_flips", 0)), int(labels.get("positive_flips", 0))
    share_low = (labels.get("negative_share_cs") or (0.0, 1.0))[0]
    low, high = labels.get("delta_cs_low"), labels.get("delta_cs_high")
    text = (
        f"on {n:,} labelled pairs accuracy is {_pct(labels.get('candidate_accuracy'))} against"
        f" {_pct(labels.get('primary_accuracy'))}; the candidate is wrong where the primary was"
        f" right {b} times and right where it was wrong {c} times"
    )
    evidence = {
        "bound": "confidence sequences",
        "negative_share_low": share_low,
        "delta_low": low,
        "delta_high": high,
        "allowed_loss": gate.max_accuracy_loss,
    }
    loss = _pts(gate.max_accuracy_loss)
    if share_low > 0.5 or (high is not None and high < -gate.max_accuracy_loss):
        text = f"{text} (anytime-valid bounds: change [{_pts_or(low)}, {_pts_or(high)}]):"
        text, outcome = f"{text} a significant accuracy loss", FAIL
    elif low is not None and low >= -gate.max_accuracy_loss:
        text, outcome = f"{text}; any loss is within {loss}", PASS
    else:
        text, outcome = f"{text}; more labels are needed to rule out a loss of {loss}", INSUFFICIENT
    return RuleResult("labels", outcome, text, True, evidence)


def _recall(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    """Per true class (analysis.recall): fail when a class's recall change is surely below
    -max_recall_drop (Bonferroni over the classes; judged at the end, not anytime)."""
    classes = [r for r in (report.get("labels") or {}).get("by_class") or []
               if r.get("ci_low") is not None]  # fmt: skip
    drop = gate.max_recall_drop
    if not classes:
        return RuleResult("recall", SKIP, "no class has enough labelled rows for recall yet")
    evidence = {"allowed_drop": drop, "classes": {r["class"]: r["delta"] for r in classes}}
    lost = [r for r in classes if r["ci_high"] < -drop]
    unsure = [r for r in classes if r["ci_low"] < -drop]
    if lost:
        names = ", ".join(f"{r['class']} {_pts(r['delta'])}" for r in lost[:5])
        return RuleResult("recall", FAIL, f"recall drops beyond {_pts(drop)}: {names}",
                          False, evidence)  # fmt: skip
    if unsure:
        names = ", ".join(str(r["class"]) for r in unsure[:5])
        text = f"more labels are needed to rule out a recall drop of {_pts(drop)} for {names}"
        return RuleResult("recall", INSUFFICIENT, text, False, evidence)
    text = f"every class's recall change is within {_pts(drop)} ({len(classes)} classes)"
    return RuleResult("recall", PASS, text, False, evidence)


def _confidence(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    """Optional: the candidate grows less sure (mean paired confidence change, its 95%
    interval against -max_confidence_drop) or answers near the boundary more often (share
    with margin < 0.1, McNemar on the paired rows, against max_near_boundary_increase)."""
    deltas = report.get("confidence_deltas") or {}
    nb = (report.get("confidence") or {}).get("near_boundary") or {}
    findings, unsure = [], []
    drop = gate.max_confidence_drop
    if drop > 0 and deltas.get("n"):
        low, high = deltas.get("ci_low"), deltas.get("ci_high")
        if high is not None and high < -drop:
            findings.append(f"confidence falls by {_pts(-deltas['mean'])} (allowed {_pts(drop)})")
        elif low is None or low < -drop:
            unsure.append(f"a confidence drop of {_pts(drop)}")
    rise = gate.max_near_boundary_increase
    if rise > 0 and nb.get("n") and nb.get("candidate") is not None:
        increase = nb["candidate"] - nb["primary"]
        if increase > rise and (nb.get("p") or 1.0) < SIGNIFICANCE:
            findings.append(f"near-boundary answers up {_pts(increase)} (allowed {_pts(rise)})")
    evidence = {"confidence_deltas": deltas.get("mean"), "near_boundary": nb.get("candidate")}
    if findings:
        return RuleResult("confidence", FAIL, "; ".join(findings), False, evidence)
    if not deltas.get("n") and not nb.get("n"):
        return RuleResult("confidence", SKIP, "no paired confidences yet")
    if unsure:
        text = f"more pairs are needed to rule out {', '.join(unsure)}"
        return RuleResult("confidence", INSUFFICIENT, text, False, evidence)
    return RuleResult("confidence", PASS, "confidence and near-boundary share within policy",
                      False, evidence)  # fmt: skip


def _pts_or(x: float | None) -> str:
    return "n/a" if x is None else _pts(x)


RULES: tuple[Callable[[dict[str, Any], GateSettings], RuleResult], ...] = (
    _pairs,
    _agreement,
    _slices,
    _latency,
    _errors,
    _labels,
)
