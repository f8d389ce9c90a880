"""Open-loop load at a fixed rate, with latency measured from each request's scheduled time.

Debian has no wrk2, and wrk is closed-loop: when the server stalls, wrk stops sending and the
stall never shows in its percentiles (coordinated omission). Here request i is due at
start + i/rate whether or not earlier ones have finished; its latency runs from that due
time to the last byte of the response, so queueing anywhere (our own connection pool
included) is counted. Prints one `JSON {...}` line.

The client is a bare HTTP/1.1 keep-alive protocol on uvloop (one prebuilt request, answers
framed by Content-Length or chunked encoding): it shares the two cores with the proxy under
test, so it must cost as little CPU per request as possible (aiohttp's client cost about
as much as the proxy's own upstream exchange).

    python -m proxybench.openloop --url URL --body FILE --rate 1500 --duration 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import uvloop

from proxybench.results import percentile

HEAD_END = b"\r\n\r\n"
# uvloop's loop.time() advances in whole milliseconds: too coarse for sub-ms latencies.
clock = time.perf_counter


@dataclass
class Tally:
    """What the measured (post-warm-up) requests did."""

    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # send time minus due time
    dues: list[float] = field(default_factory=list)  # due time, for --timeline
    non_2xx: int = 0
    failed: int = 0


@dataclass
class _Job:
    due: float
    measured: bool


def response_length(head: bytes) -> tuple[int, int]:
    """(status, content length) from a response head; length -1 means chunked."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            return status, int(value.strip())
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return status, -1
    return status, 0


def chunked_complete(body: bytes) -> bool:
    """True once a chunked body has its last (zero-size) chunk and final CRLF."""
    return body.endswith(b"0\r\n\r\n")


class _Conn(asyncio.Protocol):
    """One keep-alive connection: send a request, parse one answer, repeat."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.job: _Job | None = None
        self.buf = bytearray()
        self.status = 0
        self.need = -2  # -2: reading the head; -1: chunked body; >= 0: body bytes left
        self.head_len = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, job: _Job) -> None:
        self.job = job
        self.buf.clear()
        self.need = -2
        assert self.transport is not None
        self.transport.write(self.client.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need == -2:
            end = self.buf.find(HEAD_END)
            if end < 0:
                return
            self.head_len = end + len(HEAD_END)
            self.status, self.need = response_length(bytes(self.buf[:end]))
        body_len = len(self.buf) - self.head_len
        done = chunked_complete(bytes(self.buf[-5:])) if self.need == -1 else body_len >= self.need
        if done and self.job is not None:
            job, self.job = self.job, None
            self.client.finished(self, job, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class Client:
    """A pool of keep-alive connections fed from one FIFO of due requests."""

    def __init__(self, url: str, body: bytes, max_conns: int, tally: Tally) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        self.loop = asyncio.get_running_loop()
        self.max_conns = max_conns
        self.tally = tally
        self.idle: list[_Conn] = []
        self.opening = 0
        self.total = 0
        self.waiting: deque[_Job] = deque()
        self.in_flight = 0
        self.last_sent = False  # set after the schedule's last request was submitted
        self.all_done = asyncio.Event()

    async def open(self, count: int) -> None:
        """Open `count` connections ahead of time, so connecting is not measured."""
        await asyncio.gather(*(self._connect() for _ in range(count)))

    async def _connect(self) -> None:
        self.opening += 1
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.opening -= 1
            if self.total == 0 and self.opening == 0:
                self._drop_waiting()  # the server is gone: fail what waits, do not spin
            return
        self.opening -= 1
        self.total += 1
        self._give(conn)

    def submit(self, job: _Job) -> None:
        """A request is due now: send it on an idle connection, or queue it (still timed)."""
        if job.measured:  # how late our own loop woke up: the generator's health
            self.tally.lags.append(clock() - job.due)
        self.in_flight += 1
        if self.idle:
            self.idle.pop().send(job)
            return
        self.waiting.append(job)
        if self.total + self.opening < self.max_conns:
            self.loop.create_task(self._connect())

    def _give(self, conn: _Conn) -> None:
        if self.waiting:
            conn.send(self.waiting.popleft())
        else:
            self.idle.append(conn)

    def finished(self, conn: _Conn, job: _Job, status: int) -> None:
        if job.measured:
            self.tally.latencies.append(clock() - job.due)
            self.tally.dues.append(job.due)
            if not 200 <= status < 300:
                self.tally.non_2xx += 1
        self._settle()
        self._give(conn)

    def lost(self, conn: _Conn) -> None:
        """A connection closed: its request (if any) failed; others carry on."""
        self.total -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.job is not None:
            if conn.job.measured:
                self.tally.failed += 1
            conn.job = None
            self._settle()
        if self.total == 0 and self.opening == 0 and self.waiting:
            self.loop.create_task(self._connect())  # one retry; failing it drops the queue

    def _drop_waiting(self) -> None:
        while self.waiting:
            if self.waiting.popleft().measured:
                self.tally.failed += 1
            self._settle()

    def _settle(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.last_sent:
            self.all_done.set()

    def close(self) -> None:
        """Close the idle connections (the busy ones ended with the run)."""
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def generate(
    url: str, body: bytes, rate: float, duration: float, warmup: float, conns: int
) -> Tally:
    """Send rate*(warmup+duration) requests on schedule; record only those after the warm-up."""
    tally = Tally()
    client = Client(url, body, conns, tally)
    await client.open(min(conns, 32))
    warm_n, total = int(rate * warmup), int(rate * (warmup + duration))
    start = clock() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        client.submit(_Job(due, i >= warm_n))
    client.last_sent = True
    if client.in_flight:
        try:
            await asyncio.wait_for(client.all_done.wait(), timeout=30)
        except TimeoutError:
            tally.failed += client.in_flight
    client.close()
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
    ap.add_argument("--duration", type=float, default=6.0, help="measured seconds")
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
