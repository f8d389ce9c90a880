"""`shadowtrial export`: the failure catalog, a replay file the next candidate must pass.

    shadowtrial export NAME [--divergent] [--slice F=V] [--flips] [--limit N]
        -o cases.jsonl [-c CONFIG]

Reads the pair records kept in candidate NAME's stream (the newest `redis.max_pairs`),
judges each as the worker does, and writes those matching every filter as JSONL lines
that `shadowtrial replay cases.jsonl --candidate NEXT --check` reads: the request, the
primary's answer as the expected answer, and `catalog` {candidate, why, rows,
disagreeing, candidate_outcome}. `--divergent`: pairs where any row disagrees or the
candidate did not answer; `--slice F=V`: pairs with a row in that slice (a configured
slice, or `primary:class`); `--flips`: labelled negative flips (the primary right, the
candidate wrong; the newest `worker.label_join_max` joined labels' flips, with their
labels in `catalog.labels`). No filter: every pair. Format and selection:
analysis.catalog. Exit codes: 0 written (even when no pair matched, then the file is
empty), 2 usage errors (bad --slice, Redis unreachable, file not writable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shadowtrial.commands import add_config_option, load_config, positive_int

EXIT_OK, EXIT_USAGE = 0, 2


def register(subparsers: Any) -> None:
    """Add the `export` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="write what a trial found (divergent pairs, a slice's pairs) as a replay file",
        description="Export a candidate's pairs as a failure catalog: JSONL lines with the"
        " primary's answer as the expected answer, for `shadowtrial replay FILE --candidate"
        " NEXT --check`.",
    )
    parser.add_argument("name", metavar="NAME", help="the candidate whose pairs to export")
    parser.add_argument("--divergent", action="store_true", help="only disagreeing pairs")
    parser.add_argument("--slice", metavar="F=V", help="only pairs with a row in this slice")
    parser.add_argument(
        "--flips",
        action="store_true",
        help="only labelled negative flips (primary right, candidate wrong)",
    )
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="write at most N cases")  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.jsonl")
    add_config_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Select the cases, write them, say how many and why."""
    import orjson
    import redis

    from analysis.catalog import ExportTally, export_lines, filters_for
    from common.errors import StoreError
    from common.keys import Keys
    from common.redis_client import STORE_FAILURES
    from common.sanitize import printable
    from proxy.replay import ReplayError
    from shadowtrial.commands.replay import redis_url

    settings = load_config(args)
    tally = ExportTally()
    try:
        client = redis.Redis.from_url(redis_url(settings), socket_connect_timeout=2.0)
        keys = Keys(settings.redis.prefix)
        filters = filters_for(client, keys, args.name, args.divergent, args.slice, args.flips)
        lines = export_lines(client, keys, settings, args.name, filters, tally, args.limit)
        with args.output.open("wb") as out:
            for case in lines:
                out.write(orjson.dumps(case) + b"\n")
    except (ValueError, OSError, StoreError, ReplayError, *STORE_FAILURES) as exc:
        print(f"export: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    why = ", ".join(f"{k} {v}" for k, v in sorted(tally.reasons.items())) or "none matched"
    print(printable(f"read {tally.read} pairs of {args.name} ({tally.bad} unreadable); wrote"
                    f" {min(tally.kept, args.limit or tally.kept)} cases to {args.output}:"
                    f" {why}"))  # fmt: skip
    return EXIT_OK
