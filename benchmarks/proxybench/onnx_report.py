"""Pure parts of the ONNX benchmark: /metrics deltas, stream lag, medians, the RESULTS.md section.

Nothing here starts a process (tests/test_onnx_bench.py covers it). A row is one open-loop
run of proxybench.openloop, with the CPU groups of Bench.measure and what onnx_bench.py
adds: the mirror outcomes of the run (from /metrics before and after), the worker's CPU,
and for `run = "worker"` how far the worker was behind when the load stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from proxybench.onnx_plan import MAX_CONNS, OFF, WORKER, OnnxPlan, config_name, mode_threads
from proxybench.results import Row, fmt, median, paired_ratio, select, spread

SAMPLED = "shadowtrial_mirror_sampled_total"
OUTCOMES = "shadowtrial_mirror_outcomes_total"
KEEP_UP_S = 2.0  # a worker this far behind (or less) when the load stops keeps up
BUSY_MACHINE_PCT = 10.0  # as proxybench.report: other processes above this, not quiet
GENERATOR_LATE_MS = 5.0  # as proxybench.report: the generator itself was starved
OVERLOAD_P50_MS = 50.0  # a median above this: requests queued, the rate exceeded capacity
CPU_KEYS = ("sut_cpu", "worker_cpu", "stub_cpu", "redis_cpu", "gen_cpu", "other_cpu")


# -- /metrics and the stream ---------------------------------------------------------------


def mirror_counters(metrics_text: str, candidate: str) -> dict[str, float]:
    """`sampled` and every mirror outcome (`ok`, `shed`, `deferred`, ...) of one candidate."""
    found: dict[str, float] = {"sampled": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.labels.get("candidate") != candidate:
                continue
            if sample.name == SAMPLED:
                found["sampled"] += sample.value
            elif sample.name == OUTCOMES:
                outcome = sample.labels.get("outcome", "?")
                found[outcome] = found.get(outcome, 0.0) + sample.value
    return found


def mirror_shares(before: dict[str, float], after: dict[str, float]) -> Row:
    """One run's mirrors: how many were sampled and the % shed, timed out or failed."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after.keys() | before.keys()}
    sampled = delta.get("sampled", 0.0)

    def pct(*outcomes: str) -> float:
        return 100 * sum(delta.get(o, 0.0) for o in outcomes) / sampled if sampled else math.nan

    return {
        "sampled": int(sampled),
        "shed_pct": pct("shed"),
        "failed_pct": pct("timeout", "error"),
    }


def stream_id_ms(entry_id: str | bytes) -> int:
    """The millisecond part of a Redis stream id ('1700000000123-4' -> 1700000000123)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def behind_seconds(last_entry: str | bytes, last_delivered: str | bytes) -> float:
    """How far a consumer group trails its stream: seconds between the newest entry and the
    newest one handed to a worker (0 when it has taken everything)."""
    return max(0, stream_id_ms(last_entry) - stream_id_ms(last_delivered)) / 1000


# -- reductions ------------------------------------------------------------------------------


def _med(rows: Sequence[Row], key: str) -> float:
    return median(r.get(key) for r in rows)


def cpu_us_per_request(rows: Sequence[Row]) -> float:
    """CPU µs per request of the shadowing deployment: the proxy's processes plus the worker."""
    per = [
        (r["sut_cpu"] + r.get("worker_cpu", 0.0)) / 100 / r["rate"] * 1e6
        for r in rows
        if r.get("rate") and not math.isnan(r.get("sut_cpu", math.nan))
    ]
    return median(per)


