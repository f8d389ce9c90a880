"""`shadowtrial canary NAME WEIGHT [--force]`: let a candidate answer a share of live
requests (sticky by `proxy.sample_by`), through the admin API; WEIGHT 0 ends the canary.

Exit codes: 0 set, 1 refused (the gate says no, or it cannot answer clients), 2 usage or
connection errors (unknown candidate, bad weight, bad token, admin API unreachable).
"""

from __future__ import annotations

import argparse
from typing import Any

from shadowtrial.admin_client import add_admin_options


def register(subparsers: Any) -> None:
    """Add the `canary` subcommand."""
    parser = subparsers.add_parser(
        "canary",
        help="let a candidate answer a share of live requests (gate first); 0 ends it",
        description="Check the gate on the candidate's shadow trial; if it passes (or with"
        " --force), every proxy replica sends WEIGHT of the keys (proxy.sample_by) to the"
        " candidate within a second, the primary answering whenever the candidate fails."
        " The gate automation sets the weight back to 0 when the gate fails.",
    )
    parser.add_argument("name", metavar="NAME", help="the candidate")
    parser.add_argument("weight", metavar="WEIGHT", type=float, help="share from 0 to 1")
    parser.add_argument("--force", action="store_true", help="whatever the gate says")
    add_admin_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Call the admin API; print the new weight, the verdict and its reasons."""
    from shadowtrial.admin_client import client_from_args
    from shadowtrial.commands.promote import finish

    with client_from_args(args) as client:
        answer = client.canary(args.name, args.weight, force=args.force)
    return finish(answer.status, answer.body, args.json, _set)


def _set(body: dict[str, Any]) -> str:
    forced = " (forced)" if body.get("forced") else ""
    weight = float(body.get("weight") or 0)
    if weight == 0:
        return f"canary of {body.get('candidate')} ended{forced}: the primary answers everyone"
    return f"{body.get('candidate')} answers {weight:.0%} of keys{forced}"
