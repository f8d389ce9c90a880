"""The report: a window's buckets merged, every statistic computed, the gate applied.

`build_report` reads the window's bucket hashes with one pipelined HGETALL each, sums them
(analysis.summaries), and turns the counters into the JSON of the report contract
(docs/architecture.md).
Extra keys beside the contract ones: `rows` (compared rows; `pairs` counts pair records),
`dropped` and `pending` (the accounting of sampled mirrors, see `_accounting`),
`records` {trimmed, bad, deferred}, `contract`, `unparseable`, `confidence_deltas`,
`dangerous_flips`, `timeline` (per bucket), and more detail inside each section. Every
value is JSON-safe: NaN and infinities become null.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import redis
from scipy import stats as scipy_stats

from analysis import anytime_slices, estimate, latency, recall, sequential, stats, strata
from analysis.apply import ROLLUP_SECONDS
from analysis.dispatch_section import add_queue_state, dispatch_drops, dispatch_section
from analysis.drilldown import read_samples, recent_pairs
from analysis.gate import evaluate_gate
from analysis.skew import skew_section
from analysis.summaries import (
    CLASS_FEATURE,
    CONF_BINS,
    CONF_EDGES,
    CONFIDENCE_FEATURE,
    DANGEROUS_DECILE,
    DIFF_EDGES,
    LATENCY_EDGES,
    MICRO,
    Summary,
    merge_raw,
)
from analysis.text_summary import noise_similarity, text_examples, text_section
from common.keys import (
    FIELD_CANARY_ELIGIBLE,
    FIELD_CANARY_PREFIX,
    FIELD_CANCELLED,
    FIELD_CAPTURE_DROPPED,
    FIELD_PRIMARY_FAILED,
    FIELD_SAMPLED,
    FIELD_SHED,
    FIELD_TOO_LARGE,
    Keys,
)
from common.redis_client import store_errors
from common.settings import Settings

__all__ = ["build_report", "load_window", "recent_pairs"]

PRIMARY_FAILURES = ("primary", "primary_unparseable")
MIN_SUPPORT = 32  # SliceLine's minimum support: smaller slices are shown, never flagged
DISCOVERED_K = 4
KS_EXACT_MAX_N = 10_000


def _bucket_range(window_s: float, now: float, bucket_seconds: int) -> tuple[int, float]:
    """First bucket start overlapping the window, and the window's end."""
    start = now - window_s
    return int(start // bucket_seconds * bucket_seconds), now


def _window_buckets(
    client: redis.Redis, keys: Keys, candidate: str, first: int, last: float
) -> list[tuple[int, int, str]]:
    """(start, seconds, key) of every bucket and hourly rollup overlapping [first, last]."""
    lowest = first - ROLLUP_SECONDS + 1
    members = client.zrangebyscore(keys.bucket_index(candidate), lowest, last)
    found = []
    for member in members:
        text = member.decode()
        if text.startswith("h"):
            start = int(text[1:])
            found.append((start, ROLLUP_SECONDS, keys.rollup(candidate, start)))
        elif int(text) >= first:
            found.append((int(text), 0, keys.bucket(candidate, int(text))))
    return found


def load_window(
    client: redis.Redis, keys: Keys, candidate: str, first: int, last: float
) -> tuple[Summary, list[dict[str, Any]]]:
    """Merge the buckets and hourly rollups overlapping [first, last]; also per-bucket totals.

    A rollup counts whole: a window starting inside an old hour includes all of that hour.
    If buckets vanish between listing and reading them (rolled up meanwhile), read again.
    """
    with store_errors(f"cannot read the summaries of {candidate}"):
        for _ in range(3):
            found = _window_buckets(client, keys, candidate, first, last)
            pipe = client.pipeline(transaction=False)
            for _, _, key in found:
                pipe.hgetall(key)
            raws = pipe.execute() if found else []
            if all(raws):
                break
    timeline = [
        _timeline_point(start, seconds, raw)
        for (start, seconds, _), raw in zip(found, raws, strict=True)
        if raw
    ]
    timeline.sort(key=lambda p: p["t"])
    summary = Summary(merge_raw(raws))
    bins = len(LATENCY_EDGES) - 1
    starts = [(start, raw) for (start, _, _), raw in zip(found, raws, strict=True)]
    summary.latency_buckets = latency.bucket_histograms(starts, bins)
    return summary, timeline


def _timeline_point(start: int, seconds: int, raw: dict[bytes, bytes]) -> dict[str, Any]:
    rows, agree = int(raw.get(b"rows", 0)), int(raw.get(b"agree", 0))
    return {
        "t": start,
        "hour": seconds > 0,  # an hourly rollup rather than one bucket
        "pairs": int(raw.get(b"records", 0)),
        "rows": rows,
        "agreement": agree / rows if rows else None,
    }


def build_report(
    client: redis.Redis,
    keys: Keys,
    settings: Settings,
    candidate: str,
    window_s: float,
    now: float | None = None,
) -> dict[str, Any]:
    """The report for one candidate over the last `window_s` seconds (the report contract:
    docs/architecture.md)."""
    now = time.time() if now is None else now
    first, last = _bucket_range(window_s, now, settings.worker.bucket_seconds)
    summary, timeline = load_window(client, keys, candidate, first, last)
    noise = _noise_summary(client, keys, settings, candidate, summary, first, last)
    report: dict[str, Any] = {
        "candidate": candidate,
        "window": _window(first, last, window_s, settings.worker.bucket_seconds, len(timeline)),
        **analyse(summary, settings, noise, _latency_reference(candidate, noise)),
        "contract": _contract(client, keys, candidate, summary),
        "unparseable": _unparseable(client, keys, candidate, summary),
        "timeline": timeline,
    }
    if report["text"]:
        divergent = read_samples(client, keys, candidate, "divergent", 50)
        report["text"]["examples"] = text_examples(divergent)
        if noise is not None:
            floor = noise[1]
            report["text"]["noise_floor"] = noise_similarity(noise[0], floor.get, floor.hist)
    _stratify(client, keys, settings, candidate, summary, report)
    add_queue_state(client, keys, candidate, report["dispatch"])
    report["gate"] = evaluate_gate(report, settings.gate)
    return json_safe(report)


def _stratify(
    client: redis.Redis,
    keys: Keys,
    settings: Settings,
    candidate: str,
    summary: Summary,
    report: dict[str, Any],
) -> None:
    """`stratified` and the slice rows' `effective_pairs` (analysis.strata) and
    `estimated_delta` (analysis.estimate)."""
    rate = _sample_rate(client, keys, settings, candidate) if settings.strata else 1.0
    report["stratified"] = strata.stratified(summary, settings, rate)
    strata.slice_effective_pairs(summary, settings, rate, report["slices"])
    estimate.slice_deltas(summary, report["slices"])


def _sample_rate(client: redis.Redis, keys: Keys, settings: Settings, candidate: str) -> float:
    """The candidate's sample rate: its config entry's, else its registry entry's, else 1."""
    configured = settings.candidate(candidate)
    if configured is not None:
        return configured.sample
    with store_errors(f"cannot read the registry entry of {candidate}"):
        raw = client.hget(keys.registry(), candidate)
    sample = _json_object(raw).get("sample", 1.0)
    return float(sample) if isinstance(sample, int | float) and 0 < sample <= 1 else 1.0


def _json_object(raw: Any) -> dict[str, Any]:
    """A registry entry as a dict ({} when absent or not a JSON object)."""
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def analyse(
    summary: Summary,
    settings: Settings,
    noise: tuple[str, Summary] | None = None,
    latency_reference: tuple[str, Summary] | None = None,
) -> dict[str, Any]:
    """Every statistic of a merged window, with no store involved: the sections the gate
    reads. `noise` is a secondary replica's (name, window); `latency_reference` the one
    whose latency the candidate's is judged against (None: the primary's). The evidence
    bench runs this very function on the worker's counters, so what it measures is what
    the report does.
    """
    labels, matrix = summary.flip_matrix()
    slices = _slices(summary, settings)
    return {
        "pairs": summary.get("records"),
        "rows": summary.get("rows"),
        **_accounting(summary),
        "canary": _canary(summary),
        "dispatch": dispatch_section(summary),
        "records": _records(summary),
        "errors": _errors(summary),
        "agreement": _agreement(summary, matrix),
        "flips": _flips(summary, labels, matrix),
        "dangerous_flips": _dangerous(summary),
        "confidence": _confidence(summary),
        "confidence_deltas": _deltas(summary),
        "regression": _regression(summary),
        "latency": _latency(summary, latency_reference),
        "slices": slices,
        "skew": skew_section(slices),
        "discovered": _discovered(summary),
        "noise_floor": _noise_floor(summary, noise),
        "labels": _labels(summary),
        "text": text_section(summary.get, summary.hist),
        "estimated": estimate.estimated(summary),
    }


# -- sections ---------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _window(
    first: int, last: float, window_s: float, bucket_s: int, buckets: int
) -> dict[str, Any]:
    return {
        "start": _iso(first),
        "end": _iso(last),
        "start_ts": first,
        "end_ts": last,
        "seconds": window_s,
        "bucket_seconds": bucket_s,
        "buckets": buckets,
    }


