"""Event-loop lag: how late the proxy's loop wakes a sleeper, as a Prometheus histogram.

Every latency the proxy records (the primary's, each candidate's) is timed on this loop,
so a loop that is late by 50 ms (a blocking call, a long GC pause, a CPU-starved host)
adds up to 50 ms to every span open at that moment. The lag is exported next to those
latencies (`shadowtrial_event_loop_lag_seconds`) so a slow p99 can be told apart from a
slow loop; the latency rule's noise floor (a secondary replica timed on the same loop)
cancels it in the verdict.
"""

from __future__ import annotations

import asyncio
import time

from proxy.metrics import Metrics
from proxy.tasks import stop_tasks

INTERVAL_S = 0.1


class LoopLag:
    """A task that sleeps INTERVAL_S at a time and records how late it woke."""

    def __init__(self, metrics: Metrics, interval_s: float = INTERVAL_S) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling (inside the serving loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling."""
        task, self._task = self._task, None
        if task is not None:
            await stop_tasks([task], 1.0, "event-loop lag")

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self._interval_s)
            self._metrics.loop_lag(time.perf_counter() - started - self._interval_s)
