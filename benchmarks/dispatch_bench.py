"""Dispatcher benchmark (`run = "dispatcher"`, issue #14): what one dispatcher process costs,
and how the candidate latency it measures compares with the proxy's.

    .venv/bin/python benchmarks/dispatch_bench.py              # measure, print, write RESULTS.md
    .venv/bin/python benchmarks/dispatch_bench.py --no-write   # leave RESULTS.md alone
    .venv/bin/python benchmarks/dispatch_bench.py --quick      # smoke run (~20 s)

1. **Mirrors per dispatcher CPU-second.** `--records` request records (the benchmark's
   request and primary answer, as a proxy queues them) are put in a candidate's requests
   stream, then one `shadowtrial dispatch` process calls the candidate stub for each and
   writes the pairs; its CPU (user + system, from /proc) over the records it finished.
2. **Candidate latency by mode.** One `shadowtrial serve` with two candidates on the same
   stub, `p` called by the proxy and `d` by a dispatcher, gets `--duration` s of traffic
   from `--conns` closed-loop clients; the pairs of the same requests are joined by
   request id and each mode's candidate_ms compared (p50, p99, and the median of the
   per-request difference d - p).

The stubs are proxybench/slow_upstream.py (aiohttp) answering the benchmark's bodies after
`--candidate-ms`. Redis is $REDIS_URL, else 127.0.0.1:6379; keys live under a random
prefix deleted at the end. Run it on a quiet machine before choosing a default (the
machine's other CPU use is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import httpx  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402
from proxybench.procs import cpu_seconds, descendants, machine_busy_seconds  # noqa: E402
from proxybench.results import replace_section  # noqa: E402
from proxybench.tools import free_port, port_open, wait_until  # noqa: E402

from common.keys import Keys  # noqa: E402
from common.records import MODE_DISPATCHER, OUTCOME_DISPATCHED, PairRecord  # noqa: E402

DATA = BENCH / "data"
RESULTS = BENCH / "RESULTS.md"
SECTION = "dispatch_bench"
HEADERS = [["content-type", "application/json"], ["x-shadowtrial-shadow", "1"]]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(BENCH)])
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


class Stack:
    """The processes of one run; every one is stopped at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}  # the stubs: "primary", "candidate"

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def stub(self, name: str, body: Path, delay_ms: float) -> int:
        port = free_port()
        cmd = [sys.executable, "-m", "proxybench.slow_upstream", "--port", str(port)]
        self.start(name, [*cmd, "--body", str(body), "--delay-ms", str(delay_ms)])
        wait_until(lambda: port_open(port), f"{name} on {port}", 20)
        return port

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def config(path: Path, redis_url: str, prefix: str, ports: dict[str, int], both: bool) -> Path:
    """A config with candidate `d` run by a dispatcher (and `p` by the proxy when `both`)."""
    cand = f"http://127.0.0.1:{ports['candidate']}"
    text = f"""
[proxy]
listen = "127.0.0.1:{ports.get("listen", free_port())}"
admin_listen = "127.0.0.1:{ports.get("admin", free_port())}"
primary = "http://127.0.0.1:{ports["primary"]}"
mirror_paths = ["**"]

[redis]
url = "{redis_url}"
prefix = "{prefix}"

[dispatch]
max_queue = 1000000
max_age_s = 600
block_ms = 100

[[candidates]]
name = "d"
url = "{cand}"
timeout_ms = 5000
run = "dispatcher"
"""
    if both:
        text += f'\n[[candidates]]\nname = "p"\nurl = "{cand}"\ntimeout_ms = 5000\n'
    path.write_text(text, encoding="utf-8")
    return path


def fill_queue(client: redis.Redis, keys: Keys, n: int) -> None:
    """`n` request records for `d`, as the proxy queues them."""
    body = (DATA / "body.json").read_bytes()
    answer = (DATA / "resp_primary.json").read_bytes()
    pipe = client.pipeline(transaction=False)
    now_ms = int(time.time() * 1000)
    for i in range(n):
        record = PairRecord(
            request_id=f"bench-{i}", candidate="d", ts_ms=now_ms, path="/v1/predict",
            headers={"content-type": "application/json"}, request_body=body,
            primary_status=200, primary_ms=1.0, primary_body=answer,
            primary_content_type="application/json", candidate_outcome=OUTCOME_DISPATCHED,
            mode=MODE_DISPATCHER,
        )  # fmt: skip
        fields = record.to_fields()
        fields[b"h"] = orjson.dumps(HEADERS)
        pipe.xadd(keys.requests("d"), fields)
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()


