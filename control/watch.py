"""The watch on the admin port: the live document, its reference, and its gauges.

- `GET /v1/watch?window=1h&reference=pinned|profile|day|week|<fromISO>/<toISO>`: the
  document of analysis.watch_live (a read: open unless `admin.open_reads = false`);
- `PUT /v1/watch/reference {"from": ISO, "to": ISO}` pins the reference window and
  `PUT /v1/watch/profile <profile JSON>` uploads a training profile (`shadowtrial
  profile`): writes, so they need the admin token, and both are in the audit log;
- `WatchGauges`: every `[watch] gauges_every_s` the document of the default window and
  reference sets the `shadowtrial_watch_*` gauges of the proxy's /metrics, so existing
  alerting (deploy/monitoring: ShadowtrialWatchDrift, ...) works. Feature names come from
  traffic: as label values they are made printable and cut, and bounded by
  `[watch] max_features`.

The document is built in a thread on the report client (numpy, scipy: never on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Gauge

from common.errors import StoreError
from common.keys import WATCH, Keys
from common.redis_client import STORE_FAILURES, store_errors, sync_client
from common.sanitize import printable
from common.settings import Settings, format_instant
from control.registry import Invalid

log = logging.getLogger("shadowtrial.watch")

MAX_PROFILE_BYTES = 8 * 1024 * 1024
LABEL_CHARS = 64  # a feature name as a Prometheus label value is cut to this


def build_document(client: Any, settings: Settings, window: str | None,
                   reference: str | None) -> dict[str, Any]:  # fmt: skip
    """analysis.watch_live.watch_document, its parameter errors as 400s."""
    from analysis.watch_live import WatchError, watch_document

    try:
        with store_errors("cannot build the watch document"):
            return watch_document(client, settings, window or None, reference or None)
    except WatchError as exc:
        raise Invalid("invalid watch parameter", str(exc)) from None


def pin_reference(body: Any) -> tuple[str, str]:
    """(from, to) of a `PUT /v1/watch/reference` body as normalised ISO times."""
    from analysis.watch_live import WatchError, time_range

    if not isinstance(body, dict) or set(body) != {"from", "to"}:
        raise Invalid("invalid reference", 'expected {"from": ISO time, "to": ISO time}')
    if not all(isinstance(body[k], str) and len(body[k]) <= 64 for k in ("from", "to")):
        raise Invalid("invalid reference", "from and to are ISO 8601 times")
    try:
        lo, hi = time_range(body["from"], body["to"])
    except WatchError as exc:
        raise Invalid("invalid reference", str(exc)) from None
    return format_instant(lo), format_instant(hi)


def profile_text(body: Any) -> bytes:
    """A `PUT /v1/watch/profile` body checked as a profile and written back normalised."""
    from analysis.watch_state import WatchState

    try:
        state = WatchState.from_dict(body)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise Invalid("invalid profile", f"not a shadowtrial profile: {exc}"[:300]) from None
    return orjson.dumps(state.to_dict())


def watch_audit(action: str, actor: str, after: str, now: float) -> dict[str, str]:
    """The audit entry of a watch change (who pinned what, who uploaded a profile)."""
    return {
        "time": format_instant(now), "actor": actor, "action": action, "candidate": WATCH,
        "outcome": "done", "verdict": "not checked", "before": "", "after": after,
    }  # fmt: skip


async def store_reference(store: Any, keys: Keys, lo: str, hi: str, actor: str) -> None:
    """Pin the reference (every replica reads it from Redis) and audit it."""
    now = time.time()
    fields = {"from": lo, "to": hi, "by": actor, "at": format_instant(now)}
    with store_errors("cannot pin the watch reference"):
        await store.client.hset(keys.watch_reference(), mapping=fields)
    await store.audit(watch_audit("watch-reference", actor, orjson.dumps(fields).decode(), now))


async def store_profile(store: Any, keys: Keys, text: bytes, actor: str) -> dict[str, Any]:
    """Keep the uploaded profile and audit it; returns what the answer says of it."""
    now = time.time()
    doc = orjson.loads(text)
    summary = {"features": len(doc.get("features", {})), "rows": doc.get("rows", 0),
               "bytes": len(text)}  # fmt: skip
    with store_errors("cannot store the watch profile"):
        await store.client.set(keys.watch_profile(), text)
    await store.audit(watch_audit("watch-profile", actor, orjson.dumps(summary).decode(), now))
    return summary


# -- gauges -------------------------------------------------------------------------------


def _label(name: object) -> str:
    return printable(name)[:LABEL_CHARS]


class WatchGauges:
    """The watch's gauges on the proxy's registry, refreshed by `run` periodically."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), multiprocess_mode="livemostrecent",
                         registry=registry)  # fmt: skip

        feature = ("feature",)
        self.drift = gauge("shadowtrial_watch_feature_drift",
                           "A watched feature's drift against the reference (Wasserstein in "
                           "reference SDs, or Jensen-Shannon)", feature)  # fmt: skip
        self.unseen = gauge(
            "shadowtrial_watch_feature_unseen_rate",
            "Share of a feature's values the reference never had",
            feature,
        )
        self.flagged_feature = gauge("shadowtrial_watch_feature_flagged",
                                     "1 when the feature is flagged (large and significant)",
                                     feature)  # fmt: skip
        self.flagged = gauge("shadowtrial_watch_flagged_features", "Features flagged now")
        self.requests = gauge("shadowtrial_watch_requests", "Watched requests in the window")
        self.confidence = gauge(
            "shadowtrial_watch_mean_confidence", "The primary's mean confidence on watched requests"
        )
        self.confidence_flagged = gauge(
            "shadowtrial_watch_confidence_flagged", "1 when the primary's confidence drifted"
        )
        self.accuracy = gauge(
            "shadowtrial_watch_accuracy", "Labelled accuracy of the primary on watched requests"
        )
        self.reference_available = gauge(
            "shadowtrial_watch_reference_available", "1 when the reference could be read"
        )
        self.updated = gauge("shadowtrial_watch_updated_timestamp_seconds",
                             "When the watch gauges were last computed (Unix time)")  # fmt: skip
        self.exported: set[str] = set()

    def update(self, doc: dict[str, Any], now: float | None = None) -> None:
        """Set every gauge from one document; features no longer in it are dropped."""
        seen: set[str] = set()
        for row in doc.get("features", []):
            name = _label(row.get("feature"))
            if name in seen:
                continue
            seen.add(name)
            _set(self.drift, name, row.get("drift"))
            _set(self.unseen, name, row.get("unseen_rate"))
            self.flagged_feature.labels(name).set(1.0 if row.get("flagged") else 0.0)
        for gone in self.exported - seen:
            for metric in (self.drift, self.unseen, self.flagged_feature):
                _remove(metric, gone)
        self.exported = seen
        outputs, labels = doc.get("outputs") or {}, doc.get("labels") or {}
        self.flagged.set(len(doc.get("flagged") or []))
        self.requests.set(float(doc.get("requests") or 0))
        _set(self.confidence, None, outputs.get("mean_confidence"))
        self.confidence_flagged.set(1.0 if outputs.get("confidence_flagged") else 0.0)
        _set(self.accuracy, None, labels.get("accuracy"))
        self.reference_available.set(1.0 if (doc.get("reference") or {}).get("available") else 0)
        self.updated.set(time.time() if now is None else now)


