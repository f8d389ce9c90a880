"""From a report to what a page shows: formatted numbers, sorted slices, links, badges.

Pure functions of the report JSON (analysis.report) and a registry entry, shared by the
web page's templates (as jinja filters) and the terminal tables (shadowtrial.render).
Every number that is an estimate is shown with its interval or p-value beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup

from analysis.ui import charts
from common.settings import Settings

VERDICT_CLASS = {"pass": "pass", "fail": "fail", "insufficient": "insufficient"}
MINUS, TIMES = "\u2212", "\u00d7"
OUTCOME_CLASS = {"pass": "pass", "fail": "fail", "insufficient": "insufficient", "skip": "skip"}


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def pct(x: object, digits: int = 1) -> str:
    """0.9731 -> '97.3%'; None -> '—'."""
    return charts.pct(x, digits)


def interval(low: object, high: object, digits: int = 1) -> str:
    """'[96.9%, 97.6%]', or '' when either bound is missing."""
    if _number(low) is None or _number(high) is None:
        return ""
    return f"[{pct(low, digits)}, {pct(high, digits)}]"


def ci(bounds: object, digits: int = 1) -> str:
    """An interval given as a [low, high] pair (as the report stores some)."""
    if not isinstance(bounds, list | tuple) or len(bounds) != 2:
        return ""
    return interval(bounds[0], bounds[1], digits)


def pts(x: object, digits: int = 1) -> str:
    """A difference of rates in points, signed with a true minus sign (-0.023: 2.3 pts down)."""
    value = _number(x)
    if value is None:
        return "—"
    sign = "+" if value > 0 else (MINUS if value < 0 else "±")
    return f"{sign}{abs(value) * 100:.{digits}f} pts"


def pval(p: object) -> str:
    """p-values with two significant digits; tiny ones as '< 0.001'."""
    value = _number(p)
    if value is None:
        return "—"
    if value < 0.001:
        return "< 0.001"
    return f"{value:.2g}" if value < 0.01 else f"{value:.3f}".rstrip("0").rstrip(".")


def peq(p: object) -> str:
    """A p-value in prose: 'p = 0.042', 'p < 0.001'."""
    text = pval(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def num(x: object) -> str:
    """Counts with thousands separators; None -> '—'."""
    value = _number(x)
    return "—" if value is None else f"{int(value):,}"


def ms(x: object) -> str:
    """A latency in milliseconds."""
    value = _number(x)
    if value is None:
        return "—"
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def signed(x: object, digits: int = 3) -> str:
    """A signed plain number (a confidence shift): +0.012."""
    value = _number(x)
    return "—" if value is None else f"{value:+.{digits}f}"


def ratio(x: object) -> str:
    value = _number(x)
    return "—" if value is None else f"{value:.2f}{TIMES}"


def clock(ts: object) -> str:
    """Epoch seconds as 'YYYY-MM-DD HH:MM:SS UTC'; text (an ISO time) as it is."""
    if isinstance(ts, str):
        return ts
    value = _number(ts)
    if value is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


FILTERS = {
    "pct": pct,
    "pts": pts,
    "ci": ci,
    "pval": pval,
    "peq": peq,
    "num": num,
    "ms": ms,
    "signed": signed,
    "ratio": ratio,
    "clock": clock,
}


# -- links ----------------------------------------------------------------------------------


def drilldown_url(
    root: str, name: str, feature: str | None = None, value: str | None = None
) -> str:
    """The admin API's divergent pairs of one candidate, optionally in one slice."""
    query = {"divergent": "true"}
    if feature is not None:
        query["slice"] = f"{feature}={value}"
    return f"{root}/v1/candidates/{quote(name, safe='')}/pairs?{urlencode(query)}"


