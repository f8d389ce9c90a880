"""`shadowtrial profile DATA.csv|.jsonl|.parquet -o profile.json`: the training profile.

Records each feature as the model saw it in training (kind, range, categories,
histogram, missing counts): the reference `shadowtrial watch` compares serving traffic
with to find training/serving skew. Exit codes: 0 written, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from analysis.watch_state import DEFAULT_MAX_FEATURES
from common.sanitize import printable


def register(subparsers: Any) -> None:
    """Add the `profile` subcommand."""
    parser = subparsers.add_parser(
        "profile",
        help="profile training data: the reference for training/serving skew",
        description="Count every row of a CSV (with a header), JSONL (one object per line)"
        " or Parquet file into a profile JSON for `shadowtrial watch --reference`.",
    )
    parser.add_argument("data", type=Path, metavar="DATA", help="the training data file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="profile JSON to write")
    parser.add_argument(
        "--max-features", type=int, default=DEFAULT_MAX_FEATURES,
        help=f"features kept; values of the rest are counted (default {DEFAULT_MAX_FEATURES})",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the profile, write it, say what it holds."""
    from analysis.profile import ProfileError, build_profile

    try:
        state = build_profile(args.data, max_features=args.max_features)
    except ProfileError as exc:
        print(f"profile: {printable(exc)}", file=sys.stderr)
        return 2
    args.output.write_text(json.dumps(state.to_dict(), indent=1, allow_nan=False) + "\n")
    kinds = [state.kind(name) for name in state.features]
    print(
        f"profiled {state.rows} rows ({state.unreadable} unreadable): "
        f"{kinds.count('numeric')} numeric, {kinds.count('categorical')} categorical features"
        + (f", {state.over_cap} values beyond the feature cap" if state.over_cap else "")
        + f" -> {args.output}"
    )
    return 0
