"""What the ONNX benchmark (benchmarks/onnx_bench.py) measures, and how long that takes.

Configurations are `<mode>-w<workers>`: `off` (no candidate), `proxy-t1` / `proxy-t2` (an
ONNX candidate with `run = "proxy"` and `threads` 1 / 2) and `worker` (`run = "worker"`:
the `shadowtrial worker` beside the proxy runs the model off the hot path). Every candidate
configuration has its own worker (unless --no-proxy-workers): with `run = "proxy"` it only
compares the pairs, which every deployment needs, so the modes differ only in where the
model runs. Rates are per `--workers` value: `levels` percent of that proxy's own
no-candidate maximum.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from proxybench.results import estimate_seconds

OFF, WORKER = "off", "worker"
STARTUP_S = 45.0  # model built, 8 servers and 6 workers up, then stopped: on the busy machine
MAX_CONNS = 32  # wrk -c of the no-candidate maximum (as the proxy benchmark's rate phase)


def proxy_mode(threads: int) -> str:
    """The mode name of a `run = "proxy"` candidate with `threads` threads."""
    return f"proxy-t{threads}"


def config_name(mode: str, workers: int) -> str:
    """One shadowtrial instance: a candidate mode under `serve --workers N`."""
    return f"{mode}-w{workers}"


def split_config(config: str) -> tuple[str, int]:
    """(mode, workers) of a configuration name."""
    mode, _, workers = config.rpartition("-w")
    return mode, int(workers)


def mode_threads(mode: str) -> int | None:
    """The `threads` of a proxy mode; None for `off` and `worker`."""
    return int(mode.removeprefix("proxy-t")) if mode.startswith("proxy-t") else None


@dataclass(frozen=True)
class OnnxPlan:
    """The parsed command line. Also carries what proxybench.bench.Bench reads from a plan."""

    reps: int
    rate_duration: int  # measured seconds per open-loop run
    rate_warmup: float  # unrecorded seconds before them
    workers: tuple[int, ...]
    threads: tuple[int, ...]
    levels: tuple[int, ...]  # percent of the no-candidate maximum
    max_duration: int  # seconds per wrk run of the maximum
    max_reps: int
    warmup: int  # seconds of wrk per configuration before measuring
    gap: float
    drain_s: float  # how long a worker may take to catch up after a run
    trees: int
    queue: int
    mirror_concurrency: int
    proxy_workers: bool  # a comparison worker for run = "proxy" configurations too
    quick: bool
    write: bool

    @property
    def main_workers(self) -> int:
        """Bench.measure asks for it (its slow-candidate column): the first --workers."""
        return self.workers[0]

    @property
    def modes(self) -> list[str]:
        """Candidate modes in table order."""
        return [OFF, *(proxy_mode(t) for t in self.threads), WORKER]

    def configs(self) -> list[str]:
        """Every shadowtrial instance, grouped by --workers value."""
        return [config_name(m, w) for w in self.workers for m in self.modes]

    def worker_configs(self) -> list[str]:
        """Configurations with a `shadowtrial worker` of their own."""
        wanted = [m for m in self.modes if m != OFF and (m == WORKER or self.proxy_workers)]
        return [config_name(m, w) for w in self.workers for m in wanted]

    def estimate(self) -> float:
        """Expected wall time in seconds."""
        per_run = self.rate_duration + self.rate_warmup + 0.8  # generator start, scrapes
        return estimate_seconds(
            throughput_runs=len(self.workers) * self.max_reps,
            duration=self.max_duration,
            latency_runs=len(self.configs()),  # the warm-up
            latency_duration=self.warmup,
            rate_runs=len(self.configs()) * len(self.levels) * self.reps,
            rate_duration=per_run,
            gap=self.gap,
            fixed_cost=STARTUP_S,
        )


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    """The command line of onnx_bench.py."""
    ap = argparse.ArgumentParser(
        prog="onnx_bench.py",
        description="What an ONNX candidate (run = proxy | worker) costs the primary's latency.",
    )
    ap.add_argument("--reps", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--duration", type=int, default=4, help="seconds per fixed-rate run (4)")
    ap.add_argument("--workers", type=_int_list, default=(1, 2), help="serve --workers (1,2)")
    ap.add_argument("--threads", type=_int_list, default=(1, 2), help="run=proxy threads (1,2)")
    ap.add_argument(
        "--levels", type=_int_list, default=(10, 25), help="rates, %% of the max (10,25)"
    )
    ap.add_argument("--trees", type=int, default=100, help="random forest size (100)")
    ap.add_argument("--queue", type=int, default=64, help="run=proxy queue (default 64)")
    ap.add_argument("--mirror-concurrency", type=int, default=256, help="[proxy] value (256)")
    ap.add_argument(
        "--no-proxy-workers",
        action="store_true",
        help='no comparison worker for run = "proxy" configurations',
    )
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 2 s runs")
    return ap


def plan_from_args(argv: list[str] | None = None) -> OnnxPlan:
    """Parse the command line; --quick overrides repeats and durations."""
    a = parser().parse_args(argv)
    if a.reps < 1 or a.duration < 1 or a.trees < 1 or a.queue < 1:
        parser().error("--reps, --duration, --trees and --queue must be at least 1")
    if any(level > 100 for level in a.levels):
        parser().error("--levels are percentages of the maximum: at most 100")
    quick = bool(a.quick)
    return OnnxPlan(
        reps=1 if quick else a.reps,
        rate_duration=2 if quick else a.duration,
        rate_warmup=0.5,
        workers=a.workers,
        threads=a.threads,
        levels=a.levels,
        max_duration=2 if quick else 3,
        max_reps=1 if quick else 2,
        warmup=1,
        gap=0.3,
        drain_s=10.0,
        trees=a.trees,
        queue=a.queue,
        mirror_concurrency=a.mirror_concurrency,
        proxy_workers=not a.no_proxy_workers,
        quick=quick,
        write=not a.no_write,
    )
