"""`outputs.text_calibrate`: the worker's threshold of meaning from the noise floor.

A secondary replica of the primary that samples (rewords) gives the report's
`text.noise_floor.suggested_threshold` (analysis.text_summary.noise_similarity). With
`text_calibrate = true` the worker reads it, over the last hour of the first secondary
configured in `[[candidates]]`, at most once a minute, and judges agreement by meaning with
it; without a suggestion (no secondary, no rows yet, a deterministic replica, Redis down)
the configured `text_threshold` stands. Which threshold judged each row is counted, so the
report can say which one was used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from analysis.report import load_window
from analysis.text_summary import noise_similarity
from common.errors import StoreError
from common.keys import Keys
from common.settings import Settings

log = logging.getLogger(__name__)
REFRESH_S = 60.0  # how often the worker re-reads the noise floor
WINDOW_S = 3600  # the secondary's window the suggestion is read from


class NoiseCalibration:
    """The noise floor's suggested threshold, cached for REFRESH_S seconds (None: none)."""

    def __init__(
        self, client: redis.Redis, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.keys = Keys(settings.redis.prefix)
        names = sorted(c.name for c in settings.candidates if c.role == "secondary")
        self.secondary = names[0] if names else None
        self.clock = clock
        self._next = 0.0
        self._value: float | None = None

    def threshold(self) -> float | None:
        """The current suggestion, re-read when the cache is older than REFRESH_S."""
        now = self.clock()
        if now >= self._next:
            self._next = now + REFRESH_S
            self._value = self._read(now)
        return self._value

    def _read(self, now: float) -> float | None:
        if self.secondary is None:
            return None
        try:
            first = int(now - WINDOW_S)
            summary, _ = load_window(self.client, self.keys, self.secondary, first, now)
        except StoreError as exc:  # keep judging with the configured threshold
            log.warning("text_calibrate: %s", exc)
            return None
        floor = noise_similarity(self.secondary, summary.get, summary.hist)
        return floor["suggested_threshold"] if floor else None


__all__ = ["NoiseCalibration"]
