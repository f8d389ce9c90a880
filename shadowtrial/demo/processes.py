"""The demo's child processes: each in its own process group, each stopped for sure.

Every child starts a new session (so a Ctrl-C in the terminal reaches only the demo,
which then stops the children in order: the proxy first so its mirrors drain, then the
workers and model servers) and, on Linux, asks the kernel for SIGTERM should the demo
die without cleaning up (PR_SET_PDEATHSIG). Output goes to one log file per child; the
PIDs are written to `pids.json` as they start, so a test can check none survives.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.errors import ShadowtrialError

PR_SET_PDEATHSIG = 1
LOG_TAIL_CHARS = 2000
POLL_S = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the demo dies (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(extra: Mapping[str, str], pythonpath: Path) -> dict[str, str]:
    """The environment for children: no REDIS_URL or SHADOWTRIAL_* from the user's shell
    (they would point the demo at another Redis or change its config), plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SHADOWTRIAL_")
    }
    paths = [str(pythonpath), *filter(None, [env.get("PYTHONPATH")])]
    env.update({"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", **extra})
    return env


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self) -> str:
        """The end of its log, for error messages."""
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""


@dataclass
class Supervisor:
    """Starts, watches and stops the demo's children; records their PIDs."""

    folder: Path
    env: dict[str, str]
    children: dict[str, Child] = field(default_factory=dict)
    extra_pids: dict[str, int] = field(default_factory=dict)

    @property
    def pids_file(self) -> Path:
        return self.folder / "pids.json"

    def start(self, name: str, argv: list[str]) -> Child:
        """Start `argv` as child `name` in its own session, output to logs/NAME.log."""
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # called before any thread starts
            )
        child = Child(name, process, log)
        self.children[name] = child
        self.write_pids()
        return child

    def remember(self, name: str, pid: int) -> None:
        """A process started elsewhere (the embedded Redis) that the pids file lists too."""
        self.extra_pids[name] = pid
        self.write_pids()

    def pids(self) -> dict[str, int]:
        """Every PID started, by name."""
        return {**self.extra_pids, **{n: c.pid for n, c in self.children.items()}}

    def write_pids(self) -> None:
        self.pids_file.write_text(json.dumps(self.pids(), indent=2) + "\n", encoding="utf-8")

    def check(self) -> None:
        """ShadowtrialError naming the first child that exited on its own, with its log."""
        for child in self.children.values():
            if not child.alive():
                raise ShadowtrialError(
                    f"{child.name} exited with code {child.process.returncode}; "
                    f"the end of {child.log}:\n{child.tail()}"
                )

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Poll `ready` until true; fail when a child dies or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            self.check()
            if time.monotonic() > deadline:
                raise ShadowtrialError(f"{what} not ready after {timeout_s:.0f} s")
            time.sleep(POLL_S)

    def stop(self, order: Iterable[Iterable[str]], timeout_s: float = 10.0) -> list[int]:
        """SIGTERM each group of children in turn, SIGKILL what outlives `timeout_s`.

        Returns the PIDs stopped. Safe to call twice, and with children already gone.
        """
        named = [list(group) for group in order]
        rest = [n for n in self.children if not any(n in g for g in named)]
        stopped: list[int] = []
        for group in [*named, rest]:
            children = [self.children[n] for n in group if n in self.children]
            stopped += [c.pid for c in children]
            _terminate(children, timeout_s)
        return stopped


def _signal_group(child: Child, sig: int) -> None:
    """Signal the child's whole process group (it leads one: start_new_session)."""
    if child.alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)


def _terminate(children: list[Child], timeout_s: float) -> None:
    for child in children:
        _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(child, signal.SIGKILL)
            child.process.wait()


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """True when GET `url` answers 2xx (False on any connection error)."""
    try:
        return httpx.get(url, timeout=timeout_s).is_success
    except httpx.HTTPError:
        return False


def pid_alive(pid: int) -> bool:
    """True while a process with this PID exists (and is not a zombie of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
