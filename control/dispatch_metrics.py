"""The dispatch queues on the admin port's /metrics: depth and lag per dispatched candidate.

Every proxy's /metrics reads, for each `run = "dispatcher"` candidate (the config file's
and the registry's), the length of its requests stream and the age of its oldest entry
(common.dispatch_queue): one pipeline, READ_TIMEOUT_S at most. So a deployment that
scrapes only the proxies still sees when the dispatchers fall behind (alert
ShadowtrialDispatchBehind). Every replica shows the same values: query with
`max by (candidate)`. Redis away or slow: only the HELP lines, /metrics still answers.

    shadowtrial_dispatch_queue_depth{candidate}   request records waiting for a dispatcher
    shadowtrial_dispatch_lag_seconds{candidate}   age of the oldest one (0: none waiting)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import redis.asyncio as aredis

from common import dispatch_queue
from common.dispatch_queue import QueueState
from common.keys import Keys
from common.redis_client import STORE_FAILURES
from control.worker_metrics import _label

log = logging.getLogger("shadowtrial.dispatch_metrics")

READ_TIMEOUT_S = 0.5
MAX_CANDIDATES = 200  # series bound

_FAMILIES = (
    ("shadowtrial_dispatch_queue_depth", "Request records waiting for a dispatcher"),
    ("shadowtrial_dispatch_lag_seconds", "Age of the oldest request record waiting"),
)


def exposition(states: dict[str, QueueState]) -> bytes:
    """Prometheus text for the queues read (HELP and TYPE lines even when none)."""
    lines: list[str] = []
    for (name, help_text), value_of in zip(
        _FAMILIES, (lambda s: s.depth, lambda s: s.lag_s), strict=True
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for candidate in sorted(states):
            lines.append(f'{name}{{candidate="{_label(candidate)}"}} {value_of(states[candidate])}')
    return ("\n".join(lines) + "\n").encode()


async def read_states(
    client: aredis.Redis, keys: Keys, names: Iterable[str]
) -> dict[str, QueueState]:
    """Each candidate's queue state, in one pipeline."""
    wanted = sorted(set(names))[:MAX_CANDIDATES]
    if not wanted:
        return {}
    pipe = client.pipeline(transaction=False)
    for name in wanted:
        dispatch_queue.queue(pipe, keys, name)
    answers = await pipe.execute(raise_on_error=False)
    return {
        name: dispatch_queue.parse(answers[2 * i], answers[2 * i + 1])
        for i, name in enumerate(wanted)
    }


async def dispatch_exposition(client: aredis.Redis, keys: Keys, names: Iterable[str]) -> bytes:
    """The queues' series for /metrics; only the HELP lines when Redis cannot say."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return exposition(await read_states(client, keys, names))
    except (TimeoutError, *STORE_FAILURES) as exc:
        log.debug("dispatch queues not read for /metrics: %s", type(exc).__name__)
        return exposition({})


__all__ = ["dispatch_exposition", "exposition", "read_states"]