def _set(metric: Gauge, label: str | None, value: object) -> None:
    """A number sets the sample; None (nothing to compare yet) removes it."""
    target = metric.labels(label) if label is not None else metric
    if isinstance(value, int | float) and not isinstance(value, bool):
        target.set(float(value))
    elif label is not None:
        _remove(metric, label)
    else:
        metric.set(float("nan"))


def _remove(metric: Gauge, label: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(label)


class WatchTask:
    """Recomputes the gauges every `[watch] gauges_every_s` on this replica (a thread
    builds the document; any error skips one round, never the task)."""

    def __init__(self, settings: Settings, redis_url: str, gauges: WatchGauges) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.gauges = gauges
        self.rounds = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        w = self.settings.watch
        return w.sample > 0 and w.gauges_every_s > 0

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        client = sync_client(self.redis_url, socket_connect_timeout=1.0, socket_timeout=10.0)
        try:
            while True:
                await self.once(client)
                await asyncio.sleep(self.settings.watch.gauges_every_s)
        finally:
            client.close()

    async def once(self, client: Any) -> None:
        """One round: the default document into the gauges."""
        try:
            doc = await asyncio.to_thread(build_document, client, self.settings, None, None)
        except (StoreError, Invalid, *STORE_FAILURES) as exc:
            self.errors += 1
            log.warning("watch gauges not updated: %s", exc)
            return
        self.gauges.update(doc)
        self.rounds += 1
