"""One module per subcommand, listed in shadowtrial.cli.COMMANDS.

Each module defines `register(subparsers)`: it adds its parser and sets `run` (a function
taking the parsed arguments and returning the exit code) as a default. Keep module-level
imports light (argparse, this package); import the heavy parts inside `run`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common.settings import Settings, load_settings

CONFIG_ENV = "SHADOWTRIAL_CONFIG"
DEFAULT_CONFIG = "shadowtrial.toml"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """The `-c/--config FILE` option every command that reads settings shares."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML config (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG} when present, "
        "else defaults plus SHADOWTRIAL_* environment overrides)",
    )


def load_config(args: argparse.Namespace) -> Settings:
    """The validated settings for a command; raises ConfigError naming the bad key."""
    path = args.config or os.environ.get(CONFIG_ENV)
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return load_settings(path)


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """`--log-level` and `--log-format text|json` for the long-running commands
    (serve, worker, dispatch: common.logs)."""
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line for log collectors (default: text)",
    )


def positive_int(text: str) -> int:
    """argparse type for counts such as --workers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
