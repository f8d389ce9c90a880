"""The latency rule under continuous looks: seeded simulation through the worker's counting,
the report's latency section and the gate.

    PYTHONPATH=. python benchmarks/latency_bench.py --runs 200

Each run sends `requests` pairs at `rate` per second into time buckets of `bucket_s`
seconds, counted by the worker's own code (analysis.summaries.BatchDelta), and re-judges
the gate's latency rule every `every` requests from `every` to `requests` (analysis.report
`_latency` on the merged Summary with its per-bucket histograms, then analysis.gate). Both
sides draw from a log-normal (median 4 ms, sigma 0.4); stalls arrive on the candidate's
side only (the harder case: a stall of the proxy's loop would slow both), as a Poisson
process of `stalls_per_10k` per 10,000 requests with at least one in the first 2,000,
each lasting 0.5-2 s and adding 50-250 ms to every candidate request inside it.

Scenarios: `aa_stalls` (the same distribution: any fail is a false alarm) and `slow_2x`
(every candidate latency doubled, so its p99 is twice the primary's: how soon it fails).
`latency_scenarios(...)` returns the per-scenario summary for other benches to import.

`--direct` judges the rule alone, for iterating on analysis/latency.py: each bucket's
histograms are binned here (`stats.latency_bin_index`, as the worker bins) and go straight
to `latency.compare` and `latency.judge`, skipping the worker's counting, the report and
the point-ratio rule; about a hundred times faster, with the same verdicts (the same
seeds give the same first fail and pass).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis import latency, stats
from analysis.gate import evaluate_gate
from analysis.report import _latency
from analysis.summaries import LATENCY_EDGES, BatchDelta, PairEvidence, Summary
from common.settings import GateSettings

SCENARIOS = ("aa_stalls", "slow_2x")


@dataclass(frozen=True)
class Traffic:
    """The simulated trial: volume, pacing, bucketing and the stall process."""

    requests: int = 20_000
    every: int = 100
    rate: float = 20.0
    bucket_s: int = 10
    median_ms: float = 4.0
    sigma: float = 0.4
    stalls_per_10k: float = 1.0
    stall_s: tuple[float, float] = (0.25, 1.0)
    stall_ms: tuple[float, float] = (50.0, 250.0)


def _stalls(rng: np.random.Generator, traffic: Traffic) -> list[tuple[float, float, float]]:
    """(start s, end s, added ms) of each stall; at least one within the first 2,000."""
    horizon = traffic.requests / traffic.rate
    count = rng.poisson(traffic.stalls_per_10k * traffic.requests / 10_000)
    starts = [rng.uniform(0, 2_000 / traffic.rate), *rng.uniform(0, horizon, count)]
    return [(s, s + rng.uniform(*traffic.stall_s), rng.uniform(*traffic.stall_ms)) for s in starts]


def _latencies(
    rng: np.random.Generator, traffic: Traffic, slowdown: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival s, primary ms, candidate ms) for one run."""
    n = traffic.requests
    arrival = np.arange(n) / traffic.rate
    base = np.log(traffic.median_ms)
    primary = np.exp(rng.normal(base, traffic.sigma, n))
    candidate = np.exp(rng.normal(base, traffic.sigma, n)) * slowdown
    for start, end, added in _stalls(rng, traffic):
        candidate[(arrival >= start) & (arrival < end)] += added
    return arrival, primary, candidate


def _looks(traffic: Traffic, arrival: np.ndarray, primary: np.ndarray, candidate: np.ndarray
           ) -> Iterator[tuple[int, Summary]]:  # fmt: skip
    """After every `every` requests: (requests so far, the window's Summary), as the report
    would read it (merged counters, one latency histogram per side per bucket)."""
    delta = BatchDelta(traffic.bucket_s)
    merged: dict[str, int] = {}
    for i in range(traffic.requests):
        ts_ms = int(1_700_000_000_000 + arrival[i] * 1000)
        one = BatchDelta(traffic.bucket_s)
        one.add(PairEvidence("r", ts_ms, float(primary[i]), float(candidate[i])), _same)
        for start, bucket in one.buckets.items():
            target = delta.bucket(start).ints
            for key, value in bucket.ints.items():
                target[key] += value
                merged[key] = merged.get(key, 0) + value
        if (i + 1) % traffic.every == 0:
            yield i + 1, _summary(merged, delta)


def _same(feature: str, value: str) -> str:
    return value


