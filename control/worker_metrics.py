"""The workers' health on the admin port's /metrics: pairs/s, lag and batch errors.

Workers serve no port; each writes its health key every heartbeat (analysis.worker:
`applied`, `pairs_per_s`, `errors`, `lag` per candidate) and its id into a sorted set by
time. Every proxy's /metrics reads the live ones (heartbeat within WORKER_HEALTH_TTL_S)
with one ZRANGEBYSCORE and one pipeline of GETs and appends them as Prometheus text, so the same
scrape that reads the proxies reads the workers (every replica shows the same values:
query with `max by (worker)`). Redis away or slow: the workers' series are left out,
/metrics still answers. Worker ids go into labels escaped; the set is trimmed here.

    shadowtrial_worker_pairs_per_second{worker}       pairs applied per second, last beat
    shadowtrial_worker_applied_total{worker}          pairs applied since it started
    shadowtrial_worker_batch_errors_total{worker}     read/apply rounds lost to errors
    shadowtrial_worker_lag{worker, candidate}         stream entries the group has not read
    shadowtrial_worker_heartbeat_timestamp_seconds{worker}
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import redis.asyncio as aredis

from common.keys import WORKER_HEALTH_TTL_S, Keys
from common.redis_client import STORE_FAILURES

log = logging.getLogger("shadowtrial.worker_metrics")

READ_TIMEOUT_S = 0.5  # a scrape must not hang on Redis
MAX_WORKERS = 1000  # series bound: the newest heartbeats first
FORGET_AFTER_S = 3600  # ids with no heartbeat for this long leave the set

_FAMILIES = (
    ("shadowtrial_worker_pairs_per_second", "gauge",
     "Pairs a comparison worker applied per second, over its last heartbeat interval"),
    ("shadowtrial_worker_applied_total", "counter",
     "Pairs a comparison worker applied since it started"),
    ("shadowtrial_worker_batch_errors_total", "counter",
     "Read or apply rounds a comparison worker lost to errors (Redis) since it started"),
    ("shadowtrial_worker_lag", "gauge",
     "Entries of a candidate's pair stream the workers' group has not read yet (Redis 7)"),
    ("shadowtrial_worker_heartbeat_timestamp_seconds", "gauge",
     "When the worker last wrote its health key (Unix time)"),
)  # fmt: skip


def _label(value: str) -> str:
    """A label value in the exposition format: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def exposition(healths: list[dict[str, Any]]) -> bytes:
    """Prometheus text for the workers' health records (HELP and TYPE always present, so
    rules naming these metrics load before any worker runs)."""
    samples: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    fields = {
        "shadowtrial_worker_pairs_per_second": "pairs_per_s",
        "shadowtrial_worker_applied_total": "applied",
        "shadowtrial_worker_batch_errors_total": "errors",
        "shadowtrial_worker_heartbeat_timestamp_seconds": "ts",
    }
    for health in healths:
        worker = _label(str(health.get("consumer", "?")))
        for name, field in fields.items():
            value = _number(health.get(field))
            if value is not None:
                samples[name].append(f'{name}{{worker="{worker}"}} {value!r}')
        lags = health.get("lag")
        for candidate, lag in lags.items() if isinstance(lags, dict) else ():
            value = _number(lag)
            if value is not None:
                samples["shadowtrial_worker_lag"].append(
                    f'shadowtrial_worker_lag{{worker="{worker}",candidate="{_label(str(candidate))}"}}'
                    f" {value!r}"
                )
    lines: list[str] = []
    for name, kind, help_text in _FAMILIES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples[name]]
    return ("\n".join(lines) + "\n").encode()


async def read_healths(
    client: aredis.Redis, keys: Keys, now: float | None = None
) -> list[dict[str, Any]]:
    """The health records of the workers that beat within WORKER_HEALTH_TTL_S."""
    now = time.time() if now is None else now
    ids = await client.zrevrangebyscore(
        keys.workers(), "+inf", now - WORKER_HEALTH_TTL_S, start=0, num=MAX_WORKERS
    )
    await client.zremrangebyscore(keys.workers(), "-inf", now - FORGET_AFTER_S)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)  # GETs, not MGET: keys of many cluster slots
    for worker_id in ids:
        pipe.get(keys.worker_health(worker_id.decode()))
    raws = await pipe.execute()
    healths = []
    for raw in raws:
        try:
            health = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            health = None
        if isinstance(health, dict):
            healths.append(health)
    return healths


async def worker_exposition(client: aredis.Redis, keys: Keys) -> bytes:
    """The workers' series for /metrics; only the HELP lines when Redis cannot say."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return exposition(await read_healths(client, keys))
    except (TimeoutError, *STORE_FAILURES) as exc:
        log.debug("worker health not read for /metrics: %s", type(exc).__name__)
        return exposition([])


__all__ = ["exposition", "read_healths", "worker_exposition"]
