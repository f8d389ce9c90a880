"""Pure functions: parse load-generator output, reduce runs to medians and ratios, judge targets.

Nothing here starts a process, so tests/test_benchmarks_harness.py covers it all quickly.
Ratios are computed per repeat (the configurations of one repeat ran back to back) and then
reduced to their median, so slow drift of the shared machine cancels out of the ratio.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]

START_MARKER = "<!-- proxy_bench:start -->"
END_MARKER = "<!-- proxy_bench:end -->"
WRK_ERROR_FIELDS = ("err_connect", "err_read", "err_write", "err_status", "err_timeout")


class HarnessError(RuntimeError):
    """A benchmark step failed in a way the operator must see (message says which step)."""


# -- parsing ---------------------------------------------------------------------------------


def parse_wrk_output(text: str) -> Row:
    """The `JSON {...}` line our post.lua prints at the end of a wrk run, with an error total."""
    for line in text.splitlines():
        if line.startswith("JSON "):
            try:
                row: Row = json.loads(line[5:])
            except json.JSONDecodeError as exc:
                raise HarnessError(f"wrk printed a malformed JSON line: {line!r}") from exc
            if "errors" not in row:  # wrk reports them by kind; openloop as a total
                row["errors"] = sum(int(row.get(k, 0)) for k in WRK_ERROR_FIELDS)
            return row
    tail = "\n".join(text.strip().splitlines()[-5:])
    raise HarnessError(f"wrk printed no JSON summary line; its output ended with:\n{tail}")


# -- reductions --------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float:
    """Median of the values that exist; NaN when there are none (shown as '-')."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(xs) if xs else math.nan


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def select(rows: Iterable[Row], **match: Any) -> list[Row]:
    """The rows whose fields equal every given value."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def summarize(rows: Sequence[Row]) -> Row:
    """Medians of one configuration's repeats (req/s, latencies, CPU) and the summed errors."""
    out: Row = {"n": len(rows), "errors": sum(int(r.get("errors", 0)) for r in rows)}
    for key in (
        "rps",
        "p50_ms",
        "p99_ms",
        "sut_cpu",
        "dispatcher_cpu",
        "stub_cpu",
        "redis_cpu",
        "gen_cpu",
        "other_cpu",
    ):
        out[key] = median(r.get(key) for r in rows)
    return out


def _by_rep(rows: Iterable[Row], config: str, c: int) -> dict[int, Row]:
    return {r["rep"]: r for r in rows if r["config"] == config and r["c"] == c}


def paired_ratio(rows: Sequence[Row], num: str, den: str, c: int, key: str = "rps") -> float:
    """Median over repeats of num/den, pairing the two configurations' runs of the same repeat."""
    a, b = _by_rep(rows, num, c), _by_rep(rows, den, c)
    return median(a[k][key] / b[k][key] for k in a.keys() & b.keys() if b[k][key])


def paired_difference(rows: Sequence[Row], num: str, den: str, c: int, key: str) -> float:
    """Median over repeats of num - den (e.g. added p50 latency in ms), paired by repeat."""
    a, b = _by_rep(rows, num, c), _by_rep(rows, den, c)
    return median(a[k][key] - b[k][key] for k in a.keys() & b.keys())


def spread(values: Iterable[float]) -> float:
    """Max minus min: the run-to-run noise seen among repeats (0 for a single run)."""
    xs = [v for v in values if not math.isnan(v)]
    return max(xs) - min(xs) if xs else math.nan


# -- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One goal from the issue: a measured value, the bound it must meet, and the verdict."""

    name: str
    value: float
    limit: float
    at_least: bool  # True: value >= limit passes; False: value <= limit passes
    stretch: float | None = None
    unit: str = "x"
    void: str | None = None  # why the measurement cannot be judged (verdict n/a)

    @property
    def verdict(self) -> str:
        """PASS / MISS, or n/a when the value could not be measured or judged."""
        if self.void is not None:
            return f"n/a ({self.void})"
        if math.isnan(self.value):
            return "n/a"
        ok = self.value >= self.limit if self.at_least else self.value <= self.limit
        if ok and self.stretch is not None and self.value >= self.stretch:
            return "PASS (stretch)"
        return "PASS" if ok else "MISS"

    def bound_text(self) -> str:
        """The bound as a person reads it, e.g. '>= 0.25x (stretch 0.30x)'."""
        op = ">=" if self.at_least else "<="
        text = f"{op} {self.limit:g}{self.unit}"
        return f"{text} (stretch {self.stretch:g}{self.unit})" if self.stretch is not None else text


def slow_candidate_noise(
    on_p99: Sequence[float], off_p99: Sequence[float], floor: float, floor_ms: float = 1.0
) -> float:
    """How far the slow-candidate p99 may move and still count as 'no change' (ms).

    The run-to-run spread of the mirror-on and mirror-off p99s measures noise; the floors
    (`floor` of the mirror-on median, and `floor_ms`: scheduling jitter on a shared 2-core
    machine) keep a single-repeat smoke run or a tiny p99 from demanding exactly 0.
    """
    noise = max(spread(on_p99) if on_p99 else 0.0, spread(off_p99) if off_p99 else 0.0)
    base = median(on_p99)
    relative = floor * (0.0 if math.isnan(base) else base)
    return max(0.0 if math.isnan(noise) else noise, relative, floor_ms)


# -- scheduling ------------------------------------------------------------------------------


def interleaved(
    configs: Sequence[str], conns: Sequence[int], reps: int
) -> list[tuple[int, int, str]]:
    """Run order (rep, c, config): every configuration once per (rep, c), order rotated per repeat.

    Rotating the order keeps any one configuration from always following the heaviest one.
    """
    order: list[tuple[int, int, str]] = []
    for rep in range(reps):
        shift = rep % len(configs) if configs else 0
        rotated = list(configs[shift:]) + list(configs[:shift])
        order += [(rep, c, name) for c in conns for name in rotated]
    return order


def estimate_seconds(
    throughput_runs: int,
    duration: float,
    latency_runs: int,
    latency_duration: float,
    rate_runs: int,
    rate_duration: float,
    gap: float,
    fixed_cost: float,
) -> float:
    """Wall time of a full run: load phases, pauses between runs, and start-up/warm-up."""
    runs = throughput_runs + latency_runs + rate_runs
    load = throughput_runs * duration + latency_runs * latency_duration + rate_runs * rate_duration
    return load + runs * gap + fixed_cost


# -- RESULTS.md ------------------------------------------------------------------------------


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of one script's section (`proxy_bench`, `onnx_bench`)."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(text: str | None, body: str, name: str = "proxy_bench") -> str:
    """Put `body` between the `name` markers, keeping everything outside them byte for byte.

    No file: a new one with a title. No markers: the section is appended. A start marker
    without an end marker is refused rather than guessing where our section stops.
    """
    start_marker, end_marker = markers(name)
    block = f"{start_marker}\n{body.strip()}\n{end_marker}"
    if text is None:
        return f"# Benchmark results\n\n{block}\n"
    start = text.find(start_marker)
    if start < 0:
        sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return f"{text}{sep}{block}\n"
    end = text.find(end_marker, start)
    if end < 0:
        raise HarnessError(f"RESULTS.md has {start_marker} but no {end_marker}; fix it by hand")
    return text[:start] + block + text[end + len(end_marker) :]


def fmt(value: float, spec: str = ".2f", dash: str = "-") -> str:
    """Format a number, or a dash for a value that was not measured."""
    return dash if value is None or math.isnan(value) else format(value, spec)
