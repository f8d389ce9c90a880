"""The `shadowtrial` command: argparse with one module per subcommand.

Adding a command: write shadowtrial/commands/NAME.py with `register(subparsers)` and add
NAME to COMMANDS. Exit codes: 0 success, 1 failure, 2 usage or configuration error
(argparse's own errors, unknown commands, ConfigError, a model that cannot be loaded,
an admin API that cannot be reached).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from common.errors import AdminError, ConfigError, ModelLoadError, ShadowtrialError
from common.sanitize import printable

COMMANDS: list[str] = [
    "serve", "worker", "candidates", "promote", "reject", "rollback", "report", "replay",
    "export", "demo", "canary",
    "profile", "watch", "dispatch",
]  # fmt: skip

EXIT_FAILED = 1
EXIT_USAGE = 2


def version() -> str:
    """The installed package's version, else the one in pyproject.toml (a plain checkout)."""
    try:
        return importlib.metadata.version("shadowtrial")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def build_parser() -> argparse.ArgumentParser:
    """The parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="shadowtrial",
        description="Shadow-mode inference proxy: put a candidate model on trial.",
    )
    parser.add_argument("--version", action="version", version=f"shadowtrial {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"shadowtrial.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the command, map errors to exit codes."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ConfigError, ModelLoadError, AdminError) as exc:
        print(printable(exc), file=sys.stderr)
        return EXIT_USAGE
    except ShadowtrialError as exc:
        print(printable(exc), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
