"""The targets from the issue and the markdown section written into benchmarks/RESULTS.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxybench import plan as names
from proxybench import profile as prof
from proxybench.plan import Plan
from proxybench.results import (
    Row,
    Target,
    fmt,
    median,
    paired_difference,
    paired_ratio,
    select,
    slow_candidate_noise,
    spread,
    summarize,
)

CPU_KEYS = ("sut_cpu", "dispatcher_cpu", "stub_cpu", "redis_cpu", "gen_cpu", "other_cpu")
BUSY_MACHINE_PCT = 10.0  # median CPU % of processes we did not start above this: not quiet
SLOW_NOISE_FLOOR = 0.10  # a single-repeat run still allows 10% of the mirror-on p99
GENERATOR_LATE_MS = 5.0  # open-loop sends later than this (p99): the generator was starved


@dataclass
class Outcome:
    """Everything one run produced, ready to be judged and written."""

    plan: Plan
    rows: list[Row]  # wrk runs: throughput phase and the c=1 phase
    rate_rows: list[Row]  # open-loop runs; c is 0
    rate: float
    meta: dict[str, str]
    profile: prof.Profile | None = None
    profile_rps: float = math.nan
    captured: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)


def targets(out: Outcome) -> list[Target]:
    """The issue's goals, judged on the first --workers value."""
    w = out.plan.main_workers
    found = [
        Target(
            f"full shadowing ÷ nginx-mirror req/s, c={c}",
            paired_ratio(out.rows, names.full(w), names.NGINX_MIRROR, c),
            0.60,  # issue 14 (was 0.25, stretch 0.30)
            True,
        )
        for c in out.plan.conns
    ]
    if out.plan.dispatcher:  # run = "dispatcher": the proxy only captures, a dispatcher calls
        found += [
            Target(
                f"dispatcher-mode shadowing ÷ nginx-mirror req/s, c={c}",
                paired_ratio(out.rows, names.dispatched(w), names.NGINX_MIRROR, c),
                0.60,
                True,
            )
            for c in out.plan.conns
        ]
    # No target on full ÷ off any more (the tables keep the column): with the native data
    # port forwarding costs a third of what it did, and a ratio to it would punish that.
    if out.plan.watch:
        found += [
            Target(
                f"100% watch ÷ full shadowing req/s, c={c}",
                paired_ratio(out.rows, names.watch(w), names.full(w), c),
                0.90,
                True,
            )
            for c in out.plan.conns
        ]
    c1_rows = select(out.rows, phase="latency")
    added = paired_difference(c1_rows, names.full(w), names.DIRECT, 1, "p50_ms")
    found.append(
        Target("added p50 at c=1 over direct (full shadowing)", added, 1.0, False, unit=" ms")
    )
    found += rate_targets(out.rate_rows, w)
    if out.plan.dispatcher:
        found += rate_targets(out.rate_rows, w, dispatched=True)
    return found


def rate_targets(rate_rows: Sequence[Row], workers: int, dispatched: bool = False) -> list[Target]:
    """Fixed-rate goals (issue 14): the mirror moves p99 by at most 20% (on <= 1.2x off); a slow
    candidate not beyond noise. `dispatched`: the same with the candidates called by a
    dispatcher (run = "dispatcher")."""
    on, off, slow = names.full(workers), names.off(workers), names.slow(workers)
    mode = ""
    if dispatched:
        on, slow = names.dispatched(workers), names.slow_dispatched(workers)
        mode = ", dispatcher mode"
    change = abs(paired_ratio(rate_rows, on, off, 0, "p99_ms") - 1) * 100
    p99 = {k: [r["p99_ms"] for r in select(rate_rows, config=k)] for k in (on, off)}
    allowed = slow_candidate_noise(p99[on], p99[off], SLOW_NOISE_FLOOR)
    moved = abs(paired_difference(rate_rows, slow, on, 0, "p99_ms"))
    late = median(r.get("lag_p99_ms") for r in rate_rows)
    void = f"load generator late by {late:.0f} ms" if late > GENERATOR_LATE_MS else None
    return [
        Target(
            f"fixed rate{mode}: primary p99 change by the mirror",
            change,
            20.0,
            False,
            unit=" %",
            void=void,
        ),
        Target(
            f"fixed rate{mode}: primary p99 change by a slow candidate (vs mirror on)",
            moved,
            allowed,
            False,
            unit=" ms",
            void=void,
        ),
    ]


def _target_table(found: list[Target]) -> list[str]:
    out = ["| target | measured | bound | verdict |", "|---|---:|---|---|"]
    for t in found:
        unit = t.unit if t.unit != "x" else "x"
        out.append(f"| {t.name} | {fmt(t.value)}{unit} | {t.bound_text()} | **{t.verdict}** |")
    return out