def _accounting(s: Summary) -> dict[str, Any]:
    """sampled, shed, dropped {...} and pending, from the counts proxies add to the buckets:

        sampled = pairs + shed + dropped.{too_large, primary_failed, cancelled, capture}
                  + records.trimmed + records.bad + pending

    (dropped also has dispatch_{overflow, expired, trimmed, bad} when the window has
    dispatched requests; pending then includes the requests waiting for a dispatcher.)

    where pending is what is still on its way (mirrors in flight, records in a proxy's
    spool or in the stream not yet read). Pairs written without a proxy (replay) carry no
    counts: then every pair was sampled, and shed and dropped are unknown (null).
    """
    pairs = s.get("records")
    if FIELD_SAMPLED not in s.counts:
        return {"sampled": pairs, "shed": None, "dropped": None, "pending": None}
    sampled, shed = s.get(FIELD_SAMPLED), s.get(FIELD_SHED)
    dropped = {
        "too_large": s.get(FIELD_TOO_LARGE),
        "primary_failed": s.get(FIELD_PRIMARY_FAILED),
        "cancelled": s.get(FIELD_CANCELLED),
        "capture": s.get(FIELD_CAPTURE_DROPPED),
        **dispatch_drops(s),  # run = "dispatcher" candidates only (analysis.dispatch_section)
    }
    ended = pairs + shed + sum(dropped.values()) + s.get("trimmed") + s.get("bad")
    return {"sampled": sampled, "shed": shed, "dropped": dropped, "pending": sampled - ended}


