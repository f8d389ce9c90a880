"""Exactly once under kill -9: three real worker processes over 50,000 pair records, one
SIGKILLed while it holds a batch; the summaries count every record exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis

from common.keys import WORKER_GROUP, Keys
from tests import pairs_factory as pf
from tests import worker_procs as wp

RECORDS = 50_000


def _records() -> list:
    same, flipped = [[0.8, 0.15, 0.05]], [[0.2, 0.7, 0.1]]
    countries = ("FR", "DE", "US")
    return [
        pf.record(
            f"r{i}",
            same,
            flipped if i % 7 == 0 else same,
            country=countries[i % 3],
            ts_ms=pf.TS0 + i,
        )
        for i in range(RECORDS)
    ]


def _holds_a_batch(client: redis.Redis, keys: Keys, consumer: str) -> bool:
    pending = client.xpending(keys.pairs("v2"), WORKER_GROUP)
    held = {c["name"]: c["pending"] for c in pending.get("consumers", [])}
    return held.get(consumer, held.get(consumer.encode(), 0)) > 0


@pytest.mark.slow  # 15-25 s on 2 shared cores: 50,000 pairs through three processes
def test_sigkill_mid_run_loses_and_duplicates_nothing(
    redis_client: redis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    assert pf.write(redis_client, keys.pairs("v2"), _records(), chunk=5000) == RECORDS
    config = wp.write_config(
        tmp_path, redis_url, prefix, batch=500, claim_idle_ms=500, block_ms=100
    )
    names = ["victim", "w1", "w2"]
    procs = {name: wp.start_worker(config, name) for name in names}
    try:
        wp.wait_for(
            lambda: (
                wp.applied_by(redis_client, keys, "victim") > 0
                and _holds_a_batch(redis_client, keys, "victim")
            ),
            60,
            "the victim to apply a batch and read the next",
            procs,
        )
        procs["victim"].send_signal(signal.SIGKILL)
        assert procs["victim"].wait(timeout=10) == -signal.SIGKILL
        assert wp.summarised_pairs(redis_client, keys) < RECORDS  # killed mid-run
        wp.wait_for(lambda: wp.consumed(redis_client, keys), 90, "the stream to be consumed", procs)
        assert wp.summarised_pairs(redis_client, keys) == RECORDS
        for name in ("w1", "w2"):
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(timeout=15) == 0, wp.log_of(config, name)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
