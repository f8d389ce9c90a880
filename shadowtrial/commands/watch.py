"""`shadowtrial watch`: the live watch from the admin API, or an offline comparison.

Live (no `--requests` / `--from-stream`): GET /v1/watch of the admin port, `--window 1h`
against `--reference pinned|profile|day|week|<fromISO>/<toISO>` (default: the
config's `[watch] reference`), printed with every traffic string made printable.
`shadowtrial watch pin --from ISO --to ISO` pins the reference window (admin token).

Offline: `--requests REQUESTS.jsonl` holds one request body per line (as sent to the
model: OIP v2, `instances`, rows, ...) or `shadowtrial replay` lines, or `--from-stream
NAME` reads the requests and primary answers recorded for a candidate; the reference is
a training profile (`--reference profile.json`, from `shadowtrial profile`) or another
file of request bodies (`--reference-requests`, e.g. last week's).

Prints per feature the drift, its corrected p-value, the flag and the skew rates
(docs/statistics.md, "Watch"). Exit codes: 0 nothing flagged, 1 a feature flagged,
2 usage, unreadable files or an admin API that cannot answer.
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
    current = parser.add_mutually_exclusive_group(required=False)
    current.add_argument("--requests", type=Path, help="JSONL of request bodies (or replay lines)")
    current.add_argument(
        "--from-stream", metavar="NAME",
        help="the requests and primary answers recorded in candidate NAME's pair stream",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=STREAM_LIMIT,
                        help=f"pairs read from the stream (default {STREAM_LIMIT:,})")  # fmt: skip
    add_config_option(parser)
    reference = parser.add_mutually_exclusive_group(required=False)
    reference.add_argument(
        "--reference",
        help="live: pinned, profile, day, week or FROM/TO (ISO); offline: a profile file",
    )
    reference.add_argument("--reference-requests", type=Path, help="JSONL of earlier bodies")
    parser.add_argument(
        "--window", default=None, help="live: how far back (default [watch] window)"
    )
    parser.add_argument("--admin", metavar="URL", default=None, help="live: admin API base URL")
    parser.add_argument(
        "--as",
        dest="actor",
        metavar="NAME",
        default=None,
        help="which named token to send when the variable holds several",
    )
    parser.add_argument(
        "--rename", type=rename_arg, action="append", default=[], metavar="SOURCE=NAME",
        help="name a derived feature as the training data does, e.g. x[0]=age",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the watch document as JSON")
    parser.set_defaults(run=run)
    actions = parser.add_subparsers(dest="watch_action", required=False, metavar="pin")
    pin = actions.add_parser("pin", help="pin the live watch's reference window (admin token)")
    pin.add_argument("--from", dest="start", required=True, help="ISO time, e.g. 2030-01-31T00:00Z")
    pin.add_argument("--to", dest="end", required=True, help="ISO time")
    from shadowtrial.admin_client import add_admin_options

    add_admin_options(pin)
    pin.set_defaults(run=run_pin)


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
        reference, name = load_profile(Path(args.reference)), "profile"
    else:
        lines = _bodies(args.reference_requests)
        reference, name = watch_bodies(lines, WatchState(), renames, ref_out), "requests"
    lines = _stream_lines(args) if args.from_stream else _bodies(args.requests)
    current = watch_bodies(lines, WatchState(), renames, cur_out)
    return watch_report(reference, current, name, outputs=(ref_out, cur_out))


def run(args: argparse.Namespace) -> int:
    """Live or offline: build or fetch the document, print it; 1 when a feature is flagged."""
    if args.requests is None and args.from_stream is None:
        return run_live(args)
    if args.reference is None and args.reference_requests is None:
        print("watch: offline needs --reference PROFILE or --reference-requests", file=sys.stderr)
        return EXIT_USAGE
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


def run_live(args: argparse.Namespace) -> int:
    """GET /v1/watch and print it (AdminError: exit 2 through the CLI's handler)."""
    from shadowtrial.admin_client import client_from_args

    params = {k: v for k, v in (("window", args.window), ("reference", args.reference)) if v}
    with client_from_args(args) as client:
        document = client.call("GET", "/v1/watch", params=params).json_or_raise()
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        from rich.console import Console

        from shadowtrial.render_watch import render_live

        Console(highlight=False, soft_wrap=False).print(render_live(document))
    return 1 if document.get("flagged") else 0


def run_pin(args: argparse.Namespace) -> int:
    """PUT /v1/watch/reference {"from", "to"}; 0 when pinned."""
    from shadowtrial.admin_client import client_from_args

    with client_from_args(args) as client:
        answer = client.call(
            "PUT", "/v1/watch/reference", json={"from": args.start, "to": args.end}
        ).json_or_raise()
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        ref = answer.get("reference") or {}
        print(f"watch reference pinned: {printable(ref.get('from'))} to {printable(ref.get('to'))}")
    return 0
