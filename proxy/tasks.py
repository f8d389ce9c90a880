"""Stopping background tasks within a deadline, whatever they do with their cancellation.

`task.cancel(); await task` waits forever for a task that swallows its cancellation: a
library that turns a CancelledError into its own error (or a timeout that expires at the
same instant) inside a `while True` loop that retries on that error. That is how `serve`
once ignored SIGTERM for 13 minutes (issue 12, bug 6). `stop_tasks` cancels again until
the tasks end or the deadline passes, then leaves them behind with a warning: a shutdown
always finishes. The caller's own cancellation is never swallowed (asyncio.wait raises it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable

log = logging.getLogger("shadowtrial.tasks")

RECANCEL_S = 0.1  # how often a task that is still running is cancelled again


async def stop_tasks(tasks: Iterable[asyncio.Task[object]], timeout_s: float, what: str) -> bool:
    """Cancel `tasks` and wait up to `timeout_s` for them; True when every one ended.

    Their exceptions are logged, not raised: stopping must go on with the next step."""
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(left, RECANCEL_S))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("%s task ended with %r", what, task.exception())
    if pending:
        log.warning("%d %s task(s) did not stop within %.1f s; left behind",
                    len(pending), what, timeout_s)  # fmt: skip
    return not pending


async def bounded(step: Awaitable[object], timeout_s: float, what: str) -> None:
    """Run one shutdown step for at most `timeout_s` (then cancel it, as stop_tasks does);
    its exception is logged, not raised."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.warning("%s did not finish within %.1f s; going on", what, timeout_s)
    await stop_tasks([task], RECANCEL_S * 5, what)
