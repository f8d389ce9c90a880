"""Faulty candidates under load never change the primary's answers, nor its p99 beyond
noise: two `shadowtrial serve` processes (no candidates / six faulty ones, each sampled
at SAMPLE) in front of the same primary, the same fixed-rate open-loop load on both, in
interleaved rounds.

Criterion (RELIABILITY.md): every answer of both runs is the primary's exact status and
body and no request fails; and, pairing each round with candidates with the round without
them just before it, the median over the pairs of (p99 with - 1.2 x p99 without) is at
most P99_FLOOR_MS. On two shared cores a p99 of a few ms moves by a few ms between
identical runs, and a burst of outside load can spoil a round: pairing adjacent rounds
cancels slow drift, the median ignores a spoiled minority of rounds, and the floor
absorbs the jitter of a small p99. When other processes saturate both cores, the proxy
doing more work waits more for a core whatever it does: an attempt that fails is
repeated, up to ATTEMPTS, and the best one is judged. The pooled p99s are printed too
(with -s).
"""

from __future__ import annotations

import socket
import statistics
import time
from pathlib import Path

import pytest
import redis
from reliability_harness import (
    INFER,
    LoadResult,
    Metrics,
    Served,
    model_servers,
    open_loop,
    serve,
    write_config,
)
from reliability_servers import ANSWER, LARGE

from common.keys import Keys
from common.records import OUTCOMES, PairRecord

RATE = 100  # requests per second: moderate, so a p99 measures waiting, not saturation
ROUND_S = 2.0
ROUNDS = 6
ATTEMPTS = 3  # a saturated machine can spoil a whole attempt; a regression fails all three
P99_RATIO = 1.2
P99_FLOOR_MS = 3.0
SAMPLE = 0.25
# candidate name -> (behaviour, extra settings, the outcome every mirror must end in)
FAULTS = {
    "hang": ("hang", {"timeout_ms": 1000}, "timeout"),
    "fail": ("status500", {}, "http_error"),
    "reset": ("reset", {}, "error"),
    "slow": ("slow", {"timeout_ms": 6000}, "ok"),  # answers after 5 s
    "garbage": ("garbage", {}, "error"),
    "large": ("large", {}, "ok"),  # a body 100x the usual one
}
MIRROR_OUTCOMES = (*OUTCOMES, "shed", "too_large", "primary_failed")


def _raw_exchange(url: str, request_id: str) -> bytes:
    """One request on a fresh connection; the whole answer as it came off the wire."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    body = b'{"inputs": [1]}'
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _check_outcomes(shadow: Served, client: redis.Redis, prefix: str) -> Metrics:
    metrics = shadow.metrics()
    for name, (_, _, outcome) in FAULTS.items():
        sampled = metrics.get_value("shadowtrial_mirror_sampled_total", candidate=name)
        outcomes = {
            o: metrics.get_value("shadowtrial_mirror_outcomes_total", candidate=name, outcome=o)
            for o in MIRROR_OUTCOMES
        }
        assert sampled > 0 and outcomes[outcome] == sampled, (name, sampled, outcomes)
        recorded = metrics.get_value(
            "shadowtrial_capture_total", candidate=name, outcome="recorded"
        )
        assert recorded == sampled == client.xlen(Keys(prefix).pairs(name)), name
    return metrics


@pytest.mark.slow  # ~40 s: 2 x 6 interleaved rounds of 2 s, and the 5 s candidate drains
def test_faulty_candidates_leave_primary_answers_and_p99_alone(
    tmp_path: Path, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    with (
        model_servers(primary="ok") as primary,
        model_servers(**{name: kind for name, (kind, _, _) in FAULTS.items()}) as faulty,
    ):
        candidates = [
            {"name": name, "url": faulty.urls[name], "sample": SAMPLE, **extra}
            for name, (_, extra, _) in FAULTS.items()
        ]
        plain_cfg = write_config(tmp_path / "plain.toml", primary.urls["primary"], redis_url,
                                 f"{prefix}-plain")  # fmt: skip
        shadow_cfg = write_config(tmp_path / "shadow.toml", primary.urls["primary"], redis_url,
                                  prefix, candidates, mirror_concurrency=2048)  # fmt: skip
        with serve(plain_cfg) as plain, serve(shadow_cfg) as shadow:
            for px in (plain, shadow):  # warm both: connection pools, code paths
                open_loop(px.url + INFER, RATE, 1.0)
            verdicts = []
            for _ in range(ATTEMPTS):
                verdicts.append(_attempt(plain, shadow))
                if verdicts[-1][0] <= P99_FLOOR_MS:
                    break
            same_id = [_raw_exchange(px.url, "same-request-id") for px in (plain, shadow)]
            _wait_settled(shadow)
            metrics = _check_outcomes(shadow, redis_client, prefix)
    assert same_id[0] == same_id[1]  # status line, headers and body, byte for byte
    assert same_id[0].endswith(b"\r\n\r\n" + ANSWER)
    assert min(excess for excess, _ in verdicts) <= P99_FLOOR_MS, verdicts
    requests = metrics.total("shadowtrial_requests_total")
    assert requests == (len(verdicts) * ROUNDS * ROUND_S + 1.0) * RATE + 1
    large = redis_client.xrange(Keys(prefix).pairs("large"), count=1)[0][1]
    assert PairRecord.from_fields(large).candidate_body == LARGE


def _attempt(plain: Served, shadow: Served) -> tuple[float, dict[str, object]]:
    """ROUNDS interleaved rounds on both proxies: every answer checked; the median over
    the round pairs of (p99 with - P99_RATIO x p99 without), and what was measured."""
    runs: dict[str, list[LoadResult]] = {"plain": [], "shadow": []}
    for _ in range(ROUNDS):
        for name, px in (("plain", plain), ("shadow", shadow)):
            runs[name].append(open_loop(px.url + INFER, RATE, ROUND_S, (200, ANSWER)))
    for name, results in runs.items():
        for result in results:
            assert result.failed == 0 and result.mismatched == 0, (name, result.examples)
            assert result.answered == result.sent == int(RATE * ROUND_S)
    p99 = {name: [round(r.percentile_ms(99), 2) for r in results] for name, results in runs.items()}
    excess = statistics.median(s - P99_RATIO * b for s, b in zip(*p99.values(), strict=True))
    seen = {"p99_ms": p99, "pooled_p99_ms": {n: _pooled_p99(r) for n, r in runs.items()}}
    print(f"faults: median excess {excess:.2f} ms", seen)
    return excess, seen


def _pooled_p99(results: list[LoadResult]) -> float:
    pooled = LoadResult()
    for result in results:
        pooled.latencies += result.latencies
    return round(pooled.percentile_ms(99), 2)


def _wait_settled(shadow: Served) -> None:
    """Until no mirror is in flight (the 5 s candidate answers last) and every pair handed
    to capture is written."""
    deadline = time.monotonic() + 20
    while True:
        metrics = shadow.metrics()
        handed = sum(
            metrics.total("shadowtrial_mirror_outcomes_total", outcome=o) for o in OUTCOMES
        )
        stored = metrics.total("shadowtrial_capture_total", outcome="recorded") + metrics.total(
            "shadowtrial_capture_total", outcome="dropped"
        )
        if metrics.total("shadowtrial_mirrors_in_flight") == 0 and handed == stored:
            return
        assert time.monotonic() < deadline, "mirrors still in flight"
        time.sleep(0.1)
