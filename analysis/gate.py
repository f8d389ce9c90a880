"""The promotion gate: a verdict from a report and a policy, with a reason per rule.

Each rule answers pass, fail, insufficient (the evidence cannot tell yet) or skip (the
rule does not apply, e.g. no labels). The verdict is `fail` if any rule fails, else
`insufficient` if any rule cannot tell, else `pass`. Rules (STATISTICS.md, "The gate"):

- pairs: at least `min_pairs` compared.
- agreement: judged on the anytime-valid confidence sequence, so reading the verdict at
  any moment keeps its error rate: pass when its lower bound is at least `min_agreement`,
  fail when its upper bound is below. With a noise floor (a secondary replica), the
  disagreement beyond the noise is judged instead, against 1 - `min_agreement`.
- slices: fail when a slice is flagged (significant after Benjamini-Hochberg, and large)
  with an agreement drop of at least `max_slice_drop` versus the rest of the traffic.
- latency: anytime-valid p99 bounds from the latency histograms, time buckets as
  clusters (analysis.latency): fail when the candidate's lower bound is beyond
  `max_p99_ratio` times the reference's upper bound (a secondary replica when there is
  one, else the primary), pass when its upper bound is within the ratio times the
  reference's lower bound; skipped when `max_p99_ratio` is 0.
- errors: the candidate's error rate at most `max_error_rate_increase` above the primary's.
- labels: with ground truth, fail when the candidate is significantly more often wrong
  where the primary was right than the reverse, or when the accuracy loss is clearly
  beyond `max_accuracy_loss`; pass when its lower bound is within it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from analysis import latency as latency_rule
from analysis import stats
from common.settings import GateSettings

PASS, FAIL, INSUFFICIENT, SKIP = "pass", "fail", "insufficient", "skip"
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome and its explanation in plain words."""

    rule: str
    outcome: str
    detail: str


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100 * x:.1f} points"


def evaluate_gate(report: dict[str, Any], gate: GateSettings) -> dict[str, Any]:
    """{"verdict": pass | fail | insufficient, "reasons": [...], "rules": [...]}."""
    results = [rule(report, gate) for rule in RULES]
    outcomes = {r.outcome for r in results}
    verdict = FAIL if FAIL in outcomes else INSUFFICIENT if INSUFFICIENT in outcomes else PASS
    return {
        "verdict": verdict,
        "reasons": [f"{r.outcome}: {r.detail}" for r in results],
        "rules": [asdict(r) for r in results],
    }


def _pairs(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    pairs = int(report.get("pairs") or 0)
    if pairs >= gate.min_pairs:
        return RuleResult(
            "pairs", PASS, f"{pairs:,} pairs compared (the policy needs {gate.min_pairs:,})"
        )
    return RuleResult(
        "pairs",
        INSUFFICIENT,
        f"only {pairs:,} pairs compared so far; the policy needs {gate.min_pairs:,}",
    )


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
    if low >= minimum:
        return RuleResult("agreement", PASS, f"{bounds}: above the {_pct(minimum)} minimum")
    if high < minimum:
        return RuleResult("agreement", FAIL, f"{bounds}: below the {_pct(minimum)} minimum")
    return RuleResult(
        "agreement",
        INSUFFICIENT,
        f"{bounds} still include the {_pct(minimum)} minimum: more pairs needed",
    )


def _excess(report: dict[str, Any], excess: dict[str, Any], gate: GateSettings) -> RuleResult:
    noise = report["noise_floor"]
    allowed = 1.0 - gate.min_agreement
    text = (
        f"disagreement beyond the noise floor ({noise.get('candidate')} agrees"
        f" {_pct(noise.get('agreement'))} with the primary) is {_pts(excess['excess'])},"
        f" 95% interval [{_pts(excess['ci_low'])}, {_pts(excess['ci_high'])}]"
    )
    if excess["ci_high"] <= allowed:
        return RuleResult("agreement", PASS, f"{text}: within the allowed {_pts(allowed)}")
    if excess["ci_low"] > allowed:
        return RuleResult("agreement", FAIL, f"{text}: beyond the allowed {_pts(allowed)}")
    return RuleResult(
        "agreement", INSUFFICIENT, f"{text} still includes the allowed {_pts(allowed)}"
    )


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
            f" {_pct(worst['complement_agreement'])} elsewhere ({worst['pairs']:,} pairs, adjusted"
            f" p = {worst['p_adj']:.2g}): a drop of {_pts(drop)},"
            f" the policy allows {_pts(gate.max_slice_drop)}"
        )
        if len(large) > 1:
            detail += f"; {len(large) - 1} more slice(s) too"
        return RuleResult("slices", FAIL, detail)
    if flagged:
        names = ", ".join(_slice_name(r) for r in flagged[:3])
        return RuleResult(
            "slices",
            PASS,
            f"{names} differ significantly but by less than {_pts(gate.max_slice_drop)}",
        )
    tested = sum(1 for r in report.get("slices") or [] if r.get("p_adj") is not None)
    return RuleResult("slices", PASS, f"no slice is significantly worse ({tested} slices tested)")


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
    return RuleResult("latency", outcome, detail)


