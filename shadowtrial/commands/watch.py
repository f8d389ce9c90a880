"""`shadowtrial watch --reference profile.json --requests REQUESTS.jsonl`: inputs vs reference.

Offline for now: REQUESTS.jsonl holds one request body per line (as sent to the model:
OIP v2, `instances`, rows, ...); the reference is a training profile (`shadowtrial
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

EXIT_USAGE = 2


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
    parser.add_argument("--requests", type=Path, required=True, help="JSONL of request bodies")
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
    current = watch_bodies(_bodies(args.requests), WatchState(), renames, cur_out)
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
