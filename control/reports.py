"""Reports and gate verdicts for the control plane, from analysis.report in a thread.

analysis.report is synchronous and heavy (numpy, scipy): it is imported only when a
report is asked for, and runs on its own synchronous client (a thread-safe pool) so the
admin port's loop never blocks on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from common.keys import Keys
from common.redis_client import store_errors, sync_client
from common.settings import Settings


class Reports:
    """Reports and gate verdicts, built in a thread on a synchronous Redis client."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings

    @classmethod
    def from_url(cls, url: str, keys: Keys, settings: Settings) -> Reports:
        """Reports on their own client (thread-safe connection pool)."""
        client = sync_client(url, socket_connect_timeout=1.0, socket_timeout=10.0)
        return cls(client, keys, settings)

    async def build(self, name: str, window_s: float, now: float | None = None) -> dict[str, Any]:
        """analysis.report.build_report for one candidate (StoreError if Redis fails)."""
        return await asyncio.to_thread(self._build, name, window_s, now)

    def _build(self, name: str, window_s: float, now: float | None) -> dict[str, Any]:
        from analysis.report import build_report  # heavy (numpy, scipy): only when asked

        with store_errors(f"cannot build the report of {name}"):
            return build_report(self.client, self.keys, self.settings, name, window_s, now)

    def close(self) -> None:
        """Release the connections."""
        self.client.close()


__all__ = ["Reports"]
