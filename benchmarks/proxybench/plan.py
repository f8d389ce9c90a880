"""What one run measures: configurations, repeats, durations, and how long that takes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from proxybench.results import estimate_seconds

DIRECT = "direct"
NGINX_MIRROR = "nginx-mirror"
STARTUP_S = 18.0  # servers up and answering, then stopped: measured on the busy 2-core machine


def off(workers: int) -> str:
    """shadowtrial with no candidate: forwarding only."""
    return f"shadowtrial-off-w{workers}"


def full(workers: int) -> str:
    """shadowtrial with one candidate at sample 1.0 and capture to Redis."""
    return f"shadowtrial-full-w{workers}"


def slow(workers: int) -> str:
    """Like `full`, but the candidate answers after the slow delay."""
    return f"shadowtrial-slowcand-w{workers}"


def watch(workers: int) -> str:
    """shadowtrial with no candidate and `[watch] sample = 1.0`: every request watched."""
    return f"shadowtrial-watch-w{workers}"


def dispatched(workers: int) -> str:
    """Like `full`, but the candidate is called by a `shadowtrial dispatch` process."""
    return f"shadowtrial-dispatch-w{workers}"


def slow_dispatched(workers: int) -> str:
    """Like `slow`, but the slow candidate is called by a dispatcher."""
    return f"shadowtrial-slowdispatch-w{workers}"


@dataclass(frozen=True)
class Plan:
    """The parsed command line: everything that decides what is run and for how long."""

    reps: int
    duration: int
    conns: tuple[int, ...]
    workers: tuple[int, ...]
    latency_duration: int
    rate_duration: int
    rate_warmup: float
    warmup: int
    gap: float
    rate: float | None
    slow_ms: float
    mirror_concurrency: int
    profile: bool
    quick: bool
    write: bool
    watch: bool = False  # --watch: add shadowtrial-watch-wN (issue 15: within 10% of full)
    dispatcher: bool = False  # also measure run = "dispatcher" (--dispatcher)

    @property
    def main_workers(self) -> int:
        """The worker count the targets are judged on (the first of --workers)."""
        return self.workers[0]

    @property
    def rate_conns(self) -> int:
        """The concurrency whose full-shadowing maximum sets the fixed rate (32 if measured)."""
        return 32 if 32 in self.conns else self.conns[0]

    def throughput_configs(self) -> list[str]:
        """Configurations run at every --conns value."""
        names = [DIRECT, NGINX_MIRROR]
        for w in self.workers:
            names += [off(w), full(w)] + ([watch(w)] if self.watch else [])
            if self.dispatcher:
                names.append(dispatched(w))
        return names

    def latency_configs(self) -> list[str]:
        """Configurations run at c=1 for the added-latency comparison."""
        return [DIRECT, NGINX_MIRROR, off(self.main_workers), full(self.main_workers)]

    def rate_modes(self) -> list[tuple[str, str]]:
        """(mode, configuration) pairs of the fixed-rate phase."""
        w = self.main_workers
        modes = [("mirror-off", off(w)), ("mirror-on", full(w)), ("slow-candidate", slow(w))]
        if self.dispatcher:
            modes += [("dispatched", dispatched(w)), ("slow-dispatched", slow_dispatched(w))]
        return modes

    def all_configs(self) -> list[str]:
        """Every configuration measured in some phase, each once."""
        found = self.throughput_configs() + [config for _, config in self.rate_modes()]
        return list(dict.fromkeys(found))

    def shadowtrial_instances(self) -> list[tuple[str, int, str | None]]:
        """(name, workers, candidate kind) of every shadowtrial server to start."""
        out: list[tuple[str, int, str | None]] = []
        for w in self.workers:
            out += [(off(w), w, None), (full(w), w, "fast")]
            if self.watch:
                out.append((watch(w), w, "watch"))
            if self.dispatcher:
                out.append((dispatched(w), w, "fast-dispatch"))
        out.append((slow(self.main_workers), self.main_workers, "slow"))
        if self.dispatcher:
            out.append((slow_dispatched(self.main_workers), self.main_workers, "slow-dispatch"))
        return out

    def estimate(self) -> float:
        """Expected wall time in seconds."""
        return estimate_seconds(
            throughput_runs=len(self.throughput_configs()) * len(self.conns) * self.reps,
            duration=self.duration,
            latency_runs=len(self.latency_configs()) * self.reps,
            latency_duration=self.latency_duration,
            rate_runs=len(self.rate_modes()) * self.reps,
            rate_duration=self.rate_duration + self.rate_warmup + 0.5,  # + generator start-up
            gap=self.gap,
            fixed_cost=STARTUP_S
            + len(self.all_configs()) * (self.warmup + self.gap)
            + (self.duration if self.profile else 0),
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
    """The command line of run_proxy_bench.py."""
    ap = argparse.ArgumentParser(
        prog="run_proxy_bench.py",
        description="Throughput and latency of shadowtrial serve against nginx's mirror.",
    )
    ap.add_argument("--reps", type=int, default=5, help="interleaved repeats (default 5)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--conns", type=_int_list, default=(32, 128), help="wrk -c values (32,128)")
    ap.add_argument(
        "--workers",
        type=_int_list,
        default=(2, 1),
        help="serve --workers values; targets use the first (default 2,1)",
    )
    ap.add_argument("--latency-duration", type=int, default=3, help="seconds per c=1 run (3)")
    ap.add_argument("--rate-duration", type=int, default=6, help="seconds per fixed-rate run (6)")
    ap.add_argument("--rate", type=float, default=None, help="fixed rate (default: half max)")
    ap.add_argument("--slow-ms", type=float, default=500.0, help="slow candidate delay (500)")
    ap.add_argument("--mirror-concurrency", type=int, default=256, help="[proxy] value (256)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 rep, 3 s, c=32 only")
    ap.add_argument(
        "--watch", action="store_true",
        help="also measure shadowtrial-watch-wN: no candidate, every request watched",
    )  # fmt: skip
    ap.add_argument(
        "--dispatcher",
        action="store_true",
        help='also measure run = "dispatcher" (a shadowtrial dispatch process per instance)',
    )
    return ap


def plan_from_args(argv: list[str] | None = None) -> Plan:
    """Parse the command line; --quick overrides reps, durations and concurrencies."""
    a = parser().parse_args(argv)
    if a.reps < 1 or a.duration < 1:
        parser().error("--reps and --duration must be at least 1")
    quick = bool(a.quick)
    return Plan(
        reps=1 if quick else a.reps,
        duration=3 if quick else a.duration,
        conns=(32,) if quick else a.conns,
        workers=a.workers,
        latency_duration=3 if quick else a.latency_duration,
        rate_duration=3 if quick else a.rate_duration,
        rate_warmup=1.0,
        warmup=1 if quick else 2,
        gap=0.3,
        rate=a.rate,
        slow_ms=a.slow_ms,
        mirror_concurrency=a.mirror_concurrency,
        profile=not a.no_profile,
        quick=quick,
        write=not a.no_write,
        watch=bool(a.watch),
        dispatcher=bool(a.dispatcher),
    )
