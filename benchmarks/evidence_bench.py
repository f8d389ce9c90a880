"""Evidence bench: does the gate keep its error rates when it is read at every look?

    .venv/bin/python -m benchmarks.evidence_bench                 # full run, writes RESULTS.md
    .venv/bin/python -m benchmarks.evidence_bench --runs 40 --no-write
    .venv/bin/python -m benchmarks.evidence_bench --only aa,power

Each run simulates a trial through the same code the worker and the report run: pair
evidence (analysis.summaries.PairEvidence) counted by the worker's BatchDelta into
additive counters, merged, read by analysis.report.analyse and judged by
analysis.gate.evaluate_gate, after every `look_every` pairs. Nothing is re-implemented on
a side copy; only the traffic is simulated:

- requests of `rows` rows; a request's disagreement probability is Beta-distributed with
  mean `rate` and intra-request correlation `icc` (a + b = 1/icc - 1), rows Bernoulli;
- a header slice `tenant` (per request) and two row slices `country` and `device`;
  `drop` adds that much disagreement to the rows of country=XX (10% of rows) or, with
  `drop_on="tenant"`, to every row of tenant=t3 requests (10% of requests);
- a secondary replica of the primary (the noise floor) with the same disagreement as
  the A/A candidate; candidate and primary errors; labels on half the requests, the
  discordant ones split evenly (no accuracy change);
- latencies from `latency(rng, n)` (pluggable: a scenario may bring its own, e.g. stalls).

Seeds are `seed0 + run`; a run's result depends on its seed only.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analysis import stats
from analysis.adapters.base import Prediction
from analysis.compare import RowComparison
from analysis.gate import FAIL, PASS, evaluate_gate
from analysis.report import analyse
from analysis.slices import fold_local
from analysis.summaries import BatchDelta, PairEvidence, Summary
from common.settings import Settings, settings_from_mapping

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
START, END = "<!-- evidence_bench:start -->", "<!-- evidence_bench:end -->"
TENANTS = ("t0", "t1", "t2", "t3")
TENANT_SHARES = (0.5, 0.25, 0.15, 0.10)
COUNTRIES = ("FR", "DE", "US", "IT", "XX")
COUNTRY_SHARES = (0.35, 0.25, 0.2, 0.1, 0.10)
DEVICES = ("mobile", "desktop")
TS_MS = 1_700_000_000_000

Latency = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def same_latency(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Primary and candidate from one lognormal (median 10 ms): an A/A twin in latency."""
    return rng.lognormal(math.log(10.0), 0.5, n), rng.lognormal(math.log(10.0), 0.5, n)


@dataclass(frozen=True)
class Scenario:
    """One simulated trial design; see the module docstring for the traffic model."""

    name: str
    pairs: int = 20_000
    look_every: int = 100
    rows: int = 8
    rate: float = 0.06
    icc: float = 0.2
    drop: float = 0.0
    drop_on: str = "country"
    noise_rate: float | None = 0.06  # the secondary's disagreement; None: no secondary
    error_rate: float = 0.002
    labelled: float = 0.5
    latency: Latency = same_latency
    gate: dict[str, Any] = field(default_factory=dict)


# -- traffic ------------------------------------------------------------------------------

_P = {
    lab: Prediction(label=lab, confidence=0.9, margin=0.8) for lab in ("a", "b")
}  # the primary's answer; the candidate's is the other class when they disagree
_ROW = {
    (lab, agree): RowComparison(
        agree=agree, primary=_P[lab], candidate=_P[lab if agree else ("b" if lab == "a" else "a")]
    )
    for lab in ("a", "b")
    for agree in (True, False)
}


def _request_rates(rng: np.random.Generator, sc: Scenario, rate: float, n: int) -> np.ndarray:
    """Per request disagreement probability: Beta with the scenario's mean and correlation."""
    if sc.icc <= 0 or rate <= 0:
        return np.full(n, rate)
    total = 1.0 / sc.icc - 1.0
    return rng.beta(rate * total, (1.0 - rate) * total, n)


