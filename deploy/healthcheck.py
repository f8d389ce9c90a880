"""The container health check for the one image that runs `serve`, `worker` or `dispatch`.

    python /opt/shadowtrial/healthcheck.py          # exit 0 healthy, 1 not

Docker's HEALTHCHECK (and the Kubernetes worker's liveness probe) run this file. It finds
the shadowtrial command the container runs (the first process whose arguments are
`shadowtrial ...` or `python -m shadowtrial ...`: PID 1, or the child of an init), parses
them with the CLI's own parser, loads the same config with the same environment, and
checks what that command serves:

- `serve`: GET /healthz on the admin port (a wildcard bind address is reached on loopback);
- `worker`: its health key in Redis is fresh (`shadowtrial worker --check`): the consumer
  named by `--id`, else any consumer whose name starts with this host name, which is how
  the worker names itself by default. One stuck worker fails its own container only.
- `dispatch`: GET /metrics on its `--metrics-port` (without one: healthy while it runs;
  a dead dispatcher's records are taken over by the others anyway).
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

PROGRAM = "shadowtrial"
TIMEOUT_S = 2.0


def shadowtrial_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after `shadowtrial` (a script or `-m shadowtrial`), else None."""
    for i, arg in enumerate(argv):
        if Path(arg).name == PROGRAM:
            return list(argv[i + 1 :])
        if arg == "-m" and i + 1 < len(argv) and argv[i + 1] == PROGRAM:
            return list(argv[i + 2 :])
    return None


def _cmdlines(proc: Path) -> Iterable[list[str]]:
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        yield [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def running_command(proc: Path = Path("/proc")) -> list[str] | None:
    """The arguments of the shadowtrial command running here (lowest PID first)."""
    for argv in _cmdlines(proc):
        args = shadowtrial_args(argv)
        if args and args[0] in ("serve", "worker", "dispatch"):
            return args
    return None


def parse(args: Sequence[str]) -> argparse.Namespace:
    """The command's arguments as the CLI itself reads them."""
    from shadowtrial.cli import build_parser

    return build_parser().parse_args(list(args))


def serve_healthy(ns: argparse.Namespace) -> bool:
    """The admin port of this `serve` answers GET /healthz with 200."""
    from common.settings import split_hostport
    from shadowtrial.commands import load_config

    host, port = split_hostport(load_config(ns).proxy.admin_listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with urllib.request.urlopen(f"http://{netloc}/healthz", timeout=TIMEOUT_S) as resp:
            return resp.status == 200
    except OSError:
        return False


def worker_healthy(ns: argparse.Namespace, hostname: str | None = None) -> bool:
    """This container's worker refreshed its health key within the last 30 seconds."""
    from shadowtrial.commands import load_config
    from shadowtrial.commands.worker import check_health

    consumer = ns.id or f"{hostname or socket.gethostname()}-*"
    return check_health(load_config(ns), consumer)


def dispatch_healthy(ns: argparse.Namespace) -> bool:
    """This dispatcher's /metrics answers (it serves them from its own thread)."""
    if ns.metrics_port is None:
        return True
    try:
        url = f"http://127.0.0.1:{ns.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            return resp.status == 200
    except OSError:
        return False


def healthy(args: Sequence[str] | None) -> bool:
    """Whether the command with these arguments is healthy (None: nothing runs)."""
    if not args:
        return False
    ns = parse(args)
    if args[0] == "dispatch":
        return dispatch_healthy(ns)
    return serve_healthy(ns) if args[0] == "serve" else worker_healthy(ns)


def main() -> int:
    args = running_command()
    ok = healthy(args)
    what = " ".join(args[:1]) if args else "no shadowtrial command"
    print(f"{what}: {'healthy' if ok else 'unhealthy'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
