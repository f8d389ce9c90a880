"""The machine side: nginx and wrk (installed from Debian when missing), ports, tiny HTTP calls."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from proxybench.results import HarnessError

APT_PACKAGES = ("nginx", "wrk")
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def which(tool: str) -> str | None:
    """Path of a tool, also looking in sbin folders that a non-root PATH may lack."""
    found = shutil.which(tool)
    if found:
        return found
    return next((f"{d}/{tool}" for d in _SBIN if os.access(f"{d}/{tool}", os.X_OK)), None)


def ensure_tools() -> dict[str, str]:
    """Paths of nginx and wrk; installs them with apt-get when missing and we are root."""
    missing = [t for t in APT_PACKAGES if which(t) is None]
    if missing and os.geteuid() != 0:
        raise HarnessError(
            f"missing {', '.join(missing)}; install as root: apt-get install -y {' '.join(missing)}"
        )
    if missing:
        print(f"installing {', '.join(missing)} with apt-get ...", file=sys.stderr, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise HarnessError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    paths = {t: which(t) for t in APT_PACKAGES}
    if any(p is None for p in paths.values()):
        raise HarnessError(f"still missing after apt-get: {paths}")
    return {t: str(p) for t, p in paths.items()}


def tool_versions(paths: dict[str, str]) -> dict[str, str]:
    """Versions worth writing next to the numbers (nginx, wrk, Python, CPU model)."""
    nginx = subprocess.run([paths["nginx"], "-v"], capture_output=True, text=True, check=False)
    wrk = subprocess.run([paths["wrk"], "-v"], capture_output=True, text=True, check=False)
    return {
        "nginx": (nginx.stderr or nginx.stdout).strip().split("/")[-1],
        "wrk": (wrk.stdout or wrk.stderr).split()[1] if (wrk.stdout or wrk.stderr) else "?",
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def http(url: str, body: bytes | None = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """One request (POST when a body is given); returns status and body, HTTP errors included."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise HarnessError(f"{url}: {exc}") from exc


def wait_until(check: Callable[[], object], what: str, timeout_s: float) -> None:
    """Poll `check()` every 50 ms until it returns true, or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise HarnessError(f"{what} not ready after {timeout_s:.0f}s")
