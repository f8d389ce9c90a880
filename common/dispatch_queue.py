"""How far behind the dispatchers are: a `run = "dispatcher"` candidate's request queue.

Dispatchers delete each request record once they are done with it (common/lua/dispatch.lua),
so the requests stream holds exactly what is still waiting: its length is the queue depth
and the age of its oldest entry (its id is the time it was queued) is the dispatch lag.
Read by the dispatchers' and the proxies' /metrics and by the report; one XLEN and one
XRANGE COUNT 1 per candidate, pipelined by the caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from common.keys import Keys


@dataclass(frozen=True)
class QueueState:
    """Requests waiting for a dispatcher, and the age of the oldest (0 when none)."""

    depth: int
    lag_s: float

    def as_dict(self) -> dict[str, Any]:
        """The report's form."""
        return {"queue_depth": self.depth, "lag_s": round(self.lag_s, 3)}


def queue(pipe: Any, keys: Keys, candidate: str) -> None:
    """Queue the two reads of one candidate's state on a pipeline (sync or asyncio)."""
    stream = keys.requests(candidate)
    pipe.xlen(stream)
    pipe.xrange(stream, "-", "+", count=1)


def parse(depth: Any, first: Any, now_s: float | None = None) -> QueueState:
    """The state from the two answers `queue` asked for (an answer that is an error or
    of an unexpected shape reads as an empty queue, never raises)."""
    now_ms = (time.time() if now_s is None else now_s) * 1000
    n = depth if isinstance(depth, int) and not isinstance(depth, bool) else 0
    lag = 0.0
    if n and isinstance(first, list) and first:
        lag = max(0.0, (now_ms - id_ms(first[0][0])) / 1000)
    return QueueState(n, lag)


def id_ms(entry_id: bytes | str) -> int:
    """The milliseconds part of a stream entry id (0 when it is not one)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    head = text.partition("-")[0]
    return int(head) if head.isdigit() else 0


__all__ = ["QueueState", "id_ms", "parse", "queue"]
