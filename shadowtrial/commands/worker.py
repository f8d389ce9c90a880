"""`shadowtrial worker`: run one comparison worker (start several for more throughput)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from common import logs
from common.settings import Settings
from shadowtrial.commands import add_config_option, add_log_options, load_config


def register(subparsers: Any) -> None:
    """Add the `worker` subcommand."""
    parser = subparsers.add_parser(
        "worker",
        help="run one comparison worker; start several for more throughput",
        description="Read pair records from every candidate's stream (one consumer group), "
        "compare both answers and add the evidence to the summaries in Redis, exactly once. "
        "Stops cleanly on SIGTERM/SIGINT: the batch in hand is applied and acknowledged.",
    )
    add_config_option(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if any worker (with --id, that one; a glob such as 'host-*' "
        "allowed) reported itself healthy in the last 30 seconds, else 1 (for probes)",
    )
    parser.add_argument(
        "--id", default=None, metavar="NAME", help="consumer name (default: host-pid-random)"
    )
    add_log_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check health, or work until a stop signal; returns the exit code."""
    settings = load_config(args)
    if args.check:
        healthy = check_health(settings, args.id)
        print("a worker is healthy" if healthy else "no healthy worker", file=sys.stderr)
        return 0 if healthy else 1
    from analysis.worker import serve_worker

    logs.configure(args.log_level, args.log_format)
    return serve_worker(settings, consumer=args.id)


def check_health(settings: Settings, consumer: str | None = None) -> bool:
    """True when a worker refreshed its health key within WORKER_HEALTH_TTL_S (arq-style):
    the consumer named (a glob allowed), else any. A probe per container passes its own
    name, so one stuck worker is restarted even while others are healthy.

    Imports only redis: probes run often and must be quick. Never starts a Redis.
    """

    from common.keys import Keys
    from common.redis_client import STORE_FAILURES, sync_client
    from common.store import default_socket_dir

    url = settings.redis.url or f"unix://{default_socket_dir() / 'redis.sock'}"
    client = sync_client(url, socket_connect_timeout=2, socket_timeout=2)
    keys = Keys(settings.redis.prefix)
    try:
        if consumer and not any(c in consumer for c in "*?["):
            return bool(client.exists(keys.worker_health(consumer)))
        pattern = keys.worker_health(consumer or "*")
        return next(iter(client.scan_iter(match=pattern, count=1000)), None) is not None
    except STORE_FAILURES:
        return False
    finally:
        client.close()
