"""The report's `text` section: what agreement by meaning hides, counted per row.

Counted by the worker for every row where both answers are text (integer counters in the
bucket hash, so any number of workers add up exactly):

    xn                  text rows compared
    xeq                 equal after collapsing whitespace (the exact agreement)
    xcut                rows with an answer cut to outputs.text_max_chars before embedding
    xs:i                similarity histogram, 100 bins on [0, 1] (negatives in bin 0),
                        for rows judged by meaning
    xpc xcc             characters of the primary's / the candidate's answers
    xpe xce             empty answers per side
    xpr xcr             refusals per side ("I can't ...", "I'm sorry, but ...")
    xjp xjc             the primary's answers that are JSON, and of those the candidate's
    xtn xteq            rows where either answer called a tool / function (OpenAI
                        `tool_calls`, legacy `function_call`), and of those the rows
                        whose called names match (as multisets: parallel calls in any order)
    xh:<kind>           hostile answers (either side), by kind: non_utf8 (unparseable),
                        empty_choices, interrupted_stream (analysis.adapters.openai)
    xthn xths xthc      rows judged by meaning, the sum of the thresholds that judged them
                        (micro-units), and those whose threshold was the noise floor's
                        (outputs.text_calibrate)
    xln xls             rows with both mean token log-probabilities; the sum of their
                        shift (candidate - primary, micro-units)
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
import orjson

BINS = 100
MICRO = 1_000_000
_XS = [f"xs:{i}" for i in range(BINS)]
HOSTILE = ("non_utf8", "empty_choices", "interrupted_stream")  # the xh:<kind> counters
_REFUSAL = re.compile(
    r"^\W*(?:i(?:'m| am) sorry|sorry,|i can(?:'|no)t|i cannot|i(?:'m| am) (?:not able|unable)"
    r"|as an ai)",
    re.IGNORECASE,
)


def _refusal(text: str) -> bool:
    return bool(_REFUSAL.match(text[:200]))


def _json(text: str) -> bool:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return False
    try:
        orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return False
    return True


def count_text(ints: defaultdict[str, int], row: Any) -> None:
    """Count one row whose two answers are both text."""
    p, c = row.primary.text, row.candidate.text
    ints["xn"] += 1
    if " ".join(p.split()) == " ".join(c.split()):
        ints["xeq"] += 1
    sim = getattr(row, "similarity", None)
    if sim is not None:
        ints[_XS[min(BINS - 1, max(0, int(sim * BINS)))]] += 1
    ints["xcut"] += bool(getattr(row, "text_cut", False))
    ints["xpc"] += len(p)
    ints["xcc"] += len(c)
    ints["xpe"] += not p.strip()
    ints["xce"] += not c.strip()
    ints["xpr"] += _refusal(p)
    ints["xcr"] += _refusal(c)
    if _json(p):
        ints["xjp"] += 1
        ints["xjc"] += _json(c)
    _count_tools(ints, row.primary.tools, row.candidate.tools)
    threshold = getattr(row, "threshold", None)
    if threshold is not None:
        ints["xthn"] += 1
        ints["xths"] += round(threshold * MICRO)
        ints["xthc"] += bool(getattr(row, "calibrated", False))
    lp, lc = row.primary.mean_logprob, row.candidate.mean_logprob
    if lp is not None and lc is not None:
        ints["xln"] += 1
        ints["xls"] += round((lc - lp) * MICRO)


def _count_tools(ints: defaultdict[str, int], p: Any, c: Any) -> None:
    if p or c:
        ints["xtn"] += 1
        ints["xteq"] += sorted(p or ()) == sorted(c or ())


def _threshold(get: Any) -> dict[str, Any] | None:
    """Which threshold judged the rows by meaning: `noise_floor` (all calibrated),
    `configured` (none) or `mixed`, and the mean value used."""
    n, calibrated = get("xthn"), get("xthc")
    if not n:
        return None
    source = "noise_floor" if calibrated == n else "configured" if not calibrated else "mixed"
    return {"used": round(get("xths") / MICRO / n, 4), "source": source,
            "calibrated_rate": round(calibrated / n, 4)}  # fmt: skip


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _similarity(hist: np.ndarray) -> dict[str, Any] | None:
    n = int(hist.sum())
    if not n:
        return None
    cdf = np.cumsum(hist) / n
    pct = {
        f"p{q}": round(float(np.searchsorted(cdf, q / 100) + 1) / BINS, 2)
        for q in (5, 25, 50, 75, 95)
    }
    return {"rows": n, **pct, "histogram": [int(x) for x in hist]}


def _hostile(get: Any) -> dict[str, int]:
    """Answers counted as hostile, per kind; `giant` = rows cut before embedding."""
    return {**{kind: get(f"xh:{kind}") for kind in HOSTILE}, "giant": get("xcut")}


def text_section(get: Any, hist: Any) -> dict[str, Any] | None:
    """The `text` section from a summary's counters (None when no text was compared and
    no answer was hostile)."""
    n = get("xn")
    hostile = _hostile(get)
    if not n and not any(hostile.values()):
        return None
    n_lp = get("xln")
    return {
        "rows": n,
        "exact_rate": _rate(get("xeq"), n),
        "similarity": _similarity(hist("xs", BINS)),
        "threshold": _threshold(get),
        "length_ratio": _rate(get("xcc"), get("xpc")),
        "cut_rate": _rate(get("xcut"), n),
        "hostile": hostile,
        "empty_rate": {"primary": _rate(get("xpe"), n), "candidate": _rate(get("xce"), n)},
        "refusal_rate": {"primary": _rate(get("xpr"), n), "candidate": _rate(get("xcr"), n)},
        "json_valid_rate": _rate(get("xjc"), get("xjp")),
        "tool_calls": {"rows": get("xtn"), "name_agreement": _rate(get("xteq"), get("xtn"))},
        "mean_logprob_shift": round(get("xls") / MICRO / n_lp, 4) if n_lp else None,
    }


def noise_similarity(name: str, get: Any, hist: Any) -> dict[str, Any] | None:
    """The secondary replica's similarity to the primary: the noise floor of meaning.

    A replica that samples (temperature > 0) words the same meaning differently; its 5th
    percentile is then a calibrated threshold (`suggested_threshold`). A replica whose
    answers are nearly all identical (deterministic decoding) calibrates nothing: None,
    and the configured `outputs.text_threshold` stands. Applied by the worker only with
    `outputs.text_calibrate` (analysis.text_calibration).
    """
    n = get("xn")
    sim = _similarity(hist("xs", BINS))
    if not n or sim is None:
        return None
    exact = get("xeq") / n
    suggested = round(sim["p5"] - 1 / BINS, 2) if exact < 0.95 else None
    return {"secondary": name, "rows": n, "exact_rate": round(exact, 4), "p5": sim["p5"],
            "suggested_threshold": suggested}  # fmt: skip


EXAMPLE_CHARS = 500  # each text of an example, as the drill-down keeps it (cut further)


def text_examples(samples: list[dict[str, Any]], limit: int = 5) -> list[dict[str, Any]]:
    """Recent divergent pairs judged by meaning: both first-row texts and their similarity
    (the page shows them side by side). Samples come from Redis: read defensively."""
    out = []
    for sample in samples:
        sims = sample.get("similarity")
        p_texts = (sample.get("primary") or {}).get("text")
        c_texts = (sample.get("candidate") or {}).get("text")
        if not (isinstance(sims, list) and sims and p_texts and c_texts):
            continue
        out.append(
            {
                "request_id": str(sample.get("request_id", "")),
                "similarity": sims[0],
                "primary": str(p_texts[0] or "")[:EXAMPLE_CHARS],
                "candidate": str(c_texts[0] or "")[:EXAMPLE_CHARS],
            }
        )
        if len(out) >= limit:
            break
    return out


__all__ = ["count_text", "noise_similarity", "text_examples", "text_section"]
