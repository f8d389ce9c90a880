"""`shadowtrial report NAME [--window 1h] [--json]`: a candidate's evidence in the terminal.

Asks the admin API (GET /v1/candidates/NAME/report) so the numbers are the ones the web
page and the gate see. Exit codes: 0 printed, 2 usage or connection errors (bad window,
unknown candidate, admin API unreachable or refusing).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shadowtrial.admin_client import add_admin_options


def window_arg(text: str) -> str:
    """argparse type: a duration such as 15m, 1h, 2d, or `trial` (the whole trial)."""
    from common.settings import parse_duration

    if text.strip().lower() == "trial":
        return "trial"
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def register(subparsers: Any) -> None:
    """Add the `report` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="print a candidate's report: agreement, slices, confidence, latency, gate",
        description="Fetch the report from the admin API and print it as tables, or as JSON.",
    )
    parser.add_argument("name", metavar="NAME", help="the candidate")
    parser.add_argument(
        "--window",
        type=window_arg,
        default="1h",
        help="how far back: 15m, 1h, 6h, 2d, ... or `trial` for the whole trial (default: 1h)",
    )
    add_admin_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Fetch the report; print it; 0 on success (errors raise AdminError: exit code 2)."""
    from shadowtrial.admin_client import client_from_args

    with client_from_args(args) as client:
        report = client.report(args.name, args.window)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console

    from shadowtrial.render import render_report

    render_report(report, Console(highlight=False, soft_wrap=False))
    return 0
