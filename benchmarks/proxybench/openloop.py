"""Open-loop load at a fixed rate, with latency measured from each request's scheduled time.

Debian has no wrk2, and wrk is closed-loop: when the server stalls, wrk stops sending and the
stall never shows in its percentiles (coordinated omission). Here request i is due at
start + i/rate whether or not earlier ones have finished; its latency runs from that due
time to the last byte of the response, so queueing anywhere (our own connection pool
included) is counted. Prints one `JSON {...}` line.

    python -m proxybench.openloop --url URL --body FILE --rate 1500 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop

from proxybench.results import percentile


@dataclass
class Tally:
    """What the measured (post-warm-up) requests did."""

    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # send time minus due time
    dues: list[float] = field(default_factory=list)  # due time, for --timeline
    non_2xx: int = 0
    failed: int = 0


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, due: float, tally: Tally | None
) -> None:
    loop = asyncio.get_running_loop()
    lag = loop.time() - due
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError):
        if tally is not None:
            tally.failed += 1
        return
    if tally is None:
        return
    tally.latencies.append(loop.time() - due)
    tally.lags.append(lag)
    tally.dues.append(due)
    if not 200 <= status < 300:
        tally.non_2xx += 1


async def generate(
    url: str, body: bytes, rate: float, duration: float, warmup: float, conns: int
) -> Tally:
    """Send rate*(warmup+duration) requests on schedule; record only those after the warm-up."""
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=conns)
    loop = asyncio.get_running_loop()
    warm_n, total = int(rate * warmup), int(rate * (warmup + duration))
    pending: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time() + 0.05
        for i in range(total):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(
                _one(session, url, body, due, tally if i >= warm_n else None)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
    return tally


def summary(tally: Tally, rate: float, duration: float) -> dict[str, float]:
    """Percentiles in ms, counts, and how late the generator itself sent (its own health)."""
    lat = sorted(x * 1000 for x in tally.latencies)
    lag = sorted(x * 1000 for x in tally.lags)
    return {
        "rate": rate,
        "duration_s": duration,
        "ok": len(lat) - tally.non_2xx,
        "errors": tally.non_2xx + tally.failed,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "p999_ms": percentile(lat, 99.9),
        "max_ms": lat[-1] if lat else float("nan"),
        "lag_p99_ms": percentile(lag, 99),
    }


def write_timeline(tally: Tally, path: Path) -> None:
    """Each measured request's due time (s from the first) and latency (ms), in due order."""
    pairs = sorted(zip(tally.dues, tally.latencies, strict=True))
    first = pairs[0][0] if pairs else 0.0
    path.write_text("".join(f"{d - first:.4f} {lat * 1000:.3f}\n" for d, lat in pairs))


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the schedule on uvloop, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", type=Path, required=True)
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds first")
    ap.add_argument("--conns", type=int, default=256, help="connection pool limit")
    ap.add_argument("--timeline", type=Path, help="write 'seconds_since_first latency_ms' lines")
    a = ap.parse_args(argv)
    body = a.body.read_bytes()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        tally = runner.run(generate(a.url, body, a.rate, a.duration, a.warmup, a.conns))
    if a.timeline is not None:
        write_timeline(tally, a.timeline)
    sys.stdout.write("JSON " + json.dumps(summary(tally, a.rate, a.duration)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
