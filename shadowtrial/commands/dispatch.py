"""`shadowtrial dispatch`: call `run = "dispatcher"` HTTP candidates off the serving process."""

from __future__ import annotations

import argparse
from typing import Any

from common import logs
from shadowtrial.commands import add_config_option, add_log_options, load_config


def register(subparsers: Any) -> None:
    """Add the `dispatch` subcommand."""
    parser = subparsers.add_parser(
        "dispatch",
        help='call the run = "dispatcher" candidates; start several for more throughput',
        description='Read the request records proxies queued for run = "dispatcher" '
        "candidates (one consumer group), call each candidate with its timeout and at most "
        "[dispatch] concurrency calls at a time, and write the pairs, exactly once. A "
        "dispatcher that dies leaves its records to the others. Stops cleanly on "
        "SIGTERM/SIGINT: the calls in flight finish and are written.",
    )
    add_config_option(parser)
    parser.add_argument(
        "--id", default=None, metavar="NAME", help="consumer name (default: host-pid-random)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve this dispatcher's Prometheus /metrics on PORT (default: none)",
    )
    add_log_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch until a stop signal; returns the exit code."""
    settings = load_config(args)
    from proxy.dispatch import serve_dispatcher

    logs.configure(args.log_level, args.log_format)
    return serve_dispatcher(settings, consumer=args.id, metrics_port=args.metrics_port)
