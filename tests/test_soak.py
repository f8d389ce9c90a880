"""Soak: steady moderate load with a mix of faulty candidates through a real `serve`
process and a real worker; memory flat and no file descriptor leaked.

60 s in the default run (CI). The 10-minute form:

    SHADOWTRIAL_SOAK_S=600 .venv/bin/python -m pytest tests/test_soak.py -s

Method: a warm-up (a fifth of the run, at least 10 s), then a quiet point (load paused,
every mirror ended, every pair summarised) where the proxy's and the worker's resident
memory (VmRSS) and open descriptors (/proc/PID/fd) are read; then the rest of the run
under the same load, and a second quiet point. Criteria: RSS at the second quiet point
at most 10% above the first, for each process; every client request answered with the
primary's exact answer; the accounting identity holds; the worker's summaries count
every pair in the stream; the worker's descriptors unchanged. Descriptors of the proxy:
the model servers close keep-alive connections idle for IDLE_S (as real servers do), so
at rest the proxy must hold no connection to any upstream and none in close_wait (told
apart through /proc/net/tcp: a leaked or forgotten socket shows up), and its other
descriptors (listeners, Redis, files, pipes) must stay constant (+1).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from reliability_harness import (
    INFER,
    Metrics,
    Served,
    fd_count,
    fd_kinds,
    model_servers,
    open_loop,
    rss_kib,
    serve,
    worker,
    write_config,
)
from reliability_servers import ANSWER

from common.keys import Keys
from common.records import OUTCOMES
from tests import worker_procs as wp

SOAK_S = float(os.environ.get("SHADOWTRIAL_SOAK_S", "60"))
WARMUP_S = max(10.0, SOAK_S / 5)
RATE = 60
RSS_GROWTH = 1.10
IDLE_S = 2.0  # the model servers close keep-alive connections idle this long
# name -> (behaviour, candidate settings)
MIX = {
    "healthy": ("ok", {"sample": 1.0}),
    "hang": ("hang", {"sample": 0.2, "timeout_ms": 500}),
    "fail": ("status500", {"sample": 0.2}),
    "reset": ("reset", {"sample": 0.2}),
    "slow": ("slow", {"sample": 0.05, "timeout_ms": 6000}),
    "garbage": ("garbage", {"sample": 0.2}),
    "large": ("large", {"sample": 0.05}),
}


def _quiet(proxy: Served, client: redis.Redis, keys: Keys) -> None:
    """Until no mirror is in flight, capture wrote everything and the worker caught up."""

    def settled() -> bool:
        metrics = proxy.metrics()
        handed = sum(
            metrics.total("shadowtrial_mirror_outcomes_total", outcome=o) for o in OUTCOMES
        )
        stored = metrics.total("shadowtrial_capture_total", outcome="recorded") + metrics.total(
            "shadowtrial_capture_total", outcome="dropped"
        )
        return metrics.total("shadowtrial_mirrors_in_flight") == 0 and handed == stored

    wp.wait_for(settled, 30, "mirrors and capture to settle")
    wp.wait_for(lambda: all(wp.consumed(client, keys, c) for c in MIX), 60, "the worker")


def _sampler(
    pids: dict[str, int], stop: threading.Event, out: dict[str, list[int]]
) -> Callable[[], None]:
    """RSS of each process once a second, until `stop`."""

    def run() -> None:
        while not stop.wait(1.0):
            for name, pid in pids.items():
                out[name].append(rss_kib(pid))

    return run


@pytest.mark.slow  # 60 s of load by default; SHADOWTRIAL_SOAK_S=600 for the 10-minute form
@pytest.mark.timeout(SOAK_S + 240)
def test_soak_memory_flat_no_descriptor_leak(
    tmp_path: Path, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    keys = Keys(prefix)
    servers = {n: kind for n, (kind, _) in MIX.items()}
    with model_servers(idle_s=IDLE_S, primary="ok", **servers) as models:
        candidates = [{"name": n, "url": models.urls[n], **extra} for n, (_, extra) in MIX.items()]
        config = write_config(
            tmp_path / "shadowtrial.toml", models.urls["primary"], redis_url, prefix, candidates,
            sections={"worker": {"block_ms": 200}, "redis": {"max_pairs": 200_000}},
        )  # fmt: skip
        # Upstreams that never leave a connection reusable: none may stay open at rest.
        never_pooled = {int(models.urls[n].rsplit(":", 1)[1]) for n in ("hang", "reset", "garbage")}
        with serve(config) as proxy, worker(config, "soak-w1") as analyst:
            pids = {"proxy": proxy.pid, "worker": analyst.pid}
            warm = open_loop(proxy.url + INFER, RATE, WARMUP_S, (200, ANSWER))
            _quiet(proxy, redis_client, keys)
            fds_first = _at_rest(proxy.pid, never_pooled)
            first = {n: (rss_kib(p), fd_count(p)) for n, p in pids.items()}
            series: dict[str, list[int]] = {n: [] for n in pids}
            stop = threading.Event()
            sampler = threading.Thread(target=_sampler(pids, stop, series), daemon=True)
            sampler.start()
            try:
                main = open_loop(proxy.url + INFER, RATE, SOAK_S - WARMUP_S, (200, ANSWER))
            finally:
                stop.set()
                sampler.join(timeout=5)
            _quiet(proxy, redis_client, keys)
            fds_second = _at_rest(proxy.pid, never_pooled)
            second = {n: (rss_kib(p), fd_count(p)) for n, p in pids.items()}
            metrics = proxy.metrics()
            assert analyst.process.poll() is None, analyst.log_text()[-2000:]
    summary = {n: {"rss_kib": (first[n][0], second[n][0], max(series[n])),
                   "fds": (first[n][1], second[n][1])} for n in pids}  # fmt: skip
    print(f"soak {SOAK_S:.0f}s at {RATE}/s:", summary, "requests", warm.sent + main.sent)
    print("proxy descriptors at the quiet points:", fds_first, fds_second)
    for run in (warm, main):
        assert run.failed == 0 and run.mismatched == 0 and run.answered == run.sent, run.examples
    for name in pids:
        assert second[name][0] <= first[name][0] * RSS_GROWTH, (name, summary[name])
    assert second["worker"][1] == first["worker"][1], summary["worker"]
    assert fds_second["other"] <= fds_first["other"] + 1, (fds_first, fds_second)
    _check_accounting(metrics, redis_client, keys)


def _at_rest(pid: int, never_pooled: set[int]) -> dict[str, int]:
    """The proxy's descriptors once every upstream has closed its idle connections
    (IDLE_S): none may be left open towards an upstream, nor in close_wait."""
    deadline = time.monotonic() + IDLE_S + 15
    while True:
        fds = _descriptors(pid, never_pooled)
        if fds["pooled"] == fds["never_pooled"] == fds["close_wait"] == 0:
            return fds
        assert time.monotonic() < deadline, f"connections left open at rest: {fds}"
        time.sleep(0.2)


def _descriptors(pid: int, never_pooled: set[int]) -> dict[str, int]:
    """The proxy's descriptors by kind: TCP connections (to upstreams that keep them
    alive, to those that can never reuse one), sockets a peer closed and the proxy did
    not, and the rest (listeners, Redis, files, pipes)."""
    out = {"pooled": 0, "never_pooled": 0, "close_wait": 0, "other": 0}
    for kind, n in fd_kinds(pid).items():
        state, _, port = kind.removeprefix("tcp:").partition(":")
        if kind.startswith("tcp:") and state == "close_wait":
            out["close_wait"] += n
        elif kind.startswith("tcp:") and state != "listen":
            out["never_pooled" if int(port) in never_pooled else "pooled"] += n
        else:
            out["other"] += n
    return out


def _check_accounting(metrics: Metrics, client: redis.Redis, keys: Keys) -> None:
    for name in MIX:
        sampled = metrics.get_value("shadowtrial_mirror_sampled_total", candidate=name)
        outcomes = metrics.total("shadowtrial_mirror_outcomes_total", candidate=name)
        recorded = metrics.get_value("shadowtrial_capture_total", candidate=name,
                                     outcome="recorded")  # fmt: skip
        assert sampled == outcomes > 0, name
        assert recorded == client.xlen(keys.pairs(name)) == wp.summarised_pairs(client, keys, name)
