"""From the live watch document to what `/ui/watch` shows.

Pure functions of the document `analysis.watch_live` builds (the contract in
docs/architecture.md, "Watch"): per feature the reference against now and its chart,
the primary's outputs, labelled accuracy, the timeline, and the plain-language message
when there is nothing to compare (no reference yet, no watched request in the window).
The document is read as hostile: every field may be absent, of the wrong type or hold
text from traffic, so each is checked here and printed through the templates' escape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup

from analysis.ui import watch_charts

REFERENCES = ("profile", "pinned", "day", "week")
REFERENCE_TEXT = {
    "profile": "the training profile",
    "pinned": "the pinned window",
    "day": "the same hours yesterday",
    "week": "the same hours last week",
    "range": "a chosen time range",
}
MAX_FEATURES_SHOWN = 200  # a document over the cap still renders in bounded time
MAX_FIRST_SEEN = 5


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def _dict(x: object) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _list(x: object) -> list[Any]:
    return x if isinstance(x, list) else []


def _texts(x: object, limit: int) -> list[str]:
    return [str(v) for v in _list(x)[:limit]]


def watch_url(root: str, window: str, reference: str) -> str:
    """The page for another window or reference, the other parameter kept."""
    return f"{root}/ui/watch?{urlencode({'window': window, 'reference': reference})}"


def api_url(root: str, window: str, reference: str) -> str:
    """The same document as JSON from the admin API."""
    return f"{root}/v1/watch?{urlencode({'window': window, 'reference': reference})}"


def feature_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One feature's line and chart; numbers that are not numbers shown as missing."""
    name = str(row.get("feature", ""))
    kind = "categorical" if row.get("kind") == "categorical" else "numeric"
    missing, missing_ref = (
        _number(row.get("missing_rate")),
        _number(row.get("missing_rate_reference")),
    )
    return {
        "feature": name,
        "kind": kind,
        "drift": _number(row.get("drift")),
        "p_adj": _number(row.get("p_adj")),
        "flagged": row.get("flagged") is True,
        "unseen_rate": _number(row.get("unseen_rate")),
        "out_of_range_rate": _number(row.get("out_of_range_rate")),
        "missing_rate": missing,
        "missing_rate_reference": missing_ref,
        "missing_up": missing is not None
        and missing_ref is not None
        and missing > missing_ref + 0.05,
        "count": _number(row.get("count")),
        "first_seen": _texts(row.get("first_seen"), MAX_FIRST_SEEN),
        "chart": Markup(watch_charts.feature_chart(row.get("chart"), name)),
    }


def outputs_view(outputs: object) -> dict[str, Any]:
    """The primary's answers: class mix now against the reference, confidence, errors."""
    out = _dict(outputs)
    now, ref = _dict(out.get("class_mix")), _dict(out.get("class_mix_reference"))
    classes = sorted({str(k) for k in (*now, *ref)})[:50]
    conf, conf_ref = (
        _number(out.get("mean_confidence")),
        _number(out.get("mean_confidence_reference")),
    )
    return {
        "kind": str(out.get("kind") or "unknown"),
        "mix": [
            {
                "label": c,
                "now": _number(now.get(c)),
                "reference": _number(ref.get(c)),
                "change": _change(now.get(c), ref.get(c)),
            }
            for c in classes
        ],
        "mean_confidence": conf,
        "mean_confidence_reference": conf_ref,
        "confidence_change": _change(conf, conf_ref),
        "confidence_drift": _number(out.get("confidence_drift")),
        "confidence_p_adj": _number(out.get("confidence_p_adj")),
        "less_confident": out.get("confidence_flagged") is True
        and conf is not None
        and conf_ref is not None
        and conf < conf_ref,
        "confidence_flagged": out.get("confidence_flagged") is True,
        "errors": _number(out.get("errors")),
        "error_rate": _number(out.get("error_rate")),
        "latency_p50_ms": _number(out.get("latency_p50_ms")),
        "latency_p99_ms": _number(out.get("latency_p99_ms")),
    }


def _change(now: object, reference: object) -> float | None:
    a, b = _number(now), _number(reference)
    return None if a is None or b is None else a - b


def labels_view(labels: object) -> dict[str, Any]:
    """Accuracy on the labelled watched requests, each estimate with its interval."""
    lab = _dict(labels)
    recall = _dict(lab.get("per_class_recall"))
    return {
        "labelled": _number(lab.get("labelled")) or 0,
        "accuracy": _number(lab.get("accuracy")),
        "low": _number(lab.get("low")),
        "high": _number(lab.get("high")),
        "recall": [{"label": str(k), "recall": _number(v)} for k, v in sorted(recall.items())][:50],
        "over_time": [
            {
                "start": str(r.get("start", "")),
                "labelled": _number(r.get("labelled")),
                "accuracy": _number(r.get("accuracy")),
                "low": _number(r.get("low")),
                "high": _number(r.get("high")),
            }
            for r in _list(lab.get("over_time"))[-48:]
            if isinstance(r, Mapping)
        ],
    }


def reference_view(reference: object, asked: str) -> dict[str, Any]:
    """What the reference is, and why it cannot be used when it cannot."""
    ref = _dict(reference)
    kind = str(ref.get("kind") or asked)
    return {
        "kind": kind,
        "text": REFERENCE_TEXT.get(kind, kind),
        "from": ref.get("from") if isinstance(ref.get("from"), str) else None,
        "to": ref.get("to") if isinstance(ref.get("to"), str) else None,
        "requests": _number(ref.get("requests")),
        "available": ref.get("available") is not False,
        "problem": str(ref["problem"]) if ref.get("problem") else None,
    }


def message(doc: Mapping[str, Any], reference: Mapping[str, Any]) -> str | None:
    """Why the page has nothing to compare (None when it has)."""
    if not reference["available"]:
        why = reference["problem"] or "it holds no watched requests"
        return f"No reference to compare with: {reference['text']} is not available ({why})."
    if not _number(doc.get("requests")):
        return (
            "No watched requests in this window. The watch sees a request only when"
            " `[watch] sample` is above 0; try a longer window."
        )
    return None


def watch_view(doc: Mapping[str, Any], root: str, window: str, reference: str) -> dict[str, Any]:
    """Everything `/ui/watch` shows."""
    ref = reference_view(doc.get("reference"), reference)
    rows = [
        feature_row(r)
        for r in _list(doc.get("features"))[:MAX_FEATURES_SHOWN]
        if isinstance(r, Mapping)
    ]
    account = _dict(doc.get("accounting"))
    win = _dict(doc.get("window"))
    return {
        "reference": ref,
        "message": message(doc, ref),
        "window_from": str(win.get("from") or ""),
        "window_to": str(win.get("to") or ""),
        "requests": _number(doc.get("requests")),
        "rows": _number(doc.get("rows")),
        "unreadable": _number(doc.get("unreadable")),
        "features_over_cap": _number(doc.get("features_over_cap")),
        "flagged": [r for r in rows if r["flagged"]],
        "features": rows,
        "outputs": outputs_view(doc.get("outputs")),
        "labels": labels_view(doc.get("labels")),
        "timeline": Markup(watch_charts.timeline_chart(doc.get("timeline"))),
        "accounting": {
            k: _number(account.get(k)) for k in ("captured", "folded", "unreadable", "dropped")
        },
        "references": [
            {
                "kind": k,
                "text": REFERENCE_TEXT[k],
                "url": watch_url(root, window, k),
                "current": k == reference,
            }
            for k in REFERENCES
        ],
        "api_url": api_url(root, window, reference),
    }
