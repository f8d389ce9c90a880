"""`shadowtrial canary NAME WEIGHT [--force]`: let a candidate answer a share of live
requests (sticky by `proxy.sample_by`), through the admin API; WEIGHT 0 ends the canary.
`shadowtrial canary NAME --steps 0.05,0.25,1 --step-s 600 [--min-pairs 500]`: a plan
(docs/operating.md).

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
    parser.add_argument("weight", metavar="WEIGHT", type=float, nargs="?", help="share from 0 to 1")
    parser.add_argument("--steps", help="a plan instead: weights, comma-separated")
    parser.add_argument("--step-s", type=float, default=600.0, help="least seconds per step")
    parser.add_argument("--min-pairs", type=int, default=0, help="least pairs per step")
    parser.add_argument("--force", action="store_true", help="whatever the gate says")
    add_admin_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Call the admin API; print the new weight, the verdict and its reasons."""
    from shadowtrial.admin_client import client_from_args
    from shadowtrial.commands.promote import finish

    with client_from_args(args) as client:
        answer = client.canary(args.name, _body(args), force=args.force)
    return finish(answer.status, answer.body, args.json, _set)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    """{"weight": w}, or a plan from --steps (the server validates either)."""
    from common.errors import AdminError

    if (args.steps is None) == (args.weight is None):
        raise AdminError("give WEIGHT or --steps, not both (see shadowtrial canary --help)")
    if args.steps is None:
        return {"weight": args.weight}
    try:
        steps = [float(part) for part in args.steps.split(",")]
    except ValueError:
        raise AdminError(f"--steps: numbers separated by commas, got {args.steps!r}") from None
    plan: dict[str, Any] = {"steps": steps, "step_s": args.step_s}
    if args.min_pairs:
        plan["min_pairs"] = args.min_pairs
    return plan


def _set(body: dict[str, Any]) -> str:
    forced = " (forced)" if body.get("forced") else ""
    weight = float(body.get("weight") or 0)
    if weight == 0:
        return f"canary of {body.get('candidate')} ended{forced}: the primary answers everyone"
    plan = f", then {body['steps'][1:]} every {body.get('step_s'):g} s" if body.get("steps") else ""
    if plan and body.get("min_pairs"):
        plan += f" and {body['min_pairs']} pairs"
    return f"{body.get('candidate')} answers {weight:.0%} of keys{forced}{plan}"