def _batch(
    rng: np.random.Generator, sc: Scenario, rate: float, drop: float, n: int, start: int
) -> Iterator[tuple[PairEvidence, bool]]:
    """n pair evidences and, per request, whether its first row agrees (for labels)."""
    p_req = _request_rates(rng, sc, rate, n)
    tenants = rng.choice(len(TENANTS), n, p=TENANT_SHARES)
    countries = rng.choice(len(COUNTRIES), (n, sc.rows), p=COUNTRY_SHARES)
    devices = rng.integers(0, 2, (n, sc.rows))
    uniform = rng.random((n, sc.rows))
    classes = rng.integers(0, 2, (n, sc.rows))
    failures = rng.random((n, 2))
    primary_ms, candidate_ms = sc.latency(rng, n)
    for i in range(n):
        p_rows = np.full(sc.rows, p_req[i])
        if drop:
            hit = (
                countries[i] == 4 if sc.drop_on == "country" else np.full(sc.rows, tenants[i] == 3)
            )
            p_rows = np.where(hit, np.minimum(p_rows + drop, 1.0), p_rows)
        agree = uniform[i] >= p_rows
        labs = ["a" if c == 0 else "b" for c in classes[i]]
        slice_rows = [
            {"tenant": TENANTS[tenants[i]], "country": COUNTRIES[c], "device": DEVICES[d]}
            for c, d in zip(countries[i], devices[i], strict=True)
        ]
        ev = PairEvidence(
            request_id=f"r{start + i}",
            ts_ms=TS_MS,
            primary_ms=float(primary_ms[i]),
            candidate_ms=float(candidate_ms[i]),
            primary_rows=[_P[lab] for lab in labs],
            slice_rows=slice_rows,
        )
        if failures[i, 0] < sc.error_rate:
            ev.primary_failure = "primary"
        elif failures[i, 1] < sc.error_rate:
            ev.candidate_error = "timeout"
        else:
            ev.rows = [_ROW[lab, bool(a)] for lab, a in zip(labs, agree, strict=True)]
        yield ev, bool(agree[0]) and ev.candidate_error is None


class Stream:
    """One candidate's counters, grown batch by batch with the worker's own BatchDelta."""

    def __init__(self) -> None:
        self.counts: dict[str, float | int] = {}
        self.admitted: dict[str, set[str]] = {}

    def fold(self, feature: str, value: str) -> str:
        return fold_local(value, self.admitted.setdefault(feature, set()))

    def add(self, evidence: list[PairEvidence], extra: dict[str, int] | None = None) -> None:
        delta = BatchDelta(bucket_seconds=60)
        for ev in evidence:
            delta.add(ev, self.fold)
        for bucket in delta.buckets.values():
            for name, value in [*bucket.ints.items(), *bucket.floats.items()]:
                self.counts[name] = self.counts.get(name, 0) + value
        for name, value in (extra or {}).items():
            self.counts[name] = self.counts.get(name, 0) + value

    def summary(self) -> Summary:
        return Summary(dict(self.counts))


def _labels(rng: np.random.Generator, sc: Scenario, first_agree: list[bool]) -> dict[str, int]:
    """Labelled requests as the feedback join counts them: la, lb, lc, ld (A/A: b ~ c)."""
    out = {"la": 0, "lb": 0, "lc": 0, "ld": 0}
    for agree in first_agree:
        if rng.random() >= sc.labelled:
            continue
        if agree:
            out["la" if rng.random() < 0.9 else "ld"] += 1
        else:
            out["lb" if rng.random() < 0.5 else "lc"] += 1
    return out


# -- one run --------------------------------------------------------------------------------


@dataclass
class RunResult:
    """Per rule: first look (pairs) at which it failed / passed; and CS coverage."""

    first_fail: dict[str, int] = field(default_factory=dict)
    first_pass: dict[str, int] = field(default_factory=dict)
    outcome_at: dict[int, dict[str, str]] = field(default_factory=dict)
    confirmed_discovery: int | None = None
    covered: dict[str, bool] = field(default_factory=dict)


def _truth(sc: Scenario) -> dict[str, float]:
    """True rates the confidence sequences must cover."""
    share = 0.10 if sc.drop else 0.0
    d_candidate = sc.error_rate + (1 - sc.error_rate) * (sc.rate + sc.drop * share)
    d_noise = sc.error_rate + (1 - sc.error_rate) * (sc.noise_rate or 0.0)
    return {"agreement": 1.0 - d_candidate, "excess": d_candidate - d_noise}


