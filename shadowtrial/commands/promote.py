"""`shadowtrial promote NAME [--force]`: make a candidate the primary, through the admin API.

Exit codes: 0 promoted, 1 refused (the gate says no, or it cannot be the primary), 2 usage
or connection errors (unknown candidate, bad token, admin API unreachable).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.markup import escape

from common.sanitize import printable
from shadowtrial.admin_client import add_admin_options

EXIT_OK = 0
EXIT_REFUSED = 1
VERDICT_STYLE = {"pass": "green", "fail": "red", "insufficient": "yellow"}


def register(subparsers: Any) -> None:
    """Add the `promote` subcommand."""
    parser = subparsers.add_parser(
        "promote",
        help="make a candidate the primary on every proxy replica (gate first)",
        description="Check the promotion gate on the candidate's trial; if it passes (or with"
        " --force), every proxy replica sends new requests to the candidate within a second."
        " The old primary is remembered for `shadowtrial rollback`.",
    )
    parser.add_argument("name", metavar="NAME", help="the candidate to promote")
    parser.add_argument("--force", action="store_true", help="promote whatever the gate says")
    add_admin_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Call the admin API; print the verdict and its reasons."""
    from shadowtrial.admin_client import client_from_args

    with client_from_args(args) as client:
        answer = client.promote(args.name, force=args.force)
    return finish(answer.status, answer.body, args.json, _promoted)


def _promoted(body: dict[str, Any]) -> str:
    forced = " (forced)" if body.get("forced") else ""
    return (
        f"promoted {body.get('candidate')}{forced}: new requests go to {body.get('primary')}"
        f" (was {body.get('previous')})"
    )


def finish(status: int, body: Any, as_json: bool, summary: Any) -> int:
    """Print a decision's answer; its exit code (AdminRefused for usage-type errors)."""
    from shadowtrial.admin_client import AdminRefused, describe_error

    console = Console(highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(body, indent=2))
    ok = 200 <= status < 300
    if not ok and status != 409:
        raise AdminRefused(status, body)
    if not as_json:
        text = summary(body) if ok else f"refused: {describe_error(body)}"
        console.print(escape(printable(text)))
        print_gate(console, body.get("gate") if isinstance(body, dict) else None)
    return EXIT_OK if ok else EXIT_REFUSED


def print_gate(console: Console, gate: dict[str, Any] | None) -> None:
    """The verdict, coloured, and one line per reason."""
    if not gate:
        return
    verdict = printable(gate.get("verdict"))
    style = VERDICT_STYLE.get(verdict, "bold")
    console.print(f"gate: [{style}]{escape(verdict)}[/{style}]")
    for reason in gate.get("reasons") or []:
        console.print(f"  - {escape(printable(reason))}")
