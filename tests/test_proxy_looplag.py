"""Event-loop lag is measured on the real loop and exported next to the latencies."""

from __future__ import annotations

import asyncio
import time

from proxy.looplag import LoopLag
from proxy.metrics import Metrics


async def test_a_blocked_loop_shows_up_as_lag() -> None:
    metrics = Metrics()
    lag = LoopLag(metrics, interval_s=0.02)
    lag.start()
    await asyncio.sleep(0.1)
    calm = metrics.value("shadowtrial_event_loop_lag_seconds_sum")
    time.sleep(0.3)  # a blocking call on the loop: every open span would absorb it
    await asyncio.sleep(0.1)
    await lag.stop()
    blocked = metrics.value("shadowtrial_event_loop_lag_seconds_sum") - calm
    assert metrics.value("shadowtrial_event_loop_lag_seconds_count") >= 3
    assert blocked >= 0.25
    assert b"shadowtrial_event_loop_lag_seconds_bucket" in metrics.exposition()