def _check_coverage(result: RunResult, report: dict[str, Any], truth: dict[str, float]) -> None:
    ag, excess = report["agreement"], (report["noise_floor"].get("excess") or {})
    checks = {
        "agreement CS": ag["cs_low"] <= truth["agreement"] <= ag["cs_high"],
        "excess CS": excess.get("ci_low", -1) <= truth["excess"] <= excess.get("ci_high", 1),
        "primary errors CS": _inside(report["errors"]["primary_cs"], 0.002),
        "candidate errors CS": _inside(report["errors"]["candidate_cs"], 0.002 * 0.998),
        "label flip share CS": _inside(report["labels"].get("negative_share_cs"), 0.5),
    }
    for name, ok in checks.items():
        result.covered[name] = result.covered.get(name, True) and ok


def _inside(bounds: list[float] | None, value: float) -> bool:
    return bounds is None or bounds[0] <= value <= bounds[1]


def run_once(
    sc: Scenario, settings: Settings, seed: int, record_at: tuple[int, ...] = ()
) -> RunResult:
    """One trial: counters grown every `look_every` pairs, the gate read at every look."""
    rng = np.random.default_rng(seed)
    candidate, noise = Stream(), Stream()
    truth, result = _truth(sc), RunResult()
    for start in range(0, sc.pairs, sc.look_every):
        batch = list(_batch(rng, sc, sc.rate, sc.drop, sc.look_every, start))
        candidate.add([ev for ev, _ in batch], _labels(rng, sc, [a for _, a in batch]))
        if sc.noise_rate is not None:
            noise.add([ev for ev, _ in _batch(rng, sc, sc.noise_rate, 0.0, sc.look_every, start)])
        look = start + sc.look_every
        noise_arg = ("replica", noise.summary()) if sc.noise_rate is not None else None
        report = analyse(candidate.summary(), settings, noise_arg)
        gate = evaluate_gate(report, settings.gate)
        _note(result, look, gate, report, record_at)
        _check_coverage(result, report, truth)
    return result


def _note(
    result: RunResult, look: int, gate: dict[str, Any], report: dict, record_at: tuple[int, ...]
) -> None:
    outcomes = {r["rule"]: r["outcome"] for r in gate["rules"]}
    for rule, outcome in outcomes.items():
        if outcome == FAIL:
            result.first_fail.setdefault(rule, look)
        if outcome == PASS:
            result.first_pass.setdefault(rule, look)
    if look in record_at:
        result.outcome_at[look] = outcomes
    if result.confirmed_discovery is None and any(
        d.get("status") == "confirmed" for d in report.get("discovered") or []
    ):
        result.confirmed_discovery = look


def settings_for(sc: Scenario) -> Settings:
    raw = {
        "candidates": [
            {"name": "v2", "url": "http://127.0.0.1:9"},
            {"name": "replica", "url": "http://127.0.0.1:9", "role": "secondary"},
        ],
        "slices": [
            {"name": "tenant", "from": "header:x-tenant"},
            {"name": "country", "from": "$.inputs[1].data[*]"},
            {"name": "device", "from": "$.inputs[2].data[*]"},
        ],
        "gate": sc.gate,
    }
    return settings_from_mapping(raw, environ={})


# -- many runs ------------------------------------------------------------------------------


