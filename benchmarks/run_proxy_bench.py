"""Benchmark `shadowtrial serve` against nginx's `mirror` on this machine (`make bench`).

Starts a fixed-JSON nginx upstream, nginx with `mirror`, and shadowtrial with and without a
candidate, all together; runs wrk interleaved across them, then a c=1 latency series and
an open-loop fixed-rate series; writes medians, ratios and PASS/MISS against the issue's
targets into benchmarks/RESULTS.md (between the proxy_bench markers). Every process it
starts is stopped by PID on exit, Ctrl-C included. See benchmarks/README.md.

    python benchmarks/run_proxy_bench.py            # full run (about 14 minutes)
    python benchmarks/run_proxy_bench.py --quick    # smoke run (about 1 minute)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from proxybench import report, tools
from proxybench.bench import Bench, log
from proxybench.plan import Plan, plan_from_args
from proxybench.results import HarnessError, replace_section

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
WORK_ROOT = BENCH_DIR / ".work"
KEEP_WORK_DIRS = 5


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def make_work_dir() -> Path:
    """A fresh folder under benchmarks/.work (git-ignored); older ones beyond a few are removed."""
    WORK_ROOT.mkdir(exist_ok=True)
    old = sorted(p for p in WORK_ROOT.iterdir() if p.is_dir())
    for path in old[: max(0, len(old) - KEEP_WORK_DIRS + 1)]:
        shutil.rmtree(path, ignore_errors=True)
    work = WORK_ROOT / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir()
    return work


def commit() -> str:
    """Short commit of the tree being measured, marked when it has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=BENCH_DIR, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git(
        "status", "--porcelain", "--untracked-files=no", "--", "proxy", "common", "shadowtrial"
    )
    return f"{head}{' + uncommitted proxy changes' if dirty else ''}"


def measure(plan: Plan, work: Path, paths: dict[str, str]) -> report.Outcome:
    """Run every phase with all servers up; the servers stop when this returns or raises."""
    clock = PhaseClock()
    with Bench(plan, work, paths) as bench:
        bench.start()
        clock.lap("servers up")
        bench.warm_up()
        clock.lap("warm-up")
        rows = bench.series(plan.throughput_configs(), plan.conns, plan.duration, "throughput")
        clock.lap("throughput")
        rows += bench.series(plan.latency_configs(), (1,), plan.latency_duration, "latency")
        clock.lap("c=1")
        rate = plan.rate or 0.5 * bench.max_rate(rows)
        if math.isnan(rate) or rate <= 0:
            raise HarnessError("full shadowing measured no throughput: cannot pick a fixed rate")
        rate_rows = bench.fixed_rate(rate)
        clock.lap("fixed rate")
        found, profile_rps = bench.profile() if plan.profile else (None, math.nan)
        bench.collect()
        clock.lap("profile")
    clock.lap("stop")
    log(f"phases: {clock}")
    outcome = report.Outcome(plan, rows, rate_rows, rate, {}, found, profile_rps)
    outcome.captured, outcome.metrics = bench.captured, bench.metrics
    return outcome


class PhaseClock:
    """Seconds each phase took, to keep the runtime estimate honest."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        """Close the phase that just ended."""
        now = time.monotonic()
        self.laps.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.laps)


def write_results(text: str) -> None:
    """Replace our section of RESULTS.md, keeping the rest of the file as it is."""
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else None
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(replace_section(old, text), encoding="utf-8")
    os.replace(tmp, RESULTS)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, check tools, measure, judge, write; exit 1 on a harness failure."""
    plan = plan_from_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    log(f"estimated wall time: {plan.estimate() / 60:.1f} min")
    started = time.monotonic()
    try:
        paths = tools.ensure_tools()
        meta = tools.tool_versions(paths)
        work = make_work_dir()
        log(f"work folder (configs, logs, raw results): {work}")
        outcome = measure(plan, work, paths)
    except HarnessError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every server this run started has been stopped")
        return 130
    took = time.monotonic() - started
    meta.update(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        commit=commit(),
        took=f"{took / 60:.1f} min",
    )
    outcome.meta = meta
    found = report.targets(outcome)
    text = report.render(outcome, found)
    (work / "results.md").write_text(text + "\n", encoding="utf-8")
    with (work / "runs.jsonl").open("w", encoding="utf-8") as fh:
        for row in outcome.rows + outcome.rate_rows:
            fh.write(json.dumps(row) + "\n")
    if plan.write:
        write_results(text)
        log(f"wrote the proxy_bench section of {RESULTS}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