def catalog_url(
    root: str, name: str, feature: str | None = None, value: str | None = None,
    flips: bool = False,
) -> str:  # fmt: skip
    """The admin API's failure catalog download (the JSONL `shadowtrial export` writes):
    divergent pairs, optionally in one slice, or the labelled negative flips."""
    query = {"flips": "true"} if flips else {"divergent": "true"}
    if feature is not None:
        query["slice"] = f"{feature}={value}"
    return f"{root}/v1/candidates/{quote(name, safe='')}/catalog?{urlencode(query)}"


# -- overview ---------------------------------------------------------------------------------


def verdict_of(report: Mapping[str, Any]) -> str:
    return str((report.get("gate") or {}).get("verdict") or "insufficient")


def overview_row(entry: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the overview table."""
    agreement = report.get("agreement") or {}
    latency = report.get("latency") or {}
    verdict = verdict_of(report)
    return {
        "name": entry["name"],
        "role": entry.get("role") or "candidate",
        "state": entry.get("state") or "active",
        "sample": entry.get("sample"),
        "target": entry.get("url") or entry.get("onnx") or "",
        "ends_at": entry.get("ends_at"),
        "pairs": report.get("pairs"),
        "sampled": report.get("sampled"),
        "shed": report.get("shed"),
        "agreement": agreement.get("rate"),
        "agreement_ci": interval(agreement.get("ci_low"), agreement.get("ci_high")),
        "flagged": sum(1 for s in report.get("slices") or [] if s.get("flagged")),
        "p99_ratio": latency.get("p99_ratio"),
        "verdict": verdict,
        "verdict_class": VERDICT_CLASS.get(verdict, "insufficient"),
    }


# -- candidate page --------------------------------------------------------------------------


def _slice_order(row: Mapping[str, Any]) -> tuple[int, int, float]:
    """Flagged first, then testable slices by how far below overall, then small ones."""
    delta = _number(row.get("delta_vs_overall"))
    return (
        0 if row.get("flagged") else 1,
        0 if row.get("p_adj") is not None else 1,
        delta if delta is not None else math.inf,
    )


def slice_rows(report: Mapping[str, Any], name: str, root: str = "") -> list[dict[str, Any]]:
    """Slices sorted by divergence, each with its interval mark and drill-down link."""
    rows = sorted(report.get("slices") or [], key=_slice_order)
    overall = (report.get("agreement") or {}).get("rate")
    lows = [_number(r.get("ci_low")) for r in rows] + [_number(overall)]
    axis_low = min((x for x in lows if x is not None), default=0.0)
    axis = (max(0.0, math.floor(axis_low * 20) / 20), 1.0)
    return [
        {
            **row,
            "interval": interval(row.get("ci_low"), row.get("ci_high")),
            "testable": row.get("p_adj") is not None,
            "link": drilldown_url(root, name, row["slice"], row["value"]),
            "export_link": catalog_url(root, name, row["slice"], row["value"]),
            "mark": Markup(
                charts.interval_mark(
                    row.get("agreement"),
                    row.get("ci_low"),
                    row.get("ci_high"),
                    overall,
                    axis,
                    bool(row.get("flagged")),
                )
            ),
        }
        for row in rows
    ]


def discovered_rows(report: Mapping[str, Any], name: str, root: str = "") -> list[dict[str, Any]]:
    """Automatically found slices, their conditions joined for reading."""
    out = []
    for row in report.get("discovered") or []:
        conditions = [(str(f), str(v)) for f, v in row.get("conditions") or []]
        single = conditions[0] if len(conditions) == 1 else None
        out.append(
            {
                **row,
                "conditions_text": " and ".join(f"{f} = {v}" for f, v in conditions),
                "link": drilldown_url(root, name, *single) if single else None,
            }
        )
    return out


def skew_view(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The skew slice (analysis.skew) in words: does the candidate's disagreement
    concentrate on requests unlike the training data? None without a training profile."""
    skew = report.get("skew")
    if not isinstance(skew, Mapping) or not skew.get("parts"):
        return None
    parts = [p for p in skew["parts"] if isinstance(p, Mapping)]
    on = [p for p in parts if p.get("value") in (skew.get("concentrated_on") or [])]
    if on:
        said = "; ".join(
            f"{p.get('value')}: agreement {pct(p.get('agreement'))} on {num(p.get('pairs'))} pairs"
            f" against {pct(p.get('complement_agreement'))} elsewhere ({peq(p.get('p_adj'))})"
            for p in on
        )
        text = f"Disagreement concentrates on requests unlike the training data ({said})."
    else:
        text = (
            "Disagreement does not concentrate on requests unlike the training data"
            f" ({num(skew.get('skewed_pairs'))} pairs had an unseen category or an"
            " out-of-range value)."
        )
    return {"concentrates": bool(skew.get("concentrates")), "text": text, "parts": parts}


def latency_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    latency = report.get("latency") or {}
    primary, candidate = latency.get("primary") or {}, latency.get("candidate") or {}
    rows = []
    for q in ("p50", "p95", "p99"):
        p, c = _number(primary.get(q)), _number(candidate.get(q))
        rows.append({"q": q, "primary": p, "candidate": c, "ratio": c / p if p and c else None})
    return rows


def canary_view(entry: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The canary panel: weight, plan step, and who answered (the report's `canary`
    section, every replica's counts); None when the candidate was never on canary."""
    weight = _number(entry.get("canary")) or 0.0
    steps = [w for w in (entry.get("canary_steps") or []) if _number(w) is not None]
    counts = report.get("canary") or None
    if not weight and not counts:
        return None
    step = next((i + 1 for i, w in enumerate(steps) if w == weight), None)
    fallbacks = (counts or {}).get("fallbacks") or {}
    return {
        "weight": weight,
        "steps": steps,
        "step": step,
        "step_s": _number(entry.get("canary_step_s")) or 0.0,
        "min_pairs": _number(entry.get("canary_min_pairs")) or 0,
        "since": entry.get("canary_since") or "",
        "counts": counts,
        "fallback_total": sum(v for v in fallbacks.values() if isinstance(v, int)),
        "fallbacks": sorted(fallbacks.items()),
    }


def candidate_view(
    entry: Mapping[str, Any], report: Mapping[str, Any], settings: Settings, root: str = ""
) -> dict[str, Any]:
    """Everything the candidate page shows, formatted where formatting is not trivial."""
    name = str(entry["name"])
    gate = report.get("gate") or {}
    verdict = verdict_of(report)
    return {
        "name": name,
        "entry": dict(entry),
        "role": entry.get("role") or "candidate",
        "state": entry.get("state") or "active",
        "target": entry.get("url") or entry.get("onnx") or "",
        "report": report,
        "verdict": verdict,
        "verdict_class": VERDICT_CLASS.get(verdict, "insufficient"),
        "rules": [
            {**r, "css": OUTCOME_CLASS.get(r.get("outcome", ""), "skip")}
            for r in gate.get("rules") or []
        ],
        "reasons": gate.get("reasons") or [],
        "anytime_note": gate.get("anytime_note"),
        "min_agreement": settings.gate.min_agreement,
        "slices": slice_rows(report, name, root),
        "discovered": discovered_rows(report, name, root),
        "latency_rows": latency_rows(report),
        "skew": skew_view(report),
        "divergent_link": drilldown_url(root, name),
        "export_link": catalog_url(root, name),
        "flips_link": catalog_url(root, name, flips=True),
        "promote_url": f"{root}/v1/candidates/{quote(name, safe='')}/promote",
        "canary_url": f"{root}/v1/candidates/{quote(name, safe='')}/canary",
        "canary": canary_view(entry, report),
        "reject_url": f"{root}/v1/candidates/{quote(name, safe='')}/reject",
        "by_class": [
            r for r in (report.get("flips") or {}).get("by_class") or [] if r.get("primary_count")
        ],
    }
