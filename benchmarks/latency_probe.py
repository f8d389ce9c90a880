"""How much of a candidate's measured latency is the candidate, and how much the measurement.

    PYTHONPATH=. python benchmarks/latency_probe.py --rate 200 --seconds 10

Starts two identical model servers (shadowtrial.examples.model_server, variant v1) and
`shadowtrial serve` with the first as primary and the second as a twin candidate sampled
at 1.0, sends an open-loop stream of OIP-v2 requests through the proxy, then reads the
pair records from Redis and prints the p50 / p99 of primary_ms and candidate_ms and their
ratios. It also probes both servers directly, one request at a time, so the servers' own
difference can be told from the proxy's. Needs Redis at --redis-url (a fresh key prefix
per run). The twin is the same code behind a second process: any ratio far from 1 is the
measurement, not the model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import numpy as np
import redis

from common.keys import Keys
from common.records import PairRecord
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent

BODY = (
    b'{"inputs":[{"name":"features","shape":[8,5],"datatype":"FP32","data":['
    + b",".join(str((i * 37 % 11) / 10 - 0.5).encode() for i in range(40))
    + b"]}]}"
)
PATH = "/v2/models/model/infer"


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextmanager
def running(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    """Terminate (then kill) the processes we started, whatever happens."""
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _config(
    path: Path, ports: dict[str, int], redis_url: str, prefix: str, automation: bool
) -> None:
    gate = "\n[gate]\nauto_reject = true\ncheck_interval_s = 0.5\n" if automation else ""
    path.write_text(
        gate
        + f"""[proxy]
listen = "127.0.0.1:{ports["proxy"]}"
admin_listen = "127.0.0.1:{ports["admin"]}"
primary = "http://127.0.0.1:{ports["primary"]}"

[redis]
url = "{redis_url}"
prefix = "{prefix}"

[[candidates]]
name = "twin"
url = "http://127.0.0.1:{ports["candidate"]}"
sample = 1.0
timeout_ms = 5000

[[candidates]]
name = "replica"
url = "http://127.0.0.1:{ports["replica"]}"
sample = 1.0
timeout_ms = 5000
role = "secondary"
"""
    )


async def _open_loop(url: str, rate: float, seconds: float) -> list[float]:
    """Send at a fixed rate regardless of answers; client-side latency in ms."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            start = time.perf_counter()
            async with session.post(url, data=BODY) as resp:
                await resp.read()
            latencies.append((time.perf_counter() - start) * 1000)

        tasks = []
        begin = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


async def _closed_loop(url: str, concurrency: int, seconds: float) -> list[float]:
    """`concurrency` clients, each sending its next request when the last is answered."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=BODY) as resp:
                    await resp.read()
                latencies.append((time.perf_counter() - start) * 1000)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


async def _direct(url: str, n: int) -> list[float]:
    """One request at a time, straight to a model server (no proxy)."""
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            start = time.perf_counter()
            async with session.post(url, data=BODY) as resp:
                await resp.read()
            out.append((time.perf_counter() - start) * 1000)
    return out


def _quantiles(values: list[float] | np.ndarray) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(np.quantile(a, 0.5)), float(np.quantile(a, 0.99))


def _records(redis_url: str, prefix: str, name: str, expected: int) -> list[PairRecord]:
    client = redis.Redis.from_url(redis_url)
    key = Keys(prefix).pairs(name)
    deadline = time.monotonic() + 15
    while client.xlen(key) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return [PairRecord.from_fields(fields) for _, fields in client.xrange(key)]


def _clean(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for k in client.scan_iter(f"{prefix}*"):
        client.delete(k)


def _line(
    name: str, p: list[float] | np.ndarray, c: list[float] | np.ndarray, ref: str = "primary"
) -> str:
    p50p, p99p = _quantiles(p)
    p50c, p99c = _quantiles(c)
    return (
        f"{name:<24} {ref} p50 {p50p:7.2f} p99 {p99p:7.2f} | candidate p50 {p50c:7.2f}"
        f" p99 {p99c:7.2f} | ratio p50 {p50c / p50p:5.2f} p99 {p99c / p99p:5.2f}"
    )


def main() -> None:
    """Run the probe once and print one line per measurement."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=0, help="closed loop (0: open)")
    parser.add_argument(
        "--automation", action="store_true", help="a worker, and auto_reject every 0.5 s"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    ports = {k: free_port() for k in ("primary", "candidate", "replica", "proxy", "admin")}
    prefix = f"latprobe{secrets.token_hex(4)}"
    servers = [
        _python("-m", "shadowtrial.examples.model_server", "--port", str(ports[k]))
        for k in ("primary", "candidate", "replica")
    ]
    with tempfile.TemporaryDirectory() as tmp, running(*servers):
        for k in ("primary", "candidate", "replica"):
            wait_for_port(ports[k])
        direct_p = asyncio.run(_direct(f"http://127.0.0.1:{ports['primary']}{PATH}", 300))
        direct_c = asyncio.run(_direct(f"http://127.0.0.1:{ports['candidate']}{PATH}", 300))
        print(_line("direct, one at a time", direct_p, direct_c))
        config = Path(tmp) / "st.toml"
        _config(config, ports, args.redis_url, prefix, args.automation)
        proxy = _python("-m", "shadowtrial", "serve", "--config", str(config), "--log-level",
                        "warning")  # fmt: skip
        extra = [_python("-m", "shadowtrial", "worker", "--config", str(config))]
        with running(proxy, *(extra if args.automation else [])):
            wait_for_port(ports["proxy"], timeout_s=30)
            url = f"http://127.0.0.1:{ports['proxy']}{PATH}"
            asyncio.run(_open_loop(url, 50, 1))  # warm-up, not counted
            if args.concurrency:
                client = asyncio.run(_closed_loop(url, args.concurrency, args.seconds))
            else:
                client = asyncio.run(_open_loop(url, args.rate, args.seconds))
            records = _records(args.redis_url, prefix, "twin", 50 + len(client))
            replica = _records(args.redis_url, prefix, "replica", 50 + len(client))
            _clean(args.redis_url, prefix)
    records = records[-len(client) :]
    replica = replica[-len(client) :]
    primary = [r.primary_ms for r in records]
    candidate = [r.candidate_ms for r in records]
    load = f"c={args.concurrency}" if args.concurrency else f"{args.rate:g} req/s"
    print(f"{len(records)} pairs, {load}; client p50/p99 {_quantiles(client)}")
    print(_line("through the proxy", primary, candidate))
    print(_line("same, against replica", [r.candidate_ms for r in replica], candidate, "replica"))
    extra = [r for r in records if getattr(r, "candidate_connect_ms", None) is not None]
    if extra:
        print("connect ms > 0 on", sum(1 for r in extra if r.candidate_connect_ms > 0), "pairs")


if __name__ == "__main__":
    main()
