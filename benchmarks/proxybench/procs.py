"""Every process the harness starts, kept by PID so that all of them stop on any exit.

Servers run in their own session (so a Ctrl-C in the terminal reaches only the harness,
which then stops them in order); load generators are short-lived children whose CPU time
comes from `wait4`. Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from proxybench.results import HarnessError

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    """`root` and every live process below it (workers that `serve --workers N` forks)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the given processes have used so far."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, steal)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICK


class Processes:
    """The servers and load generators this run started; `stop_all` ends them by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._servers: dict[str, subprocess.Popen[bytes]] = {}
        self._child: subprocess.Popen[str] | None = None

    def start(self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
        """Start a long-running server with its output in logs/<name>.log; return its PID."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        log_fd = os.open(self.log_dir / f"{name}.log", flags, 0o644)
        try:
            proc = subprocess.Popen(
                list(cmd),
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise HarnessError(f"could not start {name}: {exc}") from exc
        finally:
            os.close(log_fd)  # the child holds its own copy
        self._servers[name] = proc
        return proc.pid

    def names(self) -> list[str]:
        """Servers started and not yet stopped, oldest first."""
        return list(self._servers)

    def pid(self, name: str) -> int:
        """PID of a server this run started."""
        return self._servers[name].pid

    def wait(self, name: str, timeout_s: float) -> int:
        """Wait for a server that ends by itself (py-spy); kill it after `timeout_s`."""
        proc = self._servers.pop(name)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_and_reap(proc)
            return -9

    def exited(self, name: str) -> int | None:
        """The server's exit code if it has stopped, else None."""
        return self._servers[name].poll()

    def cpu(self, name: str) -> float:
        """CPU seconds used so far by a server and everything it forked."""
        return cpu_seconds(descendants(self.pid(name)))

    def cpu_all(self) -> float:
        """CPU seconds used so far by every server this run started (idle ones included)."""
        return sum(self.cpu(name) for name in self._servers)

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last lines a server printed, for error messages."""
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def run(self, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[str, float]:
        """Run a load generator to completion; return its output and its CPU seconds (wait4)."""
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._child = proc
        try:
            assert proc.stdout is not None
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            self._child = None
            if proc.returncode is None:
                _kill_and_reap(proc)
        if proc.returncode != 0:
            raise HarnessError(f"{cmd[0]} exited with {proc.returncode}:\n{out[-2000:]}")
        return out, usage.ru_utime + usage.ru_stime

    def stop(self, names: Iterable[str] | None = None, timeout_s: float = 10.0) -> None:
        """SIGTERM the servers (newest first), wait, then SIGKILL what is left of their trees."""
        chosen = list(self._servers) if names is None else [n for n in names if n in self._servers]
        trees = {n: descendants(self._servers[n].pid) for n in chosen}
        for name in reversed(chosen):
            _signal(self._servers[name].pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name in reversed(chosen):
            proc = self._servers.pop(name)
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_and_reap(proc)
            for pid in trees[name][1:]:  # workers that outlived their parent
                _signal(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop a running load generator and every server; safe to call twice."""
        if self._child is not None and self._child.returncode is None:
            _kill_and_reap(self._child)
        self.stop()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _kill_and_reap(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    _signal(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
        proc.wait(timeout=5)
