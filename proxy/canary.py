"""A candidate on canary answers a share of live requests; the primary stands behind it.

Which requests: those whose sampling key (`proxy.sample_by`: a header such as the user's
id, else the request id) falls below the canary's weight on a point of its own
(`canary_point`: the key hashed with a salt, so the canary share does not eat the mirror
sample). The same key always gets the same model on every replica, and a user inside a
5% canary stays inside it at 25%.

Never worse for the user than the shadow: the candidate's answer is read whole (up to
`proxy.max_capture_bytes`) before anything is sent, and when the candidate cannot answer
(unreachable, timeout, a 5xx, an answer too large to hold) the request goes to the
primary as if there were no canary, and the fallback is counted. Requests whose body was
not held whole (streamed) always go to the primary.

Every answer on the data port names its model in `X-Shadowtrial-Served-By`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram
from yarl import URL

from proxy.metrics import LATENCY_BUCKETS
from proxy.mirror import sample_point
from proxy.routing import CanaryTarget

SERVED_BY = b"x-shadowtrial-served-by"
PRIMARY = "primary"  # X-Shadowtrial-Served-By of the primary's answers
SERVED = "served"  # canary outcome: the candidate answered
FALLBACK_TIMEOUT, FALLBACK_ERROR, FALLBACK_STATUS, FALLBACK_TOO_LARGE = (
    "fallback_timeout",
    "fallback_error",
    "fallback_http_error",
    "fallback_too_large",
)
_SALT = "canary\x00"


@dataclass(frozen=True, slots=True)
class CanaryAnswer:
    """The candidate's complete answer."""

    status: int
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def canary_point(key: str) -> float:
    """The key's position for canary routing, independent of its mirror sample point."""
    return sample_point(_SALT + key)


def pick(targets: Sequence[CanaryTarget], key: str) -> CanaryTarget | None:
    """The candidate answering this key, if any: stacked shares, in registry order."""
    if not targets:
        return None
    point, edge = canary_point(key), 0.0
    for target in targets:
        edge += target.weight
        if point < edge:
            return target
    return None


class CanaryCounts:
    """shadowtrial_canary_total{candidate, outcome}: served, or why it fell back; and
    shadowtrial_canary_latency_seconds{candidate}: the answers it served (kept out of the
    primary's latency)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "shadowtrial_canary",
            "Requests routed to a candidate on canary, by outcome: served (the candidate "
            "answered) or fallback_* (the primary answered instead)",
            ["candidate", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "shadowtrial_canary_latency_seconds",
            "Time from sending a canary request to the candidate's whole answer",
            ["candidate"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def count(self, candidate: str, outcome: str) -> None:
        """Count one canary request."""
        self.counter.labels(candidate, outcome).inc()

    def served(self, candidate: str, seconds: float) -> None:
        """Count one answer the candidate served, and its time."""
        self.count(candidate, SERVED)
        self.latency.labels(candidate).observe(seconds)


async def ask(
    session: aiohttp.ClientSession,
    target: CanaryTarget,
    method: str,
    path_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    limit: int,
) -> CanaryAnswer | str:
    """The candidate's whole answer, or the fallback outcome that says why there is none."""
    url = URL(target.url.rstrip("/") + path_query, encoded=True)
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    try:
        async with session.request(
            method, url, headers=headers, data=body or None, allow_redirects=False,
            timeout=timeout,
        ) as resp:  # fmt: skip
            if resp.status >= 500:
                return FALLBACK_STATUS
            data = await _read_whole(resp.content, limit)
            if data is None:
                return FALLBACK_TOO_LARGE
            return CanaryAnswer(resp.status, resp.raw_headers, data)
    except TimeoutError:
        return FALLBACK_TIMEOUT
    except (aiohttp.ClientError, OSError, ValueError):
        return FALLBACK_ERROR


async def _read_whole(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The body, or None once it grows over `limit` (the primary answers instead)."""
    parts: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


__all__ = [
    "PRIMARY",
    "SERVED",
    "SERVED_BY",
    "CanaryAnswer",
    "CanaryCounts",
    "CanaryTarget",
    "ask",
    "canary_point",
    "pick",
]