def _canary(s: Summary) -> dict[str, Any] | None:
    """Who answered the requests the candidate's canary could take, summed over replicas
    (proxy.canary): served by it, fallbacks by reason, and the rest (outside its share,
    served by the primary) = eligible - served - fallbacks. None: never on canary here."""
    if FIELD_CANARY_ELIGIBLE not in s.counts:
        return None
    fallbacks = {
        name.removeprefix(FIELD_CANARY_PREFIX + "fallback_"): int(value)
        for name, value in sorted(s.counts.items())
        if name.startswith(FIELD_CANARY_PREFIX + "fallback_")
    }
    eligible, served = s.get(FIELD_CANARY_ELIGIBLE), s.get(FIELD_CANARY_PREFIX + "served")
    return {
        "eligible": eligible,
        "served": served,
        "fallbacks": fallbacks,
        "primary": eligible - served - sum(fallbacks.values()),
    }


def _records(s: Summary) -> dict[str, int]:
    return {
        "trimmed": s.get("trimmed"),
        "bad": s.get("bad"),
        "deferred": s.get("deferred"),
        "malformed_fields": s.malformed,  # summary fields skipped (see analysis.summaries)
    }


def _rate(x: float, n: float) -> float | None:
    return x / n if n else None


def _errors(s: Summary) -> dict[str, Any]:
    kinds = {k: int(v) for k, v in s.group("err").items()}
    primary = sum(kinds.pop(k, 0) for k in PRIMARY_FAILURES)
    candidate = sum(kinds.values())
    pairs = s.get("records")
    # Each rate's own anytime-valid bounds at half the level: together a 95% statement
    # on the increase, whenever it is read. Errors are per request: no design effect.
    half = sequential.ALPHA / 2
    return {
        "primary": primary,
        "candidate": candidate,
        "timeouts": kinds.get("timeout", 0),
        "by_kind": dict(sorted(kinds.items())),
        "primary_rate": _rate(primary, pairs),
        "candidate_rate": _rate(candidate, pairs),
        "primary_cs": list(sequential.beta_binomial_cs(primary, pairs, half)),
        "candidate_cs": list(sequential.beta_binomial_cs(candidate, pairs, half)),
    }


