"""Drill-down samples: the recent and the divergent pairs behind the numbers.

The worker keeps capped lists per candidate (newest first, SAMPLES_KEPT each, pushed in
the same script that applies and acknowledges a batch, so a sample is never duplicated):
`recent` (the last pairs of every batch), `divergent` (pairs with at least one
disagreeing row or a candidate failure), `unparseable` (bodies no adapter understood)
and `contract` (one example per contract-difference kind and batch). Each sample is a
JSON object with enough to reproduce the request (method, path, query, captured headers
already redacted by the proxy, the body cut at REQUEST_CHARS) and to see both answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import redis

from common.keys import SAMPLES_KEPT, Keys
from common.redis_client import store_errors

if TYPE_CHECKING:
    from analysis.adapters.base import Prediction
    from analysis.summaries import PairEvidence
    from common.records import PairRecord

REQUEST_CHARS = 4096  # request body kept per sample
ANSWER_CHARS = 1024  # each answer body kept per sample
ROWS_SHOWN = 20  # per-row labels and slice values kept per sample


def _text(body: bytes, limit: int) -> tuple[str, bool]:
    """A body as text (invalid UTF-8 replaced), cut at `limit` characters."""
    text = body[: limit * 4].decode("utf-8", errors="replace")
    return text[:limit], len(text) > limit or len(body) > limit * 4


def _side(preds: list[Prediction]) -> dict[str, Any]:
    """Per-row summary of one model's answer: labels, confidences, scores, text."""
    shown = preds[:ROWS_SHOWN]
    return {
        "labels": [p.label for p in shown],
        "confidence": [p.confidence for p in shown],
        "scores": [p.score for p in shown] if any(p.score is not None for p in shown) else None,
        "text": [p.text[:200] if p.text else p.text for p in shown]
        if any(p.text is not None for p in shown)
        else None,
    }


def _similarity(ev: PairEvidence) -> list[float | None] | None:
    """Per-row similarity of the two texts when they were compared by meaning."""
    shown = [getattr(r, "similarity", None) for r in ev.rows[:ROWS_SHOWN]]
    return shown if any(s is not None for s in shown) else None


def pair_sample(rec: PairRecord, ev: PairEvidence, slices: list[dict[str, str]]) -> dict[str, Any]:
    """One pair as the drill-down endpoint shows it (JSON-safe)."""
    request, cut = _text(rec.request_body, REQUEST_CHARS)
    agreement = ev.row_agreement()
    primary_preds = list(ev.primary_rows)
    candidate_preds = [r.candidate for r in ev.rows] if not ev.candidate_error else []
    return {
        "request_id": rec.request_id,
        "ts_ms": rec.ts_ms,
        "method": rec.method,
        "path": rec.path,
        "query": rec.query,
        "headers": rec.headers,
        "request_body": request,
        "request_truncated": cut,
        "rows": len(agreement),
        "divergent_rows": agreement.count(False),
        "agree": bool(agreement) and all(agreement),
        "similarity": _similarity(ev),
        "slices": slices[:ROWS_SHOWN],
        "primary": {
            "status": rec.primary_status,
            "ms": rec.primary_ms,
            "failure": ev.primary_failure,
            "body": _text(rec.primary_body, ANSWER_CHARS)[0],
            **_side(primary_preds),
        },
        "candidate": {
            "outcome": rec.candidate_outcome,
            "status": rec.candidate_status,
            "ms": ev.candidate_ms,
            "error": ev.candidate_error,
            "detail": rec.candidate_error,
            "body": _text(rec.candidate_body, ANSWER_CHARS)[0],
            **_side(candidate_preds),
        },
    }


def unparseable_sample(rec: PairRecord, side: str, error: str) -> dict[str, Any]:
    """A body no adapter understood, with the reason."""
    body = rec.primary_body if side == "primary" else rec.candidate_body
    return {
        "request_id": rec.request_id,
        "ts_ms": rec.ts_ms,
        "side": side,
        "error": error[:500],
        "body": _text(body, ANSWER_CHARS)[0],
        "content_type": rec.primary_content_type
        if side == "primary"
        else rec.candidate_content_type,
    }


def contract_sample(rec: PairRecord, kind: str, detail: str) -> dict[str, Any]:
    """An example of one kind of contract difference."""
    return {"request_id": rec.request_id, "ts_ms": rec.ts_ms, "kind": kind, "detail": detail[:500]}


def encode(sample: dict[str, Any]) -> bytes:
    """Samples are stored as JSON (non-string keys and odd floats tolerated)."""
    return orjson.dumps(sample, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def read_samples(
    client: redis.Redis, keys: Keys, candidate: str, kind: str, limit: int = SAMPLES_KEPT
) -> list[dict[str, Any]]:
    """The newest samples of one kind, newest first."""
    with store_errors(f"cannot read {kind} samples of {candidate}"):
        raw = client.lrange(keys.samples(candidate, kind), 0, max(limit, 1) - 1)
    return [orjson.loads(item) for item in raw]


def _matches(sample: dict[str, Any], feature: str, value: str) -> bool:
    return any(row.get(feature) == value for row in sample.get("slices", []))


def recent_pairs(
    client: redis.Redis,
    keys: Keys,
    candidate: str,
    divergent: bool = False,
    slice: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Recent pairs (or only divergent ones), optionally in one slice `feature=value`.

    Slice values are the ones the report shows (beyond the cap: `other`), including the
    output-derived `primary:class` and `primary:confidence`.
    """
    pairs = read_samples(client, keys, candidate, "divergent" if divergent else "recent")
    if slice:
        feature, _, value = slice.partition("=")
        pairs = [p for p in pairs if _matches(p, feature, value)]
    return pairs[: max(limit, 0)]