def dispatcher_throughput(stack: Stack, a: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    """Phase 1: one dispatcher drains `--records` records; its CPU per record."""
    prefix = f"dbench{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    try:
        path = config(stack.work / "phase1.toml", redis_url, prefix, stack.ports, both=False)
        proc = stack.start("dispatcher1", [sys.executable, "-m", "shadowtrial", "dispatch",
                                           "-c", str(path), "--log-level", "warning"])  # fmt: skip
        # Started (imports done, group created) before the clock starts: steady-state cost.
        wait_until(lambda: _has_group(client, keys.requests("d")), "the dispatcher up", 60)
        time.sleep(0.5)
        cpu0 = cpu_seconds(descendants(proc.pid))
        busy0, t0 = machine_busy_seconds(), time.monotonic()
        fill_queue(client, keys, a.records)
        last_cpu = 0.0

        def drained() -> bool:
            nonlocal last_cpu
            if proc.poll() is not None:
                raise RuntimeError(f"dispatcher exited: see {stack.work}/dispatcher1.log")
            last_cpu = (cpu_seconds(descendants(proc.pid)) - cpu0) or last_cpu
            return client.xlen(keys.requests("d")) == 0 and client.xlen(keys.pairs("d")) > 0

        wait_until(drained, "the queue drained", 600)
        wall = time.monotonic() - t0
        busy = machine_busy_seconds() - busy0
        pairs = client.xlen(keys.pairs("d"))
        stack.stop("dispatcher1")
        return {
            "records": a.records, "pairs": pairs, "cpu_s": last_cpu, "wall_s": wall,
            "per_cpu_s": pairs / last_cpu if last_cpu else float("nan"),
            "per_s": pairs / wall, "machine_busy_pct": 100 * busy / wall / (os.cpu_count() or 1),
        }  # fmt: skip
    finally:
        _delete(client, prefix)
        client.close()


async def _traffic(url: str, seconds: float, conns: int, body: bytes) -> int:
    sent = 0
    deadline = time.monotonic() + seconds
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=conns)) as http:

        async def client() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                response = await http.post(url, content=body, headers=headers)
                sent += response.status_code == 200

        await asyncio.gather(*(client() for _ in range(conns)))
    return sent


