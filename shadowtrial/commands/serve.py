"""`shadowtrial serve`: run the proxy (data port) and its admin API (admin port)."""

from __future__ import annotations

import argparse
from typing import Any

from shadowtrial.commands import (
    add_config_option,
    add_log_options,
    load_config,
    positive_int,
)


def register(subparsers: Any) -> None:
    """Add the `serve` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the proxy (data port) and its admin API (admin port)",
        description="Forward every request to the primary, mirror a sample to the "
        "candidates, record each pair in Redis. Stops cleanly on SIGTERM/SIGINT.",
    )
    add_config_option(parser)
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="processes sharing the data port via SO_REUSEPORT (default: proxy.workers)",
    )
    add_log_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the settings, then serve until a stop signal; returns the exit code."""
    settings = load_config(args)
    from proxy.server import configure_logging, serve

    configure_logging(args.log_level, args.log_format)
    return serve(settings, args.workers)
