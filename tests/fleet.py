"""Real fleets for the deploy tests and the scale benchmark: example model servers,
`shadowtrial serve` and `shadowtrial worker` processes on free loopback ports, the same
deterministic traffic sent through any number of proxies, and the reports they produce.

Every process is started by `Fleet` and stopped by its PID in `Fleet.close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from servers import free_port

from proxy.mirror import sample_point

REPO = Path(__file__).resolve().parent.parent
INFER_PATH = "/v2/models/model/infer"
COUNTRIES = ("FR", "DE", "US", "IT", "ES", "PL", "NL", "BE")
TENANTS = ("acme", "globex", "initech", "umbrella")
FEATURES = 5


# -- traffic ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One recorded inference request: its id, tenant header and OIP-v2 JSON body."""

    rid: str
    tenant: str
    body: bytes


def make_traffic(n: int, seed: int = 7) -> list[Request]:
    """`n` deterministic OIP-v2 requests of 1-3 rows, a country per row and a tenant."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rows = rng.choice((1, 1, 1, 2, 3))
        data = [round(rng.gauss(0.0, 1.0), 4) for _ in range(rows * FEATURES)]
        countries = [rng.choice(COUNTRIES) for _ in range(rows)]
        body = {
            "inputs": [
                {"name": "features", "shape": [rows, FEATURES], "datatype": "FP32", "data": data},
                {"name": "country", "shape": [rows], "datatype": "BYTES", "data": countries},
            ]
        }
        out.append(Request(f"req-{seed}-{i:06d}", rng.choice(TENANTS), orjson.dumps(body)))
    return out


def expected_pairs(traffic: Iterable[Request], sample: float) -> int:
    """How many requests a candidate at `sample` gets (sticky sampling on the request id)."""
    return sum(1 for r in traffic if sample_point(r.rid) < sample)


async def _send(traffic: Sequence[Request], urls: Sequence[str], concurrency: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    queue = iter(enumerate(traffic))
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def lane() -> None:
            for i, req in queue:
                headers = {
                    "content-type": "application/json",
                    "x-request-id": req.rid,
                    "x-tenant": req.tenant,
                }
                url = urls[i % len(urls)] + INFER_PATH
                async with session.post(url, data=req.body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return statuses


def send(traffic: Sequence[Request], urls: Sequence[str], concurrency: int = 8) -> Counter[int]:
    """POST every request once, spread round-robin over the proxies; status counts."""
    return asyncio.run(_send(traffic, urls, concurrency))


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A candidate of the fleet's config: its name, model server URL and sample rate."""

    name: str
    url: str
    sample: float


