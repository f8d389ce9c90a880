"""The registry in Redis: consistent reads and atomic changes (the store boundary).

Every change goes through `RegistryStore.transaction`: read a snapshot, compute the
change, and apply it with one Lua script only if `version` is still the one read (else
retry). The script also bumps `version`, writes the audit entry if the change is a
decision, and publishes the new version on `Keys.events()`. Redis failures leave this
module as StoreError only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.keys import Keys
from common.redis_client import async_client, store_errors
from common.scripts import SCRIPTS
from common.settings import Settings
from control.registry import Change, Conflict, Snapshot, entries_from, text_map

TRANSACTION_TRIES = 20
_PARTS = ("routing", "put", "delete", "seed", "unseed", "audit")  # commit.lua's order


def _items(change: Change) -> list[Any]:
    """The change flattened in commit.lua's order: pairs for maps, names for deletions."""
    items: list[Any] = []
    for part in _PARTS:
        value = getattr(change, part)
        if isinstance(value, dict):
            for name, item in value.items():
                items += [name, item.to_json() if part == "put" else item]
        else:
            items += value
    return items


def redis_client(url: str, socket_timeout_s: float = 5.0) -> aioredis.Redis:
    """An asyncio client that fails fast (callers retry on their own schedule); a
    `redis+cluster://` URL gives a cluster client (common.redis_client)."""
    return async_client(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


class RegistryStore:
    """Reads and atomic changes of the registry and routing state, on one asyncio client."""

    def __init__(self, client: aioredis.Redis, keys: Keys, settings: Settings) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self._commit = SCRIPTS["commit"].register(client)

    async def snapshot(self) -> Snapshot:
        """Everything, read consistently; StoreError when Redis cannot answer."""
        keys = self.keys
        with store_errors("cannot read the candidate registry"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.routing())
                pipe.hgetall(keys.registry())
                pipe.hgetall(keys.registry_seeded())
                routing_raw, registry_raw, seeded = await pipe.execute()
        routing = {k: v.decode() for k, v in text_map(routing_raw).items()}
        raw = text_map(registry_raw)
        return Snapshot(
            version=int(routing.get("version") or 0),
            entries=entries_from(raw),
            raw=raw,
            routing=routing,
            seeded={k: v.decode() for k, v in text_map(seeded).items()},
        )

    async def commit(self, expected: int, change: Change) -> int | None:
        """Apply `change` if the version is still `expected`; the new version, else None."""
        keys = self.keys
        counts = {f"n_{part}": len(getattr(change, part)) for part in _PARTS}
        with store_errors("cannot change the candidate registry"):
            result = int(
                await self._commit(
                    routing=keys.routing(),
                    registry=keys.registry(),
                    seeded=keys.registry_seeded(),
                    audit=keys.decisions(),
                    version=str(expected),
                    channel=keys.events(),
                    audit_max=self.settings.admin.audit_max,
                    items=_items(change),
                    **counts,
                )
            )
        return None if result < 0 else result

    async def transaction(
        self, decide: Callable[[Snapshot], Change | None]
    ) -> tuple[Snapshot, int]:
        """Read, decide, commit; retried while another change slips in between.

        `decide` raises RegistryError to refuse, or returns None when there is nothing to
        do. Returns the snapshot the change was computed from and the new version.
        """
        for _ in range(TRANSACTION_TRIES):
            snap = await self.snapshot()
            change = decide(snap)
            if change is None:
                return snap, snap.version
            version = await self.commit(snap.version, change)
            if version is not None:
                return snap, version
        raise Conflict("the registry kept changing during this request", "try again")

    async def audit(self, fields: Mapping[str, str]) -> None:
        """Append to the decisions stream without changing anything (refused decisions)."""
        with store_errors("cannot write the audit log"):
            await self.client.xadd(
                self.keys.decisions(),
                dict(fields),
                maxlen=self.settings.admin.audit_max,
                approximate=True,
            )


__all__ = ["TRANSACTION_TRIES", "RegistryStore", "redis_client"]
