"""`shadowtrial rollback`: the previous primary becomes the primary again.

Exit codes: 0 rolled back, 1 refused (nothing to roll back to), 2 usage or connection
errors.
"""

from __future__ import annotations

import argparse
from typing import Any

from shadowtrial.admin_client import add_admin_options


def register(subparsers: Any) -> None:
    """Add the `rollback` subcommand."""
    parser = subparsers.add_parser(
        "rollback",
        help="send traffic to the previous primary again",
        description="Every proxy replica sends new requests to the previous primary within a"
        " second; the candidate that was promoted is marked rejected.",
    )
    add_admin_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Call the admin API; print where traffic goes now."""
    from shadowtrial.admin_client import client_from_args
    from shadowtrial.commands.promote import finish

    with client_from_args(args) as client:
        answer = client.rollback()
    return finish(answer.status, answer.body, args.json, _rolled_back)


def _rolled_back(body: dict[str, Any]) -> str:
    name = body.get("primary_name")
    which = f" ({name})" if name else ""
    return (
        f"rolled back: new requests go to {body.get('primary')}{which} (was {body.get('previous')})"
    )
