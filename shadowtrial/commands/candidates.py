"""`shadowtrial candidates`: the registered candidates and where traffic goes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from common.sanitize import printable
from shadowtrial.admin_client import add_admin_options

STATE_STYLE = {"active": "green", "promoted": "bold blue", "rejected": "red", "ended": "yellow"}


def register(subparsers: Any) -> None:
    """Add the `candidates` subcommand."""
    parser = subparsers.add_parser(
        "candidates",
        help="list the candidates and the current primary",
        description="The candidate registry as every proxy replica applies it.",
    )
    add_admin_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Fetch and print the registry."""
    from shadowtrial.admin_client import client_from_args

    with client_from_args(args) as client:
        body = client.candidates()
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        _print(body)
    return 0


def _shown(value: object) -> str:
    """A registry value as rich markup that prints it literally and printably."""
    from rich.markup import escape

    return escape(printable(value))


def _print(body: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    routing = body.get("routing") or {}
    name = routing.get("primary_name")
    console.print(f"primary: {_shown(routing.get('primary'))}"
                  + (f" ({_shown(name)})" if name else ""))  # fmt: skip
    table = Table("name", "state", "sample", "timeout", "model", "ends", "note")
    for c in body.get("candidates") or []:
        style = STATE_STYLE.get(c.get("state"), "")
        state = _shown(c.get("state", ""))
        table.add_row(
            _shown(c.get("name", "")),
            f"[{style}]{state}[/{style}]" if style else state,
            f"{c.get('sample', 0):g}",
            f"{c.get('timeout_ms')} ms",
            _shown(c.get("url") or f"onnx: {c.get('onnx')}"),
            _shown(c.get("ends_at") or "-"),
            _shown(c.get("reason") or ""),
        )
    console.print(table)
