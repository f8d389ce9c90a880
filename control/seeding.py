"""Seeding the registry from the config file at start.

Runtime changes survive a restart, edits of the config file win. `Keys.registry_seeded()`
remembers each configured candidate as it was seeded; a candidate is added when first
seen, its configured fields are rewritten only when its config entry changed, and a
config-sourced candidate removed from the file is removed (its evidence stays). Likewise
the primary decided at runtime (promote, rollback) stays until `proxy.primary` in the
config changes.
"""

from __future__ import annotations

from dataclasses import replace

import orjson

from common.settings import CandidateSettings, Settings, format_instant
from control.registry import ENDED, PROMOTED, Change, Entry, Snapshot
from control.registry_store import RegistryStore


async def seed(store: RegistryStore, settings: Settings, now: float) -> int:
    """Bring the config file's candidates and primary in; the registry's new version."""
    _, version = await store.transaction(lambda snap: seed_change(snap, settings, now))
    return version


def config_spec(cand: CandidateSettings) -> str:
    """The configured fields of a candidate, to notice when its config entry changes."""
    fields = ("url", "onnx", "sample", "timeout_ms", "role", "ends_at", "duration")
    return orjson.dumps({f: getattr(cand, f) for f in fields}).decode()


def _from_config(entry: Entry | None, cand: CandidateSettings, now: float) -> Entry:
    fresh = Entry.from_settings(cand, now, "config")
    if entry is None:
        return fresh
    ends_at = fresh.ends_at
    if cand.duration is not None:
        ends_at = format_instant(entry.started_s + cand.duration)
    return replace(
        entry,
        url=cand.url,
        onnx=cand.onnx,
        sample=cand.sample,
        timeout_ms=cand.timeout_ms,
        role=cand.role,
        ends_at=ends_at,
        source="config",
        updated_at=fresh.updated_at,
    )


_CONFIG_ROUTING = {
    "primary_name": "",
    "previous": "",
    "previous_name": "",
    "history": "[]",
    "decided": "",
}


def seed_change(snap: Snapshot, settings: Settings, now: float) -> Change | None:
    """What the config file adds or changes in the registry (None: nothing)."""
    change = Change()
    configured = {c.name for c in settings.candidates}
    for cand in settings.candidates:
        spec = config_spec(cand)
        before = snap.seeded.get(cand.name)
        if before == spec:
            continue
        change.seed[cand.name] = spec
        entry = snap.entries.get(cand.name)
        if before is not None or entry is None:  # new to the registry, or its config changed
            change.put[cand.name] = _from_config(entry, cand, now)
    for name in set(snap.seeded) - configured:
        change.unseed.append(name)
        entry = snap.entries.get(name)
        if entry is not None and entry.source == "config" and entry.state != PROMOTED:
            change.delete.append(name)
    primary = settings.proxy.primary
    if snap.routing.get("config_primary") != primary or not snap.routing.get("primary"):
        change.routing = dict(_CONFIG_ROUTING, primary=primary, config_primary=primary)
        reigning = snap.entries.get(snap.routing.get("primary_name", ""))
        if reigning is not None and reigning.state == PROMOTED:
            reason = "proxy.primary changed in the config file"
            change.put[reigning.name] = replace(reigning, state=ENDED, reason=reason)
    if change.seed or change.unseed or change.routing:
        return change
    return None


__all__ = ["config_spec", "seed", "seed_change"]