def write_config(
    path: Path,
    redis_url: str,
    prefix: str,
    primary: str,
    candidates: Sequence[Candidate],
    worker: dict[str, Any] | None = None,
) -> Path:
    """A shadowtrial.toml for the fleet (ports come from environment overrides)."""
    worker = {"block_ms": 200, "batch": 500, **(worker or {})}
    lines = [
        "[proxy]",
        'listen = "127.0.0.1:0"',
        'admin_listen = "127.0.0.1:0"',
        f'primary = "{primary}"',
        'mirror_paths = ["/v2/models/*/infer"]',
        'capture_headers = ["content-type", "x-tenant"]',
        "",
        "[redis]",
        f'url = "{redis_url}"',
        f'prefix = "{prefix}"',
        "",
        "[outputs]",
        'protocol = "oip-v2"',
        "",
        "[worker]",
        *(f"{k} = {v}" for k, v in worker.items()),
        "",
    ]
    for cand in candidates:
        lines += ["[[candidates]]", f'name = "{cand.name}"', f'url = "{cand.url}"']
        lines += [f"sample = {cand.sample}", "timeout_ms = 10000", ""]
    lines += ["[[slices]]", 'name = "tenant"', 'from = "header:X-Tenant"', ""]
    lines += ["[[slices]]", 'name = "country"', "from = '$.inputs[1].data[*]'", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# -- processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxy:
    """One `shadowtrial serve` process: its data and admin base URLs."""

    name: str
    data: str
    admin: str


class Fleet:
    """Processes of one test or benchmark; `close()` stops every one by its PID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        """Start `args` (stderr to NAME.log), in its own session."""
        with open(self.folder / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                list(args),
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        """The tail of a process's log."""
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]

    def check_alive(self) -> None:
        """Fail with its log if a process of the fleet exited on its own."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `condition` until it holds (every process still alive), or fail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            self.check_alive()
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")

    def model_server(self, name: str, variant: str) -> str:
        """`python -m shadowtrial.examples.model_server` for one variant; its base URL."""
        port = free_port()
        module = "shadowtrial.examples.model_server"
        self.spawn(name, [sys.executable, "-m", module, "--port", str(port), "--variant", variant])
        return f"http://127.0.0.1:{port}"

    def proxy(
        self, name: str, config: Path, workers: int = 1, env: dict[str, str] | None = None
    ) -> Proxy:
        """`shadowtrial serve -c CONFIG --workers N` on fresh ports (environment overrides)."""
        data, admin = free_port(), free_port()
        env = {
            **(env or {}),
            "SHADOWTRIAL_PROXY_LISTEN": f"127.0.0.1:{data}",
            "SHADOWTRIAL_PROXY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        }
        args = [sys.executable, "-m", "shadowtrial", "serve", "-c", str(config)]
        self.spawn(name, [*args, "--workers", str(workers), "--log-level", "warning"], env)
        return Proxy(name, f"http://127.0.0.1:{data}", f"http://127.0.0.1:{admin}")

    def worker(self, name: str, config: Path) -> None:
        """`shadowtrial worker -c CONFIG --id NAME`."""
        args = [sys.executable, "-m", "shadowtrial", "worker", "-c", str(config), "--id", name]
        self.spawn(name, [*args, "--log-level", "warning"])

    def wait_http(self, urls: Iterable[str], timeout_s: float = 30.0) -> None:
        """Every URL answers 200 (model servers' health, proxies' /healthz)."""
        pending = list(urls)

        def answered() -> bool:
            while pending:
                try:
                    if httpx.get(pending[0], timeout=1.0).status_code != 200:
                        return False
                except httpx.HTTPError:
                    return False
                pending.pop(0)
            return True

        self.wait_until(answered, timeout_s, f"{pending} to answer")

    def close(self) -> None:
        """SIGTERM every process (its whole session), then SIGKILL what is left after 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the process's session (it leads it: start_new_session), so children stop too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


# -- results ----------------------------------------------------------------------------

# Report keys that depend on when and how fast, not on what was compared: the window and
# per-bucket timeline (wall-clock time), latency (each process's own timing), the gate
# (its p99-ratio rule reads latency), and drill-down examples (which pair of a batch is
# kept depends on how the batches fell).
VOLATILE = ("window", "timeline", "latency", "gate", "contract", "unparseable")


def report(admin: str, candidate: str, window: str = "1h") -> dict[str, Any]:
    """The candidate's report from a proxy's admin API."""
    resp = httpx.get(f"{admin}/v1/candidates/{candidate}/report", params={"window": window})
    resp.raise_for_status()
    return resp.json()


def comparable(rep: dict[str, Any]) -> dict[str, Any]:
    """The report without the keys that depend on timing (see VOLATILE)."""
    return {k: v for k, v in rep.items() if k not in VOLATILE}


def metric_sum(admin: str, name: str, **labels: str) -> float:
    """Sum of one metric's samples on a proxy's /metrics whose labels include `labels`."""
    text = httpx.get(f"{admin}/metrics", timeout=5.0).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def wait_for_pairs(
    fleet: Fleet, admin: str, expected: dict[str, int], timeout_s: float = 60.0
) -> dict[str, dict[str, Any]]:
    """Poll the reports until every candidate summarised its expected pairs (and the
    proxies, which add their sampled counts at most once a second, counted them); the
    reports."""
    reports: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        for name, n in expected.items():
            reports[name] = rep = report(admin, name)
            if (rep["pairs"] or 0) < n or (rep["sampled"] or 0) < n:
                return False
        return True

    fleet.wait_until(done, timeout_s, f"pairs {expected} summarised")
    return reports