def _agreement(s: Summary, matrix: np.ndarray) -> dict[str, Any]:
    """Agreement with a fixed-sample interval and an anytime-valid one, both on effective
    rows (rows / design effect): rows of one request are not independent evidence."""
    rows, agree = s.get("rows"), s.get("agree")
    moments = s.request_moments()
    deff = moments.design_effect()
    ci_low, ci_high = stats.wilson_interval(agree / deff, rows / deff)
    cs_low, cs_high = sequential.beta_binomial_cs(agree / deff, rows / deff)
    return {
        "rate": _rate(agree, rows),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "cs_low": cs_low,
        "cs_high": cs_high,
        "kappa": stats.cohens_kappa(matrix) if matrix.size else None,
        "n": rows,
        "disagree": rows - agree,
        "requests": moments.requests,
        "design_effect": deff,
    }


def _flips(s: Summary, labels: list[str], matrix: np.ndarray) -> dict[str, Any]:
    flips = s.hist("fd", 10)
    rows = s.hist("td", 10)
    return {
        "matrix": matrix.tolist(),
        "labels": labels,
        "by_class": stats.per_class_flip_rates(matrix, labels) if labels else [],
        "class_mix_p": stats.class_mix_shift_p(matrix) if labels else None,
        "by_confidence_decile": [
            {
                "decile": f"{i / 10:.1f}-{(i + 1) / 10:.1f}",
                "rows": int(rows[i]),
                "flips": int(flips[i]),
            }
            for i in range(10)
        ],
    }


def _dangerous(s: Summary) -> dict[str, Any]:
    """Flips where the primary was confident (>= 0.9): the kind users notice."""
    count, of = s.get(f"fd:{DANGEROUS_DECILE}"), s.get(f"td:{DANGEROUS_DECILE}")
    low, high = stats.wilson_interval(count, of)
    return {"count": count, "of": of, "rate": _rate(count, of), "ci_low": low, "ci_high": high}


def _side(s: Summary, conf: str, margin: str, n: str, total: str) -> dict[str, Any]:
    hist = s.hist(conf, CONF_BINS)
    return {
        "mean": _rate(s.get(total) / MICRO, s.get(n)),
        "hist": hist.tolist(),
        "margin_hist": s.hist(margin, CONF_BINS).tolist(),
        "n": s.get(n),
    }


def _near_boundary(s: Summary) -> dict[str, Any]:
    """Share of paired rows with margin < 0.1 per side; McNemar on the discordant cells."""
    both, p_only, c_only = s.get("nb:11"), s.get("nb:10"), s.get("nb:01")
    n = both + p_only + c_only + s.get("nb:00")
    primary, candidate = both + p_only, both + c_only
    return {
        "primary": _rate(primary, n),
        "candidate": _rate(candidate, n),
        "primary_ci": list(stats.wilson_interval(primary, n)),
        "candidate_ci": list(stats.wilson_interval(candidate, n)),
        "n": n,
        "p": stats.mcnemar_exact(p_only, c_only) if n else None,
    }


def _confidence(s: Summary) -> dict[str, Any]:
    primary = _side(s, "cp", "mp", "cpn", "cps")
    candidate = _side(s, "cc", "mc", "ccn", "ccs")
    hp, hc = s.hist("cp", CONF_BINS), s.hist("cc", CONF_BINS)
    dn = s.get("dn")
    return {
        "primary": primary,
        "candidate": candidate,
        "shift": _rate(s.get("ds") / MICRO, dn),
        "ks_p": _ks_p(hp, hc),
        "near_boundary": _near_boundary(s),
        "effect_sizes": {
            "ks": stats.ks_distance_hist(hp, hc),
            "wasserstein": stats.wasserstein_hist(hp, hc, CONF_EDGES),
            "js": stats.js_distance_hist(hp, hc),
            "psi": stats.psi_hist(hp, hc),
        },
    }


def _ks_p(a: np.ndarray, b: np.ndarray) -> float:
    """stats.ks_p_hist, with the limiting Kolmogorov distribution once the effective n is
    large (scipy's exact kstwo takes about a second at n = 500,000; the limit is then exact
    to well under 1e-3)."""
    n, m = float(a.sum()), float(b.sum())
    if n and m and n * m / (n + m) > KS_EXACT_MAX_N:
        return float(
            scipy_stats.kstwobign.sf(stats.ks_distance_hist(a, b) * math.sqrt(n * m / (n + m)))
        )
    return stats.ks_p_hist(a, b)


