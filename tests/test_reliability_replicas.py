"""A proxy replica SIGKILLed while two serve the same trial: the other keeps answering
every request unchanged, and the real worker's summaries count exactly the pairs in the
stream (those the killed replica wrote before it died included, nothing twice).

A worker SIGKILLed mid-batch is tests/test_worker_kill.py (50,000 pairs, exact counts).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import redis
from reliability_harness import (
    INFER,
    LoadResult,
    model_servers,
    open_loop,
    serve,
    worker,
    write_config,
)
from reliability_servers import ANSWER

from common.keys import Keys
from tests import worker_procs as wp

RATE = 80  # per replica
LOAD_S = 6.0
KILL_AT_S = 2.0


@pytest.mark.slow  # ~20 s: two serve processes, a worker, six seconds of load
def test_killing_one_replica_leaves_the_other_serving_and_the_summaries_exact(
    tmp_path: Path, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    keys = Keys(prefix)
    with model_servers(primary="ok", candidate="ok") as models:
        configs = [
            write_config(
                tmp_path / f"replica{i}.toml", models.urls["primary"], redis_url, prefix,
                [{"name": "v2", "url": models.urls["candidate"]}],
                sections={"worker": {"block_ms": 100}},
            )
            for i in range(2)
        ]  # fmt: skip
        with serve(configs[0]) as doomed, serve(configs[1]) as survivor:
            results: dict[str, LoadResult] = {}
            threads = [
                threading.Thread(
                    target=lambda name=name, px=px: results.__setitem__(
                        name, open_loop(px.url + INFER, RATE, LOAD_S, (200, ANSWER))
                    )
                )
                for name, px in (("doomed", doomed), ("survivor", survivor))
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            while time.monotonic() - started < KILL_AT_S:
                time.sleep(0.02)
            before_kill = doomed.metrics().get_value(
                "shadowtrial_capture_total", candidate="v2", outcome="recorded"
            )
            doomed.process.send_signal(signal.SIGKILL)
            assert doomed.process.wait(timeout=10) == -signal.SIGKILL
            for thread in threads:
                thread.join(timeout=LOAD_S + 30)
            wp.wait_for(
                lambda: survivor.metrics().get_value(
                    "shadowtrial_capture_total", candidate="v2", outcome="recorded"
                )
                == survivor.metrics().get_value("shadowtrial_mirror_sampled_total", candidate="v2"),
                20, "the survivor to record every pair",
            )  # fmt: skip
            survived = survivor.metrics().get_value(
                "shadowtrial_capture_total", candidate="v2", outcome="recorded"
            )
            with worker(configs[1], "replicas-w1"):
                wp.wait_for(lambda: wp.consumed(redis_client, keys), 30, "the worker to finish")
            length = redis_client.xlen(keys.pairs("v2"))
            summarised = wp.summarised_pairs(redis_client, keys)
    ok, gone = results["survivor"], results["doomed"]
    seen = {"survivor": ok.sent, "doomed answered": gone.answered, "doomed failed": gone.failed}
    print("replicas:", seen, "stream", length, "summarised", summarised)
    assert ok.sent == RATE * LOAD_S and ok.failed == 0 and ok.mismatched == 0, ok.examples
    assert gone.failed > 0 and gone.mismatched == 0  # the dead one's clients saw it die
    assert survived == ok.sent
    assert survived + before_kill <= length <= survived + gone.answered
    assert summarised == length  # every pair in the stream, counted once