def latency_by_mode(stack: Stack, a: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    """Phase 2: the same requests' candidate latency, called by the proxy and dispatched."""
    prefix = f"dbench{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    ports = {**stack.ports, "listen": free_port(), "admin": free_port()}
    try:
        path = config(stack.work / "phase2.toml", redis_url, prefix, ports, both=True)
        st = [sys.executable, "-m", "shadowtrial"]
        stack.start("serve", [*st, "serve", "-c", str(path), "--log-level", "warning"])
        stack.start("dispatcher2", [*st, "dispatch", "-c", str(path), "--log-level", "warning"])
        wait_until(lambda: port_open(ports["listen"]), "serve", 60)
        url = f"http://127.0.0.1:{ports['listen']}/v1/predict"
        body = (DATA / "body.json").read_bytes()
        sent = asyncio.run(_traffic(url, a.duration, a.conns, body))

        def settled() -> bool:
            queued = client.xlen(keys.requests("d"))
            return queued == 0 and client.xlen(keys.pairs("d")) >= client.xlen(keys.pairs("p"))

        wait_until(settled, "every dispatched request written", 120)
        p = {r.request_id: r for r in _pairs(client, keys, "p")}
        d = {r.request_id: r for r in _pairs(client, keys, "d")}
        both = sorted(set(p) & set(d))
        pm = [p[i].candidate_ms for i in both if p[i].candidate_outcome == "ok"]
        dm = [d[i].candidate_ms for i in both if d[i].candidate_outcome == "ok"]
        diffs = [
            d[i].candidate_ms - p[i].candidate_ms for i in both
            if p[i].candidate_outcome == d[i].candidate_outcome == "ok"
        ]  # fmt: skip
        return {
            "sent": sent, "joined": len(both), "proxy": _quantiles(pm),
            "dispatcher": _quantiles(dm), "diff_p50_ms": _q(diffs, 0.5),
            "modes": sorted({r.mode for r in d.values()}),
        }  # fmt: skip
    finally:
        for name in ("dispatcher2", "serve"):
            if name in stack.procs:
                stack.stop(name)
        _delete(client, prefix)
        client.close()


def _has_group(client: redis.Redis, stream: str) -> bool:
    try:
        return any(g["name"] == b"shadowtrial-dispatchers" for g in client.xinfo_groups(stream))
    except redis.ResponseError:  # no stream yet
        return False


def _pairs(client: redis.Redis, keys: Keys, name: str) -> list[PairRecord]:
    return [PairRecord.from_fields(f) for _, f in client.xrange(keys.pairs(name))]


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _quantiles(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": _q(values, 0.5), "p99": _q(values, 0.99)}


def _delete(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def render(one: dict[str, Any], two: dict[str, Any], a: argparse.Namespace) -> str:
    """The RESULTS.md section."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    pp, dp = two["proxy"], two["dispatcher"]
    return "\n".join(
        [
            "## Dispatcher (`benchmarks/dispatch_bench.py`)",
            "",
            f"Run {when}, {os.cpu_count()} cores, candidate stub answering after "
            f"{a.candidate_ms:g} ms. Machine busy (all processes, phase 1): "
            f"{one['machine_busy_pct']:.0f}%." + (" **Smoke run (--quick).**" if a.quick else ""),
            "",
            "| measure | value |",
            "|---|---:|",
            f"| records dispatched (pairs written) | {one['pairs']:,} of {one['records']:,} |",
            f"| dispatcher CPU | {one['cpu_s']:.2f} s over {one['wall_s']:.1f} s |",
            f"| **mirrors per dispatcher CPU-second** | **{one['per_cpu_s']:,.0f}** |",
            f"| mirrors per second, one dispatcher | {one['per_s']:,.0f} |",
            f"| requests sent (phase 2, {a.conns} clients, {a.duration:g} s) | {two['sent']:,} |",
            f"| pairs joined by request id | {two['joined']:,} |",
            f"| candidate p50 / p99 ms, called by the proxy | {pp['p50']:.2f} / {pp['p99']:.2f} |",
            f"| candidate p50 / p99 ms, dispatched | {dp['p50']:.2f} / {dp['p99']:.2f} |",
            f"| **median per-request difference, dispatched - proxy** "
            f"| **{two['diff_p50_ms']:+.2f} ms** |",
            "",
            "Not a quiet-machine measurement unless the busy share above is low: confirm there "
            'before changing the default (`run = "proxy"`).',
        ]
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20_000, help="phase 1 records (20000)")
    ap.add_argument("--duration", type=float, default=10.0, help="phase 2 seconds (10)")
    ap.add_argument("--conns", type=int, default=8, help="phase 2 closed-loop clients (8)")
    ap.add_argument("--candidate-ms", type=float, default=0.0, help="stub delay (0)")
    ap.add_argument("--quick", action="store_true", help="smoke: 3000 records, 5 s")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.quick:
        a.records, a.duration = 3000, 5.0
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    with tempfile.TemporaryDirectory(prefix="dispatch_bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.ports = {
                "primary": stack.stub("primary", DATA / "resp_primary.json", 0),
                "candidate": stack.stub("candidate", DATA / "resp_candidate.json", a.candidate_ms),
            }
            one = dispatcher_throughput(stack, a, redis_url)
            two = latency_by_mode(stack, a, redis_url)
        finally:
            stack.close()
    text = render(one, two, a)
    print(text)
    if not a.no_write:
        old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else None
        RESULTS.write_text(replace_section(old, text, SECTION), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
