"""`shadowtrial reject NAME`: stop mirroring a candidate; its evidence stays.

Exit codes: 0 rejected, 1 refused (it is the primary, or already rejected), 2 usage or
connection errors.
"""

from __future__ import annotations

import argparse
from typing import Any

from shadowtrial.admin_client import add_admin_options


def register(subparsers: Any) -> None:
    """Add the `reject` subcommand."""
    parser = subparsers.add_parser(
        "reject",
        help="stop mirroring a candidate (its evidence is kept)",
        description="Every proxy replica stops mirroring to the candidate within a second;"
        " its recorded pairs and summaries stay for the report.",
    )
    parser.add_argument("name", metavar="NAME", help="the candidate to reject")
    add_admin_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Call the admin API; print what happened and the gate's verdict at that moment."""
    from shadowtrial.admin_client import client_from_args
    from shadowtrial.commands.promote import finish

    with client_from_args(args) as client:
        answer = client.reject(args.name)
    return finish(answer.status, answer.body, args.json, _rejected)


def _rejected(body: dict[str, Any]) -> str:
    return f"rejected {body.get('candidate')}: no longer mirrored; its evidence is kept"
