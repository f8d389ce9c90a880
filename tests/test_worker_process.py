"""A real `shadowtrial worker` process: SIGTERM drains the batch in hand and exits 0;
`--check` reports whether any worker is alive."""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from analysis.worker import Worker
from common.keys import WORKER_GROUP, Keys
from tests import pairs_factory as pf
from tests import worker_procs as wp

RECORDS = 5_000


def test_sigterm_finishes_the_batch_then_exits_zero(
    redis_client: redis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    same = [[0.8, 0.15, 0.05]]
    records = [pf.record(f"r{i}", same, same, ts_ms=pf.TS0 + i) for i in range(RECORDS)]
    pf.write(redis_client, keys.pairs("v2"), records, chunk=5000)
    config = wp.write_config(tmp_path, redis_url, prefix, batch=50, block_ms=100)
    assert wp.check(config) == 1  # nobody is working yet
    proc = wp.start_worker(config, "w")
    try:
        wp.wait_for(
            lambda: wp.applied_by(redis_client, keys, "w") > 0, 60, "a first batch", {"w": proc}
        )
        assert wp.check(config) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, wp.log_of(config, "w")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # nothing it read is left pending: the batch in hand was applied and acknowledged
    assert redis_client.xpending(keys.pairs("v2"), WORKER_GROUP)["pending"] == 0
    assert redis_client.get(keys.worker_health("w")) is None
    assert wp.check(config) == 1
    applied = wp.summarised_pairs(redis_client, keys)
    assert applied > 0
    # a new worker takes the rest: every record exactly once
    rest = pf.drain(Worker(redis_client, pf.settings(prefix)))
    assert applied + rest == RECORDS == wp.summarised_pairs(redis_client, keys)