def _deltas(s: Summary) -> dict[str, Any]:
    """Paired conf_c - conf_p: exact integer moments -> Welford state -> interval, sign test."""
    n, total, squares = s.get("dn"), s.get("ds"), s.get("dss")
    mean = total / MICRO / n if n else None
    m2 = (squares - total * total / n) / MICRO**2 if n else 0.0
    low, high = stats.mean_interval(n, mean or 0.0, m2)
    pos, neg = s.get("dpos"), s.get("dneg")
    return {
        "n": n,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "sd": math.sqrt(max(m2, 0.0) / (n - 1)) if n > 1 else None,
        "positive": pos,
        "negative": neg,
        "sign_p": stats.sign_test(pos, neg),
    }


def _regression(s: Summary) -> dict[str, Any]:
    n = s.get("rn")
    if not n:
        keys = ("mean_abs_diff", "p95_abs_diff", "mean_diff", "rmse", "sd", "loa_low", "loa_high")
        return {**dict.fromkeys(keys), "n": 0, "beyond_tolerance": None}
    mean = s.getf("rs") / n
    var = max(s.getf("rss") / n - mean * mean, 0.0) * n / max(n - 1, 1)
    sd = math.sqrt(var)
    return {
        "mean_abs_diff": s.getf("ras") / n,
        "p95_abs_diff": stats.hist_quantile(s.hist("rh", len(DIFF_EDGES) - 1), DIFF_EDGES, 0.95),
        "mean_diff": mean,
        "rmse": math.sqrt(max(s.getf("rss") / n, 0.0)),
        "sd": sd,
        "loa_low": mean - 1.96 * sd,
        "loa_high": mean + 1.96 * sd,
        "n": n,
        "beyond_tolerance": s.get("rbeyond") / n,
    }


def _latency(s: Summary, secondary: tuple[str, Summary] | None = None) -> dict[str, Any]:
    """Quantiles of both sides, and the p99 bounds the latency rule judges (`sequential`):
    the candidate against a secondary replica when there is one (mirrored and timed as
    the candidate is), else against the primary."""
    bins = len(LATENCY_EDGES) - 1
    hp, hc = s.hist("lp", bins), s.hist("lc", bins)
    primary = {**stats.latency_quantiles(hp, LATENCY_EDGES), "n": int(hp.sum())}
    candidate = {**stats.latency_quantiles(hc, LATENCY_EDGES), "n": int(hc.sum())}
    p99p, p99c = primary.get("p99"), candidate.get("p99")
    if secondary is None:
        reference = ("primary", hp, s.latency_buckets.get("lp", {}))
    else:
        name, other = secondary
        reference = (name, other.hist("lc", bins), other.latency_buckets.get("lc", {}))
    sequential = latency.compare(
        (hc, s.latency_buckets.get("lc", {})), reference[1:], LATENCY_EDGES, reference[0]
    )
    return {
        "primary": primary,
        "candidate": candidate,
        "p99_ratio": p99c / p99p if p99p and p99c is not None else None,
        # A worker-run candidate's latency is its share of a batch: not comparable.
        "comparable": s.get("deferred") == 0,
        "sequential": sequential,
    }


def _latency_reference(
    candidate: str, noise: tuple[str, Summary] | None
) -> tuple[str, Summary] | None:
    """The secondary replica whose latency is the candidate's noise floor (None: none, or
    the candidate is itself a secondary, judged against the primary)."""
    if noise is None or noise[0] == candidate or not noise[1].get("records"):
        return None
    return noise


DERIVED_FEATURES = frozenset({CLASS_FEATURE, CONFIDENCE_FEATURE})

_SLICE_KEYS = (
    "slice", "value", "pairs", "disagree", "agreement", "complement_agreement",
    "delta_vs_overall", "p", "p_adj", "e_value", "flagged", "phi", "risk_ratio", "ci_low",
    "ci_high",
)  # fmt: skip


def _is_derived(feature: str) -> bool:
    """Output-derived slices (the primary's class or confidence decile) describe where the
    models disagree, not a population of requests: disagreement always concentrates where
    the primary was unsure, so they are shown but never flagged, gated or discovered."""
    return feature in DERIVED_FEATURES