def keeps_up(rows: Sequence[Row], drain_s: float) -> str:
    """For `run = "worker"`: did the worker keep pace with the proxy during the runs?

    It keeps up when it was at most KEEP_UP_S behind (median) as the load stopped and caught
    up within `drain_s` after every run; the text says by how much either way.
    """
    behind = [r["behind_s"] for r in rows if "behind_s" in r]
    if not behind:
        return "-"
    drains = [r.get("drain_s", math.nan) for r in rows]
    stuck = sum(1 for d in drains if math.isnan(d))
    late, slowest = median(behind), max((d for d in drains if not math.isnan(d)), default=0.0)
    detail = f"{late:.1f} s behind, caught up in {slowest:.1f} s"
    if stuck:
        return f"**no**: {late:.1f} s behind, {stuck} run(s) not caught up in {drain_s:.0f} s"
    return f"{'yes' if late <= KEEP_UP_S else '**no**'}: {detail}"


# -- RESULTS.md --------------------------------------------------------------------------


@dataclass
class OnnxOutcome:
    """Everything one run produced."""

    plan: OnnxPlan
    max_rps: dict[int, float]  # --workers value -> no-candidate maximum (wrk, c=32)
    rows: list[Row]  # open-loop runs: config, mode, workers, level, rep, c (= level)
    meta: dict[str, str] = field(default_factory=dict)
    load: tuple[str, str] = ("?", "?")  # load averages before and after the run


def mode_label(mode: str) -> str:
    """What a mode means, for the table."""
    threads = mode_threads(mode)
    if threads is not None:
        return f'run = "proxy", threads {threads}'
    return 'run = "worker"' if mode == WORKER else "no candidate"


def _row_cells(out: OnnxOutcome, mode: str, workers: int, level: int) -> list[str]:
    config = config_name(mode, workers)
    rows = select(out.rows, config=config, level=level)
    p99 = [r["p99_ms"] for r in rows]
    ratio = paired_ratio(out.rows, config, config_name(OFF, workers), level, "p99_ms")
    rate = _med(rows, "rate")
    cells = [f"w{workers}", mode_label(mode), f"{fmt(rate, ',.0f')} ({level}%)"]
    cells += [fmt(_med(rows, "p50_ms")), fmt(median(p99)), fmt(ratio), fmt(spread(p99))]
    cells += [fmt(_med(rows, "p999_ms")), fmt(_med(rows, "shed_pct"), ".1f")]
    cells += [fmt(_med(rows, "failed_pct"), ".1f")]
    cells += [fmt(_med(rows, k), ".0f") for k in CPU_KEYS]
    cells += [fmt(cpu_us_per_request(rows), ".0f")]
    cells += [keeps_up(rows, out.plan.drain_s)]
    cells += [fmt(_med(rows, "lag_p99_ms")), str(sum(int(r.get("errors", 0)) for r in rows))]
    return cells


