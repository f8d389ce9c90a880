"""`shadowtrial demo`: the whole story on one machine, with an embedded Redis."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shadowtrial.commands import positive_int


def _seconds(text: str) -> float:
    """argparse type for --duration: seconds, or a duration such as 30s or 5m."""
    from common.settings import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: Any) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="the whole story on this machine: models, proxy, workers, traffic, report, web page",
        description="Start an embedded Redis, three model servers, the proxy and two workers "
        "on free loopback ports; train a primary and a candidate on a real survey; send "
        "traffic with late ground truth; print the report and the gate's verdict; serve the "
        "web page until Ctrl-C. Everything it starts is stopped on exit.",
    )
    parser.add_argument(
        "--candidate",
        choices=["flawed", "good"],
        default="flawed",
        help="which v2 is on trial: the one with a silent training/serving skew "
        "(default), or one trained right",
    )
    parser.add_argument(
        "--scenario",
        choices=["classifier", "llm", "canary", "drift"],
        default="classifier",
        help="classifier: the survey models (default); llm: two small local text models, "
        "the candidate rewording answers and wrong on one topic, judged by meaning; canary: "
        "shadow, then a canary plan, a regression planted at a step, automatic rollback; drift: "
        "no candidate, the live model watched against its training profile while the traffic "
        "shifts (a category training never saw, an older population)",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        metavar="S",
        help="after the report, keep serving for S seconds (30, 2m), then stop",
    )
    when.add_argument("--no-wait", action="store_true", help="stop right after printing the report")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="work in DIR and keep it (config, logs, models, reports, pids.json) "
        "instead of a temporary folder removed at the end",
    )
    parser.add_argument(
        "--requests",
        type=positive_int,
        default=3000,
        metavar="N",
        help="requests to send through the proxy (default: 3000)",
    )
    parser.add_argument(
        "--dispatch",
        action="store_true",
        help='call the HTTP candidate from a `shadowtrial dispatch` process (run = "dispatcher") '
        "instead of the proxy",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; the exit code."""
    from shadowtrial.demo.run import Options, run_demo

    options = Options(
        candidate=args.candidate,
        duration=args.duration,
        no_wait=args.no_wait,
        keep=args.keep,
        requests=args.requests,
        dispatch=args.dispatch,
    )
    if args.scenario == "llm":
        from shadowtrial.demo.llm import LlmDemo

        return run_demo(options, demo_class=LlmDemo)
    if args.scenario == "drift":
        from shadowtrial.demo.drift import DriftDemo

        return run_demo(options, demo_class=DriftDemo)
    if args.scenario == "canary":
        from shadowtrial.demo.canary import CanaryDemo

        return run_demo(options, demo_class=CanaryDemo)
    return run_demo(options)
