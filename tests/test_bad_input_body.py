"""Slow and stalled request bodies on a real `shadowtrial serve` process, over raw sockets
(issue 12 bug 2): a body has a time limit (408, counted), the bodies being read hold a
bounded number of bytes in all, and the accounting identity still holds afterwards."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from proxy_upstreams import MIRROR_OUTCOMES, Primary, wait_until
from reliability_harness import Served, rss_kib, serve, write_config
from servers import serve_app
from test_bad_input import body_of, read_all, status_of

from common.records import OUTCOMES

INFER = "/v2/models/m/infer"
MIB = 1_048_576


@dataclass
class Proxy:
    served: Served
    port: int

    def open(self, n: int) -> list[socket.socket]:
        return [socket.create_connection(("127.0.0.1", self.port), timeout=60) for _ in range(n)]

    def refused(self, reason: str) -> float:
        return self.served.metrics().get_value("shadowtrial_http_refused_total", reason=reason)


@contextlib.contextmanager
def _proxy(tmp: Path, redis_url: str, **proxy: object) -> Iterator[Proxy]:
    prefix = f"body{uuid.uuid4().hex[:10]}"
    with serve_app(Primary()) as primary_url, serve_app(Primary()) as candidate_url:
        config = write_config(
            tmp / "shadowtrial.toml",
            primary_url,
            redis_url,
            prefix,
            [{"name": "c", "url": candidate_url}],
            **proxy,
        )
        with serve(config) as served:
            yield Proxy(served, int(served.url.rsplit(":", 1)[1]))
            log = served.log_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def _head(length: int) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (INFER.encode(), length))  # fmt: skip


def _check_accounting(served: Served) -> None:
    """sampled = sum of mirror outcomes; candidate outcomes = recorded + dropped."""
    metrics = served.metrics()
    outcomes = {
        o: metrics.get_value("shadowtrial_mirror_outcomes_total", candidate="c", outcome=o)
        for o in MIRROR_OUTCOMES
    }
    sampled = metrics.get_value("shadowtrial_mirror_sampled_total", candidate="c")
    assert sampled == sum(outcomes.values()), (sampled, outcomes)
    handed = sum(outcomes[o] for o in OUTCOMES)
    stored = sum(
        metrics.get_value("shadowtrial_capture_total", candidate="c", outcome=o)
        for o in ("recorded", "dropped")
    )
    assert handed == stored, (outcomes, stored)


def test_stalled_one_mib_bodies_keep_memory_bounded_and_time_out(
    redis_url: str, tmp_path: Path
) -> None:
    """200 connections each send all but the last byte of a declared 1 MiB body, twice.
    Before, each pinned its whole body in the forwarder (RSS +200 MiB and more as they
    come); now the bodies being read share proxy.max_buffered_bytes, the rest stream to
    the primary uncaptured (mirror counted too_large), and every one gets 408 at
    proxy.body_timeout_ms. Measured here: +200 MiB per wave without the budget (1 GiB),
    +40-90 MiB with 16 MiB (the rest is uvicorn's per-connection read buffers)."""
    budget = 16 * MIB
    timeout_ms = 6000
    with _proxy(tmp_path, redis_url, body_timeout_ms=timeout_ms, max_buffered_bytes=budget) as px:
        before = rss_kib(px.served.pid)
        peaks = [_stalled_wave(px, timeout_ms) - before for _ in range(2)]
        full = px.served.metrics().get_value("shadowtrial_body_buffer_full_total")
        print(f"stalled 1 MiB bodies, 2 x 200: RSS +{peaks[0] // 1024} / +{peaks[1] // 1024} "
              f"MiB (budget {budget // MIB} MiB), {full:.0f} streamed uncaptured")  # fmt: skip
        assert px.refused("body_timeout") == 400
        assert full >= 300  # at most ~16 of each 200 fit the budget
        assert max(peaks) < 128 * 1024, f"RSS grew by {peaks} KiB"
        wait_until(lambda: _settled(px.served), what="mirrors settled")
        _check_accounting(px.served)


def _stalled_wave(px: Proxy, timeout_ms: int) -> int:
    """One wave of 200 stalled 1 MiB bodies; the proxy's RSS (KiB) while they stall."""
    socks = px.open(200)
    started = time.monotonic()
    body = b"[" + b"1," * (MIB // 2 - 1)  # MIB - 1 bytes, never closed
    for sock in socks:
        sock.sendall(_head(MIB) + body)
    sent_s = time.monotonic() - started
    time.sleep(0.5)
    peak = rss_kib(px.served.pid)
    answers = [read_all(sock) for sock in socks]
    elapsed = time.monotonic() - started
    for sock in socks:
        sock.close()
    print(f"wave: sent in {sent_s:.1f} s, 408 after {elapsed:.1f} s")
    assert sent_s < timeout_ms / 1000 - 1, "the test sent too slowly to judge the timeout"
    assert all(status_of(a) == 408 for a in answers), {status_of(a) for a in answers}
    assert orjson.loads(body_of(answers[0]))["error"] == "request timeout"
    assert elapsed < timeout_ms / 1000 + 5
    return peak


def _settled(served: Served) -> bool:
    metrics = served.metrics()
    return metrics.get_value("shadowtrial_mirrors_in_flight", candidate="c") == 0


def test_bodies_at_one_byte_a_second_are_closed_by_the_body_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    """50 connections send a declared 1,000-byte body a byte a second: before, they stayed
    open for as long as they liked (the head timeout ends at the head); now each gets 408
    at proxy.body_timeout_ms, and normal requests are served meanwhile."""
    timeout_ms = 2000
    with _proxy(tmp_path, redis_url, body_timeout_ms=timeout_ms, header_timeout_ms=1000) as px:
        started = time.monotonic()
        slow = px.open(50)
        stop = threading.Event()

        def drip() -> None:
            for sock in slow:
                sock.sendall(_head(1000) + b"[")
            while not stop.wait(1.0):
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"1")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            ok = _normal_request(px)
            answers = [read_all(sock) for sock in slow]
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            dripper.join(timeout=5)
            for sock in slow:
                sock.close()
        print(f"1 byte/s bodies: 50 closed with 408 after {elapsed:.2f} s")
        assert ok == 200
        assert all(status_of(a) == 408 for a in answers), answers[:3]
        assert timeout_ms / 1000 <= elapsed < timeout_ms / 1000 + 5
        assert px.refused("body_timeout") == 50
        assert px.served.process.poll() is None
        _check_accounting(px.served)


def _normal_request(px: Proxy) -> int:
    with socket.create_connection(("127.0.0.1", px.port), timeout=10) as sock:
        sock.sendall(_head(2).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + b"{}")
        return status_of(read_all(sock))


@pytest.mark.parametrize("head_first", [True, False])
def test_a_body_that_completes_in_time_is_served(
    redis_url: str, tmp_path: Path, head_first: bool
) -> None:
    """The body timer is per request: a body sent in parts within the limit is served,
    and a kept-alive connection's next request gets a fresh timer."""
    with _proxy(tmp_path, redis_url, body_timeout_ms=1500) as px:
        with socket.create_connection(("127.0.0.1", px.port), timeout=10) as sock:
            for _ in range(3):
                sock.sendall(_head(2) if head_first else _head(2) + b"{")
                time.sleep(1.0)
                sock.sendall(b"{}" if head_first else b"}")
                time.sleep(0.1)
            sock.sendall(_head(2).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + b"{}")
            raw = read_all(sock)
        assert raw.count(b"HTTP/1.1 200") == 4, raw[:500]
        assert px.refused("body_timeout") == 0


def test_a_pipelined_body_waits_for_the_answer_ahead_of_it(redis_url: str, tmp_path: Path) -> None:
    """A request pipelined behind one whose answer takes 2.5 s, with an incomplete body:
    its body timer must not write a 408 ahead of (or into) the first answer."""
    with (
        _proxy(tmp_path, redis_url, body_timeout_ms=1500) as px,
        socket.create_connection(("127.0.0.1", px.port), timeout=15) as sock,
    ):
        first = b"POST /slow/2500 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        sock.sendall(first + _head(10) + b"{")
        raw = read_all(sock)
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses == [200, 408], raw[:500]
