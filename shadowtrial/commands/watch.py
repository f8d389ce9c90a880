"""`shadowtrial watch --reference profile.json --requests REQUESTS.jsonl`: inputs vs reference.

Offline for now: REQUESTS.jsonl holds one request body per line (as sent to the model:
OIP v2, `instances`, rows, ...) or `shadowtrial replay` lines, or `--from-stream NAME`
reads the requests and primary answers recorded for a candidate (the mirrored sample:
no separate primary-only capture exists yet); the reference is a training profile (`shadowtrial
profile`) or another file of request bodies (`--reference-requests`, e.g. last week's).
Prints per feature the drift, its corrected p-value, the flag and the skew rates
(docs/statistics.md, "Watch"). Exit codes: 0 nothing flagged, 1 a feature flagged,
2 usage or unreadable files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.sanitize import printable
from shadowtrial.commands import add_config_option

EXIT_USAGE = 2
STREAM_LIMIT = 100_000


def rename_arg(text: str) -> tuple[str, str]:
    """argparse type: `x[0]=age` (a derived feature name = the training data's name)."""
    source, sep, name = text.partition("=")
    if not sep or not source or not name:
        raise argparse.ArgumentTypeError(f"expected SOURCE=NAME, got {text!r}")
    return source, name


def register(subparsers: Any) -> None:
    """Add the `watch` subcommand."""
    parser = subparsers.add_parser(
        "watch",
        help="compare request inputs with a training profile or earlier traffic (drift, skew)",
        description="Per feature: drift, corrected p-value, flag, unseen / out-of-range /"
        " missing rates of the requests against the reference.",
    )
    current = parser.add_mutually_exclusive_group(required=True)
    current.add_argument("--requests", type=Path, help="JSONL of request bodies (or replay lines)")
    current.add_argument(
        "--from-stream", metavar="NAME",
        help="the requests and primary answers recorded in candidate NAME's pair stream",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=STREAM_LIMIT,
                        help=f"pairs read from the stream (default {STREAM_LIMIT:,})")  # fmt: skip
    add_config_option(parser)
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--reference", type=Path, help="a profile from `shadowtrial profile`")
    reference.add_argument("--reference-requests", type=Path, help="JSONL of earlier bodies")
    parser.add_argument(
        "--rename", type=rename_arg, action="append", default=[], metavar="SOURCE=NAME",
        help="name a derived feature as the training data does, e.g. x[0]=age",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the watch document as JSON")
    parser.set_defaults(run=run)


def _bodies(path: Path) -> list[str]:
    from analysis.profile import ProfileError

    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return [line for line in handle if line.strip()]
    except OSError as exc:
        raise ProfileError(f"{path}: {exc.strerror}") from exc


def _stream_lines(args: argparse.Namespace) -> list[str]:
    """The stream's pairs as replay lines: request body, primary answer and status."""
    import asyncio

    from analysis.profile import ProfileError
    from common.keys import Keys
    from common.redis_client import STORE_FAILURES, async_client
    from proxy.replay import ReplayError, stream_items
    from shadowtrial.commands import load_config
    from shadowtrial.commands.replay import redis_url

    settings = load_config(args)

    async def collect() -> list[str]:
        client = async_client(redis_url(settings), socket_connect_timeout=2.0)
        stream = Keys(settings.redis.prefix).pairs(args.from_stream)
        try:
            return [_line(item) async for item in stream_items(client, stream, args.limit)]
        finally:
            await client.aclose()

    try:
        return asyncio.run(collect())
    except (ReplayError, *STORE_FAILURES) as exc:
        raise ProfileError(f"Redis: {exc}") from None


def _line(item: Any) -> str:
    text = {"body": item.body.decode("utf-8", "replace"), "primary_status": item.primary_status}
    if item.primary_body is not None:
        text["primary_body"] = item.primary_body.decode("utf-8", "replace")
    return json.dumps(text)


def _document(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.drift import watch_report
    from analysis.profile import load_profile
    from analysis.watch_features import watch_bodies
    from analysis.watch_state import WatchState

    renames = dict(args.rename)
    ref_out, cur_out = WatchState(), WatchState()
    if args.reference is not None:
        reference, name = load_profile(args.reference), "profile"
    else:
        lines = _bodies(args.reference_requests)
        reference, name = watch_bodies(lines, WatchState(), renames, ref_out), "requests"
    lines = _stream_lines(args) if args.from_stream else _bodies(args.requests)
    current = watch_bodies(lines, WatchState(), renames, cur_out)
    return watch_report(reference, current, name, outputs=(ref_out, cur_out))


def run(args: argparse.Namespace) -> int:
    """Build both states, compare, print; 1 when a feature is flagged."""
    from analysis.profile import ProfileError

    try:
        document = _document(args)
    except ProfileError as exc:
        print(f"watch: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        from rich.console import Console

        from shadowtrial.render_watch import render_watch

        Console(highlight=False).print(render_watch(document))
    return 1 if document["flagged"] or document["outputs"].get("flagged") else 0