def _throughput_table(out: Outcome, c: int) -> list[str]:
    rows = select(out.rows, c=c, phase="throughput")
    head = [
        f"#### c={c} (median of {out.plan.reps} interleaved runs of {out.plan.duration} s)",
        "",
        "| configuration | req/s | ÷ nginx-mirror | ÷ off (same workers) | p50 ms | p99 ms "
        "| SUT CPU % | dispatcher CPU % | stub CPU % | Redis CPU % | wrk CPU % | other CPU % "
        "| SUT CPU µs/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in out.plan.throughput_configs():
        s = summarize(select(rows, config=config))
        vs_mirror = paired_ratio(rows, config, names.NGINX_MIRROR, c)
        vs_off = math.nan
        if config.startswith("shadowtrial-full-w"):
            vs_off = paired_ratio(rows, config, config.replace("-full-", "-off-"), c)
        cells = [config, fmt(s["rps"], ",.0f"), fmt(vs_mirror), fmt(vs_off), fmt(s["p50_ms"])]
        cells += [fmt(s["p99_ms"])] + [fmt(s[k], ".0f") for k in CPU_KEYS]
        cells += [fmt(cpu_us_per_request(s), ".0f"), str(s["errors"])]
        head.append(_cells(cells))
    return head


def _cells(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _med(rows: Sequence[Row], key: str) -> float:
    return median(r.get(key) for r in rows)


def cpu_us_per_request(summary: Row) -> float:
    """CPU microseconds the system under test spent per request (SUT CPU % / req/s)."""
    if not summary.get("rps") or math.isnan(summary["rps"]):
        return math.nan
    return summary["sut_cpu"] / 100 / summary["rps"] * 1e6


def _latency_table(out: Outcome) -> list[str]:
    rows = select(out.rows, c=1, phase="latency")
    table = [
        f"#### c=1: added latency (median of {out.plan.reps} runs of "
        f"{out.plan.latency_duration} s, differences paired per repeat)",
        "",
        "| configuration | p50 ms | p99 ms | +p50 vs direct ms | +p99 vs direct ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for config in out.plan.latency_configs():
        s = summarize(select(rows, config=config))
        d50 = paired_difference(rows, config, names.DIRECT, 1, "p50_ms")
        d99 = paired_difference(rows, config, names.DIRECT, 1, "p99_ms")
        table.append(
            f"| {config} | {fmt(s['p50_ms'], '.3f')} | {fmt(s['p99_ms'], '.3f')} "
            f"| {fmt(d50, '+.3f')} | {fmt(d99, '+.3f')} |"
        )
    return table


def _rate_table(out: Outcome) -> list[str]:
    w = out.plan.main_workers
    table = [
        f"#### Fixed rate {out.rate:,.0f} req/s, open loop (median of {out.plan.reps} runs of "
        f"{out.plan.rate_duration} s; latency from each request's scheduled send time)",
        "",
        "| primary path | p50 ms | p99 ms | p99.9 ms | p99 ÷ mirror-off | p99 spread ms "
        "| SUT CPU % | dispatcher CPU % | generator CPU % | other CPU % | errors "
        "| generator late p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, config in out.plan.rate_modes():
        rows = select(out.rate_rows, config=config)
        ratio = paired_ratio(out.rate_rows, config, names.off(w), 0, "p99_ms")
        p99 = [r["p99_ms"] for r in rows]
        cells = [f"{mode} ({config})", fmt(_med(rows, "p50_ms")), fmt(median(p99))]
        cells += [fmt(_med(rows, "p999_ms")), fmt(ratio), fmt(spread(p99))]
        keys = ("sut_cpu", "dispatcher_cpu", "gen_cpu", "other_cpu")
        cells += [fmt(_med(rows, k), ".0f") for k in keys]
        cells += [str(sum(r["errors"] for r in rows)), fmt(_med(rows, "lag_p99_ms"))]
        table.append(_cells(cells))
    return table


def limits(out: Outcome) -> list[str]:
    """Plain sentences from the CPU accounting: who used the cores at the proxy's maximum."""
    cores = int(out.meta.get("cores", "2") or 2)
    w = out.plan.main_workers
    lines = []
    for c in out.plan.conns:
        rows = select(out.rows, c=c, phase="throughput")
        full = summarize(select(rows, config=names.full(w)))
        mirror = summarize(select(rows, config=names.NGINX_MIRROR))
        total = sum(full[k] for k in CPU_KEYS if not math.isnan(full[k]))
        per_req, per_req_nginx = cpu_us_per_request(full), cpu_us_per_request(mirror)
        lines.append(
            f"- c={c}: {names.full(w)} used {fmt(full['sut_cpu'], '.0f')}% CPU, the stub "
            f"{fmt(full['stub_cpu'], '.0f')}%, Redis {fmt(full['redis_cpu'], '.0f')}%, wrk "
            f"{fmt(full['gen_cpu'], '.0f')}%, processes this run did not start "
            f"{fmt(full['other_cpu'], '.0f')}%: {total:.0f}% of the {cores * 100}% the machine has"
            f"{' (saturated)' if total >= 0.85 * cores * 100 else ''}. The proxy spends "
            f"{fmt(per_req, '.0f')} µs of CPU per request against nginx-mirror's "
            f"{fmt(per_req_nginx, '.0f')} µs ({fmt(_ratio(per_req, per_req_nginx), '.1f')}x)."
        )
    return lines


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _profile_section(out: Outcome) -> list[str]:
    if out.profile is None:
        return [
            "",
            "No profile: py-spy is not installed (`.venv/bin/pip install py-spy`) or --no-profile.",
        ]
    w = out.plan.main_workers
    return [
        "",
        f"py-spy profile of {names.full(w)} (all workers, {out.profile.samples} samples, idle "
        f"excluded) during a separate wrk run at c={out.plan.rate_conns} "
        f"({fmt(out.profile_rps, ',.0f')} req/s while sampled):",
        "",
        *prof.render(out.profile),
    ]


def quiet_machine(out: Outcome) -> list[str]:
    """A warning when other processes used the CPU while we measured (numbers then skew)."""
    other = median(r.get("other_cpu", math.nan) for r in out.rows + out.rate_rows)
    if math.isnan(other) or other <= BUSY_MACHINE_PCT:
        return [f"The machine was quiet: other processes used {fmt(other, '.0f')}% CPU (median)."]
    return [
        f"**The machine was not quiet**: processes this run did not start used {other:.0f}% CPU "
        "(median over runs); these numbers understate what the proxy can do. Rerun when idle."
    ]


def _extras(out: Outcome) -> list[str]:
    lines = []
    if out.captured:
        streams = ", ".join(f"`{k}`: {v:,}" for k, v in sorted(out.captured.items()))
        lines.append(f"Pair streams at the end (capped at about max_pairs): {streams}.")
    else:
        lines.append("**No pair stream was found in Redis: capture did not happen.**")
    for name, text in out.metrics.items():
        picked = [ln for ln in text.splitlines() if _interesting(ln)]
        if picked:
            lines += [
                "",
                f"<details><summary>{name} /metrics (mirror, capture, shed)</summary>",
                "",
                "```",
                *picked[:40],
                "```",
                "</details>",
            ]
    return lines


def _interesting(line: str) -> bool:
    if line.startswith("#") or not line.strip():
        return False
    series, _, value = line.rpartition(" ")
    name = series.split("{", 1)[0]
    keep = any(k in name for k in ("mirror", "capture", "shed", "spool", "drop"))
    return keep and not name.endswith(("_created", "_bucket")) and value not in ("0", "0.0")


def render(out: Outcome, found: list[Target]) -> str:
    """The whole RESULTS.md section (between our markers)."""
    m, p = out.meta, out.plan
    mode = "QUICK SMOKE RUN (--quick): 1 repeat, 3 s — not a measurement" if p.quick else "full run"
    lines = [
        "## Proxy throughput and latency (`make bench` → benchmarks/run_proxy_bench.py)",
        "",
        f"{mode}; {m.get('date', '?')}, commit {m.get('commit', '?')}, took {m.get('took', '?')}.",
        f"Machine: {m.get('cores', '?')} cores ({m.get('cpu', '?')}); nginx {m.get('nginx', '?')}, "
        f"wrk {m.get('wrk', '?')}, Python {m.get('python', '?')}. Load generator, stubs, Redis and "
        "proxies share these cores, so read the ratios; absolute req/s only hold for this machine.",
        f"Settings: --reps {p.reps} --duration {p.duration} --conns {','.join(map(str, p.conns))} "
        f"--workers {','.join(map(str, p.workers))}; candidate sample 1.0, mirror_concurrency "
        f"{p.mirror_concurrency}, slow candidate {p.slow_ms:g} ms.",
        "",
        "### Targets",
        "",
        *quiet_machine(out),
        "",
        *_target_table(found),
        "",
        "### Throughput (wrk, 1 thread, fixed JSON POST)",
    ]
    for c in p.conns:
        lines += ["", *_throughput_table(out, c)]
    lines += ["", *_latency_table(out), "", *_rate_table(out), "", "### What limits it", ""]
    lines += [*limits(out), *_profile_section(out), "", *_extras(out)]
    return "\n".join(lines)
