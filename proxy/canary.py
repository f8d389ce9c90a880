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

The comparison goes on with the roles reversed: when the candidate served a request that
the candidate's mirror sample would have taken, the primary is asked in the background
(`shadow_primary`: bounded by the mirror's slots, after the client has its answer) and
the pair is recorded in the candidate's stream with `served_by` = the candidate, each
side keeping its meaning (the primary's answer is `primary_*`), so agreement stays right.

Served-by accounting on /metrics, per process: every request a canary could take
(`shadowtrial_canary_eligible_total`) is served by a candidate, falls back (both in
`shadowtrial_canary_total{candidate, outcome}`), or is outside every share and goes to the
primary (`shadowtrial_canary_primary_total`): eligible = served + fallbacks + primary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram
from yarl import URL

from common.keys import FIELD_CANARY_ELIGIBLE, FIELD_CANARY_PREFIX
from common.records import OUTCOME_HTTP_ERROR, OUTCOME_OK
from proxy.capture import Capture
from proxy.metrics import LATENCY_BUCKETS
from proxy.mirror import Mirror, PrimaryAnswer, sample_point
from proxy.routing import CanaryTarget, RoutingTable
from proxy.runner import CandidateResult, MirrorRequest

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
    primary's latency). With `capture` set (proxy.app does), the same counts go to each
    candidate's buckets too, so every replica's add up in the report (`canary` section)."""

    def __init__(self, registry: CollectorRegistry, capture: Capture | None = None) -> None:
        self.capture = capture
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

        self.eligible = Counter(
            "shadowtrial_canary_eligible",
            "Requests a canary could take (method, path, body held whole) while one is on",
            registry=registry,
        )
        self.primary = Counter(
            "shadowtrial_canary_primary",
            "Requests a canary could take whose key fell outside every canary share",
            registry=registry,
        )

    def pick(self, targets: Sequence[CanaryTarget], key: str) -> CanaryTarget | None:
        """`pick`, counted: eligible = served + fallbacks + primary (module docstring)."""
        if not targets:
            return None
        self.eligible.inc()
        if self.capture is not None:
            ts_ms = int(time.time() * 1000)
            for each in targets:
                self.capture.count(each.name, FIELD_CANARY_ELIGIBLE, ts_ms)
        target = pick(targets, key)
        if target is None:
            self.primary.inc()
        return target

    def count(self, candidate: str, outcome: str) -> None:
        """Count one canary request."""
        self.counter.labels(candidate, outcome).inc()
        if self.capture is not None:
            self.capture.count(candidate, FIELD_CANARY_PREFIX + outcome, int(time.time() * 1000))

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


def shadow_primary(
    mirror: Mirror,
    session: aiohttp.ClientSession,
    routing: RoutingTable,
    target: CanaryTarget,
    request: MirrorRequest,
    key: str,
    answer: CanaryAnswer,
    elapsed_s: float,
    timeout_s: float,
    limit: int,
) -> bool:
    """After the candidate served `request`: ask the primary in the background and record
    the pair (roles reversed) when the candidate's mirror sample takes `key`."""
    mirrored = next((m for m in routing.mirrors if m.name == target.name), None)
    if mirrored is None:  # not mirrored (sample 0 or no runner): nothing to compare
        return False
    served = served_result(answer, elapsed_s)
    url = URL(routing.primary + request.path + (f"?{request.query}" if request.query else ""),
              encoded=True)  # fmt: skip

    async def primary() -> PrimaryAnswer:
        return await ask_primary(session, url, request, timeout_s, limit)

    return mirror.start_reversed(mirrored, key, request, served, primary)


def served_result(answer: CanaryAnswer, elapsed_s: float) -> CandidateResult:
    """The candidate's served answer as a mirror result (the candidate side of the pair)."""
    status = answer.status
    ok = 200 <= status < 300
    content_type = next(
        (v.decode("latin-1") for n, v in answer.raw_headers if n.lower() == b"content-type"), ""
    )
    return CandidateResult(
        OUTCOME_OK if ok else OUTCOME_HTTP_ERROR,
        status,
        answer.body,
        content_type,
        round(elapsed_s * 1000, 3),
        "" if ok else f"HTTP {status}",
    )


async def ask_primary(
    session: aiohttp.ClientSession, url: URL, request: MirrorRequest, timeout_s: float, limit: int
) -> PrimaryAnswer:
    """The primary's answer to a canary-served request, read whole up to `limit` (the pair's
    primary side); any failure is a failed primary, counted like a mirror's."""
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.request(
            request.method, url, headers=request.headers, data=request.body or None,
            allow_redirects=False, timeout=timeout,
        ) as resp:  # fmt: skip
            body = await _read_capped(resp.content, limit)  # cut at the limit, as mirrors
            elapsed_ms = (time.perf_counter() - started) * 1000
            content_type = resp.headers.get("content-type", "")
            return PrimaryAnswer(resp.status, body, content_type, elapsed_ms)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        elapsed_ms = (time.perf_counter() - started) * 1000
        return PrimaryAnswer(0, b"", "", elapsed_ms, failed=True)


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, its first `limit` bytes kept (a pair holds at most that much)."""
    parts: list[bytes] = []
    kept = 0
    while chunk := await content.readany():
        if kept < limit:
            parts.append(chunk[: limit - kept])
            kept += len(parts[-1])
    return b"".join(parts)


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
    "served_result",
    "shadow_primary",
]