_BINS = len(LATENCY_EDGES) - 1
_BUCKET_CACHE: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _bucket_hists(start: int, ints: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """A bucket's two latency histograms, as Summary.hist reads them (cached while unchanged)."""
    key = (id(ints), start, ints["records"])
    found = _BUCKET_CACHE.get(key)
    if found is None:
        one = Summary(dict(ints))
        found = _BUCKET_CACHE[key] = (one.hist("lp", _BINS), one.hist("lc", _BINS))
    return found


def _summary(merged: dict[str, int], delta: BatchDelta) -> Summary:
    summary = Summary(dict(merged))
    hists = {start: _bucket_hists(start, b.ints) for start, b in delta.buckets.items()}
    summary.latency_buckets = {
        "lp": {k: h[0] for k, h in hists.items()},
        "lc": {k: h[1] for k, h in hists.items()},
    }
    return summary


def _direct_outcomes(
    traffic: Traffic, latencies: tuple[np.ndarray, np.ndarray, np.ndarray], gate: GateSettings
) -> Iterator[tuple[int, str]]:
    """After every `every` requests: (requests so far, the rule's outcome), from per-bucket
    histograms binned here and judged by analysis.latency alone."""
    arrival, primary, candidate = latencies
    starts = (arrival // traffic.bucket_s).astype(np.int64)
    edges = np.asarray(LATENCY_EDGES)
    bins = {
        "p": stats.latency_bin_index(primary, edges),
        "c": stats.latency_bin_index(candidate, edges),
    }
    sides: dict[str, dict[int, np.ndarray]] = {"p": {}, "c": {}}
    for done in range(traffic.every, traffic.requests + 1, traffic.every):
        new = slice(done - traffic.every, done)
        for side, clusters in sides.items():
            for start in np.unique(starts[new]):
                inside = bins[side][new][starts[new] == start]
                h = clusters.setdefault(int(start), np.zeros(_BINS, dtype=np.int64))
                np.add.at(h, inside, 1)
        merged = {side: np.sum(list(c.values()), axis=0) for side, c in sides.items()}
        sequential = latency.compare(
            (merged["c"], sides["c"]), (merged["p"], sides["p"]), edges, "primary"
        )
        yield done, latency.judge(sequential, gate.max_p99_ratio)[0]


def _direct_run(seed: int, scenario: str, traffic: Traffic, gate: GateSettings) -> dict[str, Any]:
    """One run of the rule alone (`--direct`): the first look that failed and that passed."""
    rng = np.random.default_rng(seed)
    latencies = _latencies(rng, traffic, 2.0 if scenario == "slow_2x" else 1.0)
    first: dict[str, int | None] = {"fail": None, "pass": None}
    for n, outcome in _direct_outcomes(traffic, latencies, gate):
        if outcome in first and first[outcome] is None:
            first[outcome] = n
        if None not in first.values():
            break
    return {"seed": seed, "first_fail": first["fail"], "first_pass": first["pass"],
            "first_point_fail": None}  # fmt: skip


def run_once(seed: int, scenario: str, traffic: Traffic, gate: GateSettings) -> dict[str, Any]:
    """One run: the first look that failed and the first that passed (None: never)."""
    rng = np.random.default_rng(seed)
    slowdown = 2.0 if scenario == "slow_2x" else 1.0
    arrival, primary, candidate = _latencies(rng, traffic, slowdown)
    first: dict[str, int | None] = {"fail": None, "pass": None, "point": None}
    for n, summary in _looks(traffic, arrival, primary, candidate):
        section = _latency(summary)
        verdict = evaluate_gate({"latency": section}, gate)
        outcome = next(r for r in verdict["rules"] if r["rule"] == "latency")["outcome"]
        if outcome in first and first[outcome] is None:
            first[outcome] = n
        # The rule before this work: the point p99 ratio above the policy at this look.
        ratio = section["p99_ratio"]
        if first["point"] is None and ratio is not None and ratio > gate.max_p99_ratio:
            first["point"] = n
        if None not in first.values():
            break
    _BUCKET_CACHE.clear()
    return {
        "seed": seed,
        "first_fail": first["fail"],
        "first_pass": first["pass"],
        "first_point_fail": first["point"],
    }


def _share(values: list[int | None], within: int) -> float:
    return sum(1 for v in values if v is not None and v <= within) / len(values)


def latency_scenarios(
    runs: int = 200,
    traffic: Traffic | None = None,
    max_p99_ratio: float = 1.5,
    seed: int = 0,
    scenarios: tuple[str, ...] = SCENARIOS,
    direct: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per scenario: how often the rule ever failed / passed, and by when (continuous looks);
    `direct`: the rule alone (see the module doc; the point-ratio columns are then 0)."""
    traffic = traffic or Traffic()
    gate = GateSettings(max_p99_ratio=max_p99_ratio)
    one = _direct_run if direct else run_once
    out = {}
    for k, scenario in enumerate(scenarios):
        results = [one(seed + 1_000_003 * k + r, scenario, traffic, gate) for r in range(runs)]
        fails = [r["first_fail"] for r in results]
        passes = [r["first_pass"] for r in results]
        failed = sorted(v for v in fails if v is not None)
        out[scenario] = {
            "runs": runs,
            "ever_fail": _share(fails, traffic.requests),
            "fail_by_1000": _share(fails, 1_000),
            "fail_by_2000": _share(fails, 2_000),
            "fail_by_3000": _share(fails, 3_000),
            "fail_by_5000": _share(fails, 5_000),
            "median_first_fail": failed[len(failed) // 2] if failed else None,
            "ever_pass": _share(passes, traffic.requests),
            "point_rule_ever_fail": _share([r["first_point_fail"] for r in results], 10**9),
            "point_rule_fail_by_2000": _share([r["first_point_fail"] for r in results], 2_000),
            "pass_by_5000": _share(passes, 5_000),
        }
    return out


def main() -> None:
    """Print one line per scenario."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--bucket-s", type=int, default=10)
    parser.add_argument("--sigma", type=float, default=0.4, help="log-normal spread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--direct", action="store_true", help="the rule alone, fast")
    args = parser.parse_args()
    traffic = Traffic(
        requests=args.requests, rate=args.rate, bucket_s=args.bucket_s, sigma=args.sigma
    )
    started = time.perf_counter()
    results = latency_scenarios(args.runs, traffic, seed=args.seed, direct=args.direct)
    print(f"{traffic}, {args.runs} runs, {time.perf_counter() - started:.0f} s")
    for scenario, row in results.items():
        print(scenario, row)


if __name__ == "__main__":
    main()