def table(out: OnnxOutcome) -> list[str]:
    """One line per (workers, rate level, mode): the primary's latency and who paid CPU."""
    lines = [
        "| serve | candidate | rate req/s (% of max) | p50 ms | p99 ms | p99 ÷ no candidate "
        "| p99 spread ms | p99.9 ms | shed % | cand. timeout+error % | SUT CPU % | worker CPU % "
        "| stub CPU % | Redis CPU % | generator CPU % | other CPU % | CPU µs/req (SUT+worker) "
        "| worker keeps up | generator late p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for workers in out.plan.workers:
        for level in out.plan.levels:
            for mode in out.plan.modes:
                lines.append("| " + " | ".join(_row_cells(out, mode, workers, level)) + " |")
    return lines


def p99_ratios(out: OnnxOutcome) -> dict[tuple[str, int, int], float]:
    """(mode, workers, level) -> median paired p99 ÷ the no-candidate p99 of the same repeat."""
    found = {}
    for workers in out.plan.workers:
        base = config_name(OFF, workers)
        for level in out.plan.levels:
            for mode in out.plan.modes[1:]:
                found[(mode, workers, level)] = paired_ratio(
                    out.rows, config_name(mode, workers), base, level, "p99_ms"
                )
    return found


def overloaded(out: OnnxOutcome) -> list[str]:
    """Lines whose median p50 shows queueing: beyond capacity at that moment, so their p99
    measures the queue (and the machine's other load), not what the candidate costs."""
    found = []
    for workers in out.plan.workers:
        for level in out.plan.levels:
            for mode in out.plan.modes:
                rows = select(out.rows, config=config_name(mode, workers), level=level)
                if _med(rows, "p50_ms") > OVERLOAD_P50_MS:
                    found.append(f"w{workers} {mode_label(mode)} at {level}%")
    return found


def machine_note(out: OnnxOutcome) -> str:
    """How loaded the machine was: load averages around the run, other processes' CPU."""
    other = _med(out.rows, "other_cpu")
    late = _med(out.rows, "lag_p99_ms")
    text = (
        f"Load average (1, 5, 15 min) before the run: {out.load[0]}; after: {out.load[1]}. "
        f"Processes this run did not start used {fmt(other, '.0f')}% CPU (median over runs)"
    )
    if not math.isnan(other) and other > BUSY_MACHINE_PCT:
        text += ": **the machine was not quiet**, absolute latencies are inflated"
    text += "."
    if not math.isnan(late) and late > GENERATOR_LATE_MS:
        text += f" The load generator itself ran late (median p99 {late:.1f} ms)."
    return text


def render(out: OnnxOutcome) -> str:
    """The whole onnx_bench section of RESULTS.md."""
    m, p = out.meta, out.plan
    mode = "QUICK SMOKE RUN (--quick): 1 repeat, 2 s — not a measurement" if p.quick else "full run"
    maxes = ", ".join(f"w{w}: {fmt(r, ',.0f')} req/s" for w, r in sorted(out.max_rps.items()))
    lines = [
        "## ONNX candidates: what each `run` mode costs the primary (benchmarks/onnx_bench.py)",
        "",
        f"{mode}; {m.get('date', '?')}, commit {m.get('commit', '?')}, took {m.get('took', '?')}.",
        f"Machine: {m.get('cores', '?')} cores ({m.get('cpu', '?')}), Python "
        f"{m.get('python', '?')}, onnxruntime {m.get('onnxruntime', '?')}. " + machine_note(out),
        "",
        f"Model: {m.get('model', '?')}. Request: one OIP v2 row of 30 FP32 features; the primary "
        "is the nginx stub answering a fixed OIP v2 label + probabilities body. Candidate "
        f"sample 1.0, `queue` {p.queue}, mirror_concurrency {p.mirror_concurrency}; pairs "
        "captured to Redis. Open loop (proxybench/openloop.py), latency from each request's "
        f"scheduled send time; median of {p.reps} interleaved runs of {p.rate_duration} s per "
        "line, p99 ratios paired per repeat. Rates are percentages of the no-candidate "
        f"proxy's own maximum (wrk, c={MAX_CONNS}, median of {p.max_reps} runs of "
        f"{p.max_duration} s): {maxes}.",
        "",
        "`SUT` is the `shadowtrial serve` process tree (all its workers, the ONNX threads of "
        '`run = "proxy"` included). `worker` is the one `shadowtrial worker` process each '
        "candidate configuration has, on the same 2 cores: it compares every pair, and with "
        '`run = "worker"` it also runs the model, in batches'
        + (
            ""
            if p.proxy_workers
            else ' (**--no-proxy-workers**: `run = "proxy"` configurations ran without one)'
        )
        + ". `CPU µs/req` is (SUT + worker) CPU per request sent. A worker keeps up when "
        f"it was at most {KEEP_UP_S:g} s behind the stream as the load stopped and then "
        f"caught up within {p.drain_s:g} s.",
        "",
        *table(out),
    ]
    late = overloaded(out)
    if late:
        lines += [
            "",
            f"Beyond capacity when measured (median p50 above {OVERLOAD_P50_MS:g} ms, so the "
            f"p99 is queueing, not the candidate's cost): {'; '.join(late)}.",
        ]
    return "\n".join(lines)