def _errors(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    errors = report.get("errors") or {}
    pairs = int(report.get("pairs") or 0)
    if not pairs:
        return RuleResult("errors", INSUFFICIENT, "no pairs yet")
    primary_rate = errors.get("primary", 0) / pairs
    low, high = stats.wilson_interval(int(errors.get("candidate", 0)), pairs)
    rate = errors.get("candidate", 0) / pairs
    text = (
        f"candidate errors {_pct(rate)} (95% interval up to {_pct(high)}) against the primary's"
        f" {_pct(primary_rate)}"
    )
    if high - primary_rate <= gate.max_error_rate_increase:
        return RuleResult("errors", PASS, f"{text}, within +{_pts(gate.max_error_rate_increase)}")
    if low - primary_rate > gate.max_error_rate_increase:
        return RuleResult(
            "errors", FAIL, f"{text}, more than +{_pts(gate.max_error_rate_increase)}"
        )
    return RuleResult(
        "errors",
        INSUFFICIENT,
        f"{text}: cannot tell yet whether it exceeds +{_pts(gate.max_error_rate_increase)}",
    )


def _labels(report: dict[str, Any], gate: GateSettings) -> RuleResult:
    labels = report.get("labels") or {}
    n = int(labels.get("n") or 0)
    if not n:
        return RuleResult("labels", SKIP, "no ground-truth labels yet: accuracy not checked")
    b, c = int(labels.get("negative_flips", 0)), int(labels.get("positive_flips", 0))
    p = labels.get("mcnemar_p")
    low, high = labels.get("delta_ci_low"), labels.get("delta_ci_high")
    text = (
        f"on {n:,} labelled pairs accuracy is {_pct(labels.get('candidate_accuracy'))} against"
        f" {_pct(labels.get('primary_accuracy'))}; the candidate is wrong where the primary was"
        f" right {b} times and right where it was wrong {c} times"
    )
    if (p is not None and p < SIGNIFICANCE and b > c) or (
        high is not None and high < -gate.max_accuracy_loss
    ):
        return RuleResult(
            "labels", FAIL, f"{text} (McNemar p = {p:.2g}): a significant accuracy loss"
        )
    if low is not None and low >= -gate.max_accuracy_loss:
        return RuleResult(
            "labels", PASS, f"{text}; any loss is within {_pts(gate.max_accuracy_loss)}"
        )
    return RuleResult(
        "labels",
        INSUFFICIENT,
        f"{text}; more labels are needed to rule out a loss of {_pts(gate.max_accuracy_loss)}",
    )


RULES: tuple[Callable[[dict[str, Any], GateSettings], RuleResult], ...] = (
    _pairs,
    _agreement,
    _slices,
    _latency,
    _errors,
    _labels,
)