def _slices(s: Summary, settings: Settings) -> list[dict[str, Any]]:
    rows = s.slices()
    if not rows:
        return []
    total, agree = s.get("rows"), s.get("agree")
    deff = s.request_moments().design_effect()
    out: list[dict[str, Any]] = []
    for derived in (False, True):
        family = [r for r in rows if _is_derived(r["slice"]) == derived]
        tested = anytime_slices.judge_slices(
            family,
            total,
            total - agree,
            design_effect=deff,
            min_support=MIN_SUPPORT,
            min_drop=settings.gate.max_slice_drop,
        )
        for r in tested:
            row = {k: r.get(k) for k in _SLICE_KEYS}
            row["derived"] = derived
            row["flagged"] = bool(row["flagged"]) and not derived
            out.append(row)
    out.sort(key=lambda r: (not r["flagged"], r["derived"], r["slice"], -r["pairs"], r["value"]))
    return out


def _discovered(s: Summary) -> list[dict[str, Any]]:
    """SliceLine's top slices, each `confirmed` or a `hint` (analysis.anytime_slices)."""
    total, agree = s.get("rows"), s.get("agree")
    singles = [
        {"conditions": [[r["slice"], r["value"]]], "pairs": r["pairs"], "disagree": r["disagree"]}
        for r in s.slices()
        if not _is_derived(r["slice"])
    ]
    pairs = [p for p in s.slice_pairs() if not any(_is_derived(f) for f, _ in p["conditions"])]
    deff = s.request_moments().design_effect()
    return anytime_slices.discover(
        singles + pairs, total, total - agree, design_effect=deff, k=DISCOVERED_K
    )


def _secondaries(client: redis.Redis, keys: Keys, settings: Settings) -> list[str]:
    names = {c.name for c in settings.candidates if c.role == "secondary"}
    with store_errors("cannot read the candidates seen"):
        seen = client.hgetall(keys.candidates_seen())
    names |= {k.decode() for k, v in seen.items() if v == b"secondary"}
    return sorted(names)


def _noise_summary(
    client: redis.Redis,
    keys: Keys,
    settings: Settings,
    candidate: str,
    own: Summary,
    first: int,
    last: float,
) -> tuple[str, Summary] | None:
    """A secondary replica of the primary and its window: the disagreement of noise alone."""
    secondaries = _secondaries(client, keys, settings)
    if not secondaries:
        return None
    name = candidate if candidate in secondaries else secondaries[0]
    return name, own if name == candidate else load_window(client, keys, name, first, last)[0]


def _noise_floor(own: Summary, noise: tuple[str, Summary] | None) -> dict[str, Any]:
    """Agreement of the secondary over the same window, and the candidate's excess over it."""
    if noise is None:
        return {"agreement": None, "candidate": None}
    name, floor = noise
    n_noise, d_noise = floor.get("rows"), floor.get("rows") - floor.get("agree")
    low, high = stats.wilson_interval(n_noise - d_noise, n_noise)
    return {
        "agreement": _rate(n_noise - d_noise, n_noise),
        "ci_low": low,
        "ci_high": high,
        "candidate": name,
        "pairs": n_noise,
        "excess": sequential.excess_cs(own.request_moments(), floor.request_moments()),
    }


def _labels(s: Summary) -> dict[str, Any]:
    a, b, c, d = (s.get(f) for f in ("la", "lb", "lc", "ld"))
    result = stats.accuracy_comparison(a, b, c, d)
    if not result["n"]:
        result["mcnemar_p"] = None
    dup = s.get("label_dup")  # pairs whose request id was already waiting for its label
    return {
        **result,
        "negative_flips": b,
        "positive_flips": c,
        "duplicate_ids": dup,
        **sequential.paired_flips_cs(b, c, result["n"]),
        "by_class": recall.by_class(s),
        "numeric": recall.numeric_truth(s),
    }


def _contract(client: redis.Redis, keys: Keys, candidate: str, s: Summary) -> dict[str, Any]:
    by_kind = {k: int(v) for k, v in sorted(s.group("ct").items())}
    examples: dict[str, str] = {}
    if by_kind or s.get("err:contract"):
        for sample in read_samples(client, keys, candidate, "contract"):
            examples.setdefault(sample["kind"], sample["detail"])
    return {"total": sum(by_kind.values()), "by_kind": by_kind, "examples": examples}


def _unparseable(client: redis.Redis, keys: Keys, candidate: str, s: Summary) -> dict[str, Any]:
    primary, candidate_n = s.get("err:primary_unparseable"), s.get("err:unparseable")
    samples = (
        read_samples(client, keys, candidate, "unparseable", 5) if primary or candidate_n else []
    )
    return {"primary": primary, "candidate": candidate_n, "samples": samples}


# -- JSON safety ------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """Plain Python values only; NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    return value