def binomial_ci(k: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval for a rate measured in n runs."""
    return stats.wilson_interval(k, n)


def rate_text(k: int, n: int) -> str:
    low, high = binomial_ci(k, n)
    return f"{k}/{n} = {100 * k / n:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def run_many(
    sc: Scenario, runs: int, seed0: int, record_at: tuple[int, ...] = ()
) -> list[RunResult]:
    settings = settings_for(sc)
    results = []
    for r in range(runs):
        results.append(run_once(sc, settings, seed0 + r, record_at))
        print(sc.name, seed0 + r, results[-1], file=sys.stderr, flush=True)  # progress
    return results


SCENARIOS: dict[str, Scenario] = {
    "aa": Scenario("aa"),
    # The first measurement: one row per request, re-judged up to 10,000 pairs.
    "aa_independent": Scenario("aa_independent", pairs=10_000, rows=1, icc=0.0),
    "power": Scenario("power", pairs=5_000, drop=0.10),
    "power_header": Scenario("power_header", pairs=5_000, drop=0.10, drop_on="tenant"),
    # The true excess over the noise floor exactly at the allowed 5 points (min_agreement
    # 0.95): the agreement rule must pass in at most 5% of runs, at any look.
    "at_limit": Scenario("at_limit", rate=0.1102, noise_rate=0.06),
}
RULES = ("agreement", "slices", "errors", "labels", "latency")


def summarise_aa(results: list[RunResult]) -> list[str]:
    n = len(results)
    own = set(RULES[:4])
    k = sum(bool(set(r.first_fail) & own) for r in results)
    lines = [f"- any alarm, any look (rules {', '.join(RULES[:4])}): {rate_text(k, n)}"]
    for rule in RULES:
        k = sum(rule in r.first_fail for r in results)
        firsts = sorted(r.first_fail[rule] for r in results if rule in r.first_fail)
        median = f", median first failure at {int(np.median(firsts)):,} pairs" if firsts else ""
        lines.append(f"- rule `{rule}` ever fails: {rate_text(k, n)}{median}")
    k = sum(r.confirmed_discovery is not None for r in results)
    lines.append(f"- a discovered slice ever shown as confirmed: {rate_text(k, n)}")
    for name in results[0].covered:
        k = sum(r.covered[name] for r in results)
        lines.append(f"- {name} covers the truth at every look: {rate_text(k, n)}")
    return lines


def summarise_power(results: list[RunResult], horizon: int) -> list[str]:
    n = len(results)
    by = sum(r.first_fail.get("slices", horizon + 1) <= horizon for r in results)
    single = sum(r.outcome_at.get(2_000, {}).get("slices") == FAIL for r in results)
    firsts = [r.first_fail["slices"] for r in results if "slices" in r.first_fail]
    lines = [
        f"- slice rule fails by {horizon:,} pairs (continuous looks): {rate_text(by, n)}",
        f"- single look at 2,000 pairs: slice rule fails in {rate_text(single, n)}",
    ]
    if firsts:
        lines.append(f"- median first failure at {int(np.median(firsts)):,} pairs")
    return lines


def rows_to_pass(
    agreement: float, minimum: float, runs: int, seed0: int, rows: int, icc: float
) -> str:
    """Median rows until the agreement rule passes (new) and the old t/4 CS would have."""
    sc = Scenario(
        "rows", pairs=60_000 // rows, look_every=max(1, 100 // rows), rows=rows, rate=1 - agreement,
        icc=icc, noise_rate=None, error_rate=0.0, labelled=0.0, gate={"min_agreement": minimum},
    )  # fmt: skip
    settings = settings_for(sc)
    new, old = [], []
    for r in range(runs):
        new.append(_first_pass(sc, settings, seed0 + r, old))

    def med(xs: list[float]) -> str:
        done = [x for x in xs if x is not None]
        return (
            f"{int(np.median(done)):,}"
            if len(done) == len(xs)
            else f">{sc.pairs * rows:,} in {len(xs) - len(done)} runs"
        )

    return f"new {med(new)} rows, old {med(old)} rows"


def _first_pass(sc: Scenario, settings: Settings, seed: int, old: list) -> int | None:
    rng = np.random.default_rng(seed)
    stream, new_at, old_at = Stream(), None, None
    for start in range(0, sc.pairs, sc.look_every):
        stream.add([ev for ev, _ in _batch(rng, sc, sc.rate, 0.0, sc.look_every, start)])
        s = stream.summary()
        rows, agree = s.get("rows"), s.get("agree")
        if (
            old_at is None
            and stats.confidence_sequence(agree, rows)[0] >= settings.gate.min_agreement
        ):
            old_at = rows
        if new_at is None:
            gate = evaluate_gate(analyse(s, settings), settings.gate)
            if any(r["rule"] == "agreement" and r["outcome"] == PASS for r in gate["rules"]):
                new_at = rows
        if new_at is not None and old_at is not None:
            break
    old.append(old_at)
    return new_at


# -- main ---------------------------------------------------------------------------------


def read_log(path: str, scenario: str) -> list[RunResult]:
    """Run results from a progress log (stderr of an earlier, possibly interrupted, run)."""
    results = []
    for line in Path(path).read_text().splitlines():
        name, _, text = line.split(" ", 2)
        if name != scenario:
            continue
        call = ast.parse(text, mode="eval").body
        assert isinstance(call, ast.Call)
        results.append(RunResult(**{k.arg: ast.literal_eval(k.value) for k in call.keywords}))
    return results


def _results(
    name: str, runs: int, seed0: int, logs: dict[str, str], record_at: tuple[int, ...] = ()
) -> list[RunResult]:
    if name in logs:
        return read_log(logs[name], name)
    return run_many(SCENARIOS[name], runs, seed0, record_at)


def _aa_section(name: str, runs: int, seed0: int, logs: dict[str, str]) -> list[str]:
    sc = SCENARIOS[name]
    t0 = time.perf_counter()
    results = _results(name, runs, seed0, logs)
    n = len(results)
    took = "from a progress log" if name in logs else f"{time.perf_counter() - t0:.0f} s"
    return [
        f"### A/A twin ({name}), gate read every {sc.look_every} pairs from {sc.look_every}"
        f" to {sc.pairs:,} ({n} runs, seeds {seed0}..{seed0 + n - 1}, {took})",
        "",
        f"{sc.rows}-row requests, disagreement {sc.rate:.0%} with intra-request correlation"
        f" {sc.icc}, a header slice (tenant) and two row slices (country, device), a"
        " secondary replica as the noise floor, 0.2% errors on each side, labels on half"
        " the requests. Rates are runs with at least one failure at any look, with their"
        " Wilson 95% interval.",
        "",
        *summarise_aa(results),
        "",
    ]


def measure(runs: int, seed0: int, only: set[str], logs: dict[str, str]) -> list[str]:
    """Every measurement of the issue, as Markdown lines."""
    lines: list[str] = []
    for name in ("aa", "aa_independent"):
        if name in only:
            lines += _aa_section(name, runs, seed0 + (40_000 if name != "aa" else 0), logs)
    for name in ("power", "power_header"):
        if name not in only:
            continue
        sc = SCENARIOS[name]
        results = _results(name, runs, seed0 + 10_000, logs, record_at=(2_000,))
        where = "country=XX (a row slice, 10% of rows)" if sc.drop_on == "country" else (
            "tenant=t3 (a header slice, 10% of requests)")  # fmt: skip
        lines += [
            f"### Power: a {sc.drop:.0%} drop on {where} ({len(results)} runs,"
            f" seeds {seed0 + 10_000}..)",
            "",
            *summarise_power(results, sc.pairs),
            "",
        ]
    if "at_limit" in only:
        sc = SCENARIOS["at_limit"]
        results = _results("at_limit", runs, seed0 + 30_000, logs)
        k = sum("agreement" in r.first_pass for r in results)
        cover = sum(r.covered["excess CS"] for r in results)
        lines += [
            f"### Excess over the noise floor exactly at the allowed 5 points ({len(results)} runs,"
            f" seeds {seed0 + 30_000}.., looks every {sc.look_every} pairs to {sc.pairs:,})",
            "",
            f"- the agreement rule ever passes: {rate_text(k, len(results))}",
            f"- the excess CS covers the truth at every look: {rate_text(cover, len(results))}",
            "",
        ]
    if "rows" in only:
        rows_runs = max(10, runs // 10)
        lines += [
            f"### Rows needed to pass the agreement rule (median over {rows_runs} runs,"
            f" seeds {seed0 + 20_000}..; new: this gate, old: the t/4 normal-mixture CS)",
            "",
        ]
        for agreement, minimum in ((0.97, 0.95), (0.99, 0.98)):
            for rows, icc in ((1, 0.0), (8, 0.2)):
                text = rows_to_pass(
                    agreement, minimum, max(10, runs // 4), seed0 + 20_000, rows, icc
                )
                lines.append(
                    f"- {agreement:.0%} against a {minimum:.0%} minimum, {rows}-row requests"
                    f" (correlation {icc}): {text}"
                )
        lines.append("")
    return lines


def write_results(lines: list[str], runs: int) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(
        [START, f"## Evidence bench (`python -m benchmarks.evidence_bench --runs {runs}`, {stamp})",
         "", *lines, END]
    )  # fmt: skip
    text = RESULTS.read_text() if RESULTS.exists() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + body + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20_240_101)
    parser.add_argument("--only", default="aa,aa_independent,power,power_header,at_limit,rows")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--logs",
        default="",
        help="scenario=path,...: read those scenarios' runs from earlier progress logs",
    )
    args = parser.parse_args()
    logs = dict(item.split("=", 1) for item in args.logs.split(",") if item)
    lines = measure(args.runs, args.seed, set(args.only.split(",")), logs)
    print("\n".join(lines))
    if not args.no_write:
        write_results(lines, args.runs)


if __name__ == "__main__":
    main()
