"""The candidate registry's model: entries, snapshots, changes and how requests make them.

Redis holds the truth every replica shares:

- `Keys.registry()`: hash candidate name -> JSON `Entry` (url or onnx, sample, timeout_ms,
  role, state, started_at, ends_at, ...).
- `Keys.routing()`: hash with `primary` (URL), `primary_name` (the promoted candidate, or
  ""), `previous`, `previous_name`, `history` (JSON list of earlier primaries, newest
  last: what `rollback` walks back through), `decided` ("1" once a promote or rollback
  chose the primary; until then each replica uses its configured one), `config_primary`
  and `version`.

Every change is a `Change` computed from a `Snapshot` and applied atomically by
control.registry_store.RegistryStore; control.seeding brings the config file in,
control.pool holds the runners, control.sync applies the state on every replica.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from common.errors import ConfigError, ShadowtrialError
from common.settings import (
    CandidateSettings,
    candidate_from_mapping,
    format_instant,
    parse_instant,
)
from common.urls import mask_url

log = logging.getLogger("shadowtrial.registry")

ACTIVE, REJECTED, PROMOTED, ENDED = "active", "rejected", "promoted", "ended"
STATES = (ACTIVE, REJECTED, PROMOTED, ENDED)
HISTORY_KEPT = 20  # earlier primaries remembered for rollback
RUNTIME_FIELDS = ("name", "url", "sample", "timeout_ms", "role", "ends_at", "duration", "run")
RUN_MODES = ("proxy", "dispatcher")  # who calls an HTTP candidate (proxy.dispatch)
PATCH_FIELDS = ("sample", "timeout_ms", "ends_at", "duration")


class RegistryError(ShadowtrialError):
    """A registry request that cannot be done; `status` is the HTTP status it maps to."""

    status = 400

    def __init__(self, error: str, detail: Any = "", **extra: Any) -> None:
        self.error = error
        self.detail = detail
        self.extra = extra
        super().__init__(f"{error}: {detail}" if detail else error)


class Invalid(RegistryError):
    """The request is malformed or asks for something not allowed."""


class NotFound(RegistryError):
    """No such candidate."""

    status = 404


class Conflict(RegistryError):
    """The request clashes with the current state (name taken, gate refuses, ...)."""

    status = 409


# -- values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One candidate in the registry (stored as JSON)."""

    name: str
    url: str | None
    onnx: str | None
    sample: float
    timeout_ms: int
    role: str
    state: str
    started_at: str
    ends_at: str | None = None
    source: str = "api"  # "config" when seeded from the config file
    updated_at: str = ""
    reason: str = ""  # why the state last changed, in words
    canary: float = 0.0  # share of live requests it answers (control.canary); 0: shadow only
    canary_steps: tuple[float, ...] | list[float] = ()  # a plan: the weights, in order
    canary_step_s: float = 0.0  # a plan: the least time on a step before the next
    canary_since: str = ""  # when the weight last changed
    canary_min_pairs: int = 0  # a plan: the least pairs gathered on a step before the next
    run: str = "proxy"  # an HTTP candidate: called by the proxy, or by a dispatcher

    @classmethod
    def from_settings(cls, cand: CandidateSettings, now: float, source: str) -> Entry:
        """A new entry from validated settings, its time box resolved against `now`."""
        ends_at = cand.ends_at
        if ends_at is None and cand.duration is not None:
            ends_at = format_instant(now + cand.duration)
        stamp = format_instant(now)
        return cls(
            name=cand.name,
            url=cand.url,
            onnx=cand.onnx,
            sample=cand.sample,
            timeout_ms=cand.timeout_ms,
            role=cand.role,
            state=ACTIVE,
            started_at=stamp,
            ends_at=ends_at,
            source=source,
            updated_at=stamp,
            run="dispatcher" if cand.url is not None and cand.run == "dispatcher" else "proxy",
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry:
        """Parse a stored entry; unknown fields are ignored (newer writers)."""
        data = orjson.loads(raw)
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        return cls(**known)

    def to_json(self) -> bytes:
        """The stored form."""
        return orjson.dumps(asdict(self))

    def as_dict(self) -> dict[str, Any]:
        """The API form (also what the web page's context lists), credentials masked."""
        shown = asdict(self)
        if self.url is not None:
            shown["url"] = mask_url(self.url)
        return shown

    @property
    def started_s(self) -> float:
        """When the trial started, epoch seconds."""
        return parse_instant(self.started_at).timestamp()

    @property
    def ends_s(self) -> float | None:
        """When the trial ends, epoch seconds (None: open-ended)."""
        return None if self.ends_at is None else parse_instant(self.ends_at).timestamp()

    def expired(self, now: float) -> bool:
        """True once the time box is over."""
        ends = self.ends_s
        return ends is not None and now >= ends

    def mirrored(self, now: float) -> bool:
        """Whether requests are mirrored to it right now."""
        return self.state == ACTIVE and not self.expired(now)

    def settings(self) -> CandidateSettings:
        """As CandidateSettings, to build an HTTP runner for it."""
        return CandidateSettings(
            name=self.name,
            url=self.url,
            onnx=self.onnx,
            sample=self.sample,
            timeout_ms=self.timeout_ms,
            role=self.role,
            run=self.run if self.url is not None else "worker",
        )


@dataclass(frozen=True)
class Snapshot:
    """Registry and routing state read together (one MULTI/EXEC)."""

    version: int
    entries: dict[str, Entry]
    raw: dict[str, bytes]
    routing: dict[str, str]
    seeded: dict[str, str]  # configured name -> its config spec when seeded

    def primary(self, fallback: str) -> str:
        """The current primary URL: the decided one, else `fallback` (the configured one)."""
        if self.routing.get("decided") == "1" and self.routing.get("primary"):
            return self.routing["primary"]
        return fallback

    def history(self) -> list[dict[str, str]]:
        """Earlier primaries, newest last: [{"url", "name"}]."""
        try:
            items = orjson.loads(self.routing.get("history") or "[]")
        except orjson.JSONDecodeError:
            return []
        return (
            [i for i in items if isinstance(i, dict) and i.get("url")]
            if isinstance(items, list)
            else []
        )

    def entry(self, name: str) -> Entry:
        """The named entry, or NotFound."""
        found = self.entries.get(name)
        if found is None:
            raise NotFound(f"no candidate named {name!r}", "GET /v1/candidates lists them")
        return found


@dataclass
class Change:
    """What one transaction writes; all of it or nothing."""

    routing: dict[str, str] = field(default_factory=dict)
    put: dict[str, Entry] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    seed: dict[str, str] = field(default_factory=dict)
    unseed: list[str] = field(default_factory=list)
    audit: dict[str, str] = field(default_factory=dict)


def text_map(raw: Mapping[bytes, bytes]) -> dict[str, bytes]:
    """A Redis hash with its field names decoded (values stay bytes)."""
    return {k.decode(): v for k, v in raw.items()}


def entries_from(raw: Mapping[str, bytes]) -> dict[str, Entry]:
    """The readable entries of the registry hash; an unreadable one is logged and skipped."""
    entries = {}
    for name, value in raw.items():
        try:
            entries[name] = Entry.from_json(value)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            log.warning("ignoring an unreadable registry entry %r", name)
    return entries


# -- runtime changes --------------------------------------------------------------------


def _validated(raw: Mapping[str, Any], allow_link_local: bool) -> CandidateSettings:
    try:
        return candidate_from_mapping(raw, allow_link_local=allow_link_local)
    except ConfigError as exc:
        field_name = exc.key.removeprefix("candidate.").removeprefix("candidate")
        where = f"{field_name}: " if field_name else ""
        raise Invalid("invalid candidate", f"{where}{exc.problem} (got {exc.value!r})") from None


def new_entry(body: Any, now: float, allow_link_local: bool = False) -> Entry:
    """A candidate registered through the API, validated like the config file's (its URL
    on a link-local or metadata address only with `allow_link_local`)."""
    if not isinstance(body, dict):
        raise Invalid("invalid candidate", "the body must be a JSON object")
    if "onnx" in body:
        raise Invalid(
            "ONNX candidates can only come from the config file",
            "every replica must load the model file at start: add a [[candidates]] entry"
            " with onnx = ... to the config and restart; register HTTP candidates with url",
        )
    unknown = sorted(set(body) - set(RUNTIME_FIELDS))
    if unknown:
        raise Invalid("invalid candidate", f"unknown field(s) {', '.join(unknown)};"
                      f" allowed: {', '.join(RUNTIME_FIELDS)}")  # fmt: skip
    if not body.get("url"):
        raise Invalid("invalid candidate", "url: an HTTP candidate needs its base URL")
    if body.get("run", "proxy") not in RUN_MODES:
        raise Invalid("invalid candidate", f"run: one of {', '.join(RUN_MODES)}")
    cand = _validated(body, allow_link_local)
    return Entry.from_settings(cand, now, "api")


def patched_entry(entry: Entry, body: Any, now: float) -> Entry:
    """`entry` with the PATCH body applied: sample, timeout_ms and the time box."""
    if not isinstance(body, dict) or not body:
        raise Invalid("invalid change", f"send a JSON object with any of {', '.join(PATCH_FIELDS)}")
    unknown = sorted(set(body) - set(PATCH_FIELDS))
    if unknown:
        raise Invalid("invalid change", f"cannot change {', '.join(unknown)};"
                      f" allowed: {', '.join(PATCH_FIELDS)}")  # fmt: skip
    if entry.onnx is not None and "timeout_ms" in body:
        raise Invalid("invalid change", "an ONNX candidate's timeout is set in the config file")
    if body.get("ends_at") is not None and body.get("duration") is not None:
        raise Invalid("invalid change", "set at most one of ends_at or duration")
    base = {"name": entry.name, "sample": entry.sample, "timeout_ms": entry.timeout_ms}
    base["url" if entry.url is not None else "onnx"] = entry.url or entry.onnx
    # The URL is not changed by a PATCH: it was checked when the candidate came in.
    cand = _validated({**base, **{k: v for k, v in body.items() if v is not None}}, True)
    changed = replace(entry, sample=cand.sample, timeout_ms=cand.timeout_ms)
    if "ends_at" in body or "duration" in body:
        changed = _with_time_box(changed, cand, now)
    return replace(changed, updated_at=format_instant(now))


def registry_audit(
    action: str, actor: str, name: str, before: Entry | None, after: Entry | None, now: float
) -> dict[str, str]:
    """The audit entry of a registry change (add, patch, delete): who, and the entry before
    and after as the API shows it (JSON, URL credentials masked; "" when absent)."""

    def shown(entry: Entry | None) -> str:
        return "" if entry is None else orjson.dumps(entry.as_dict()).decode()

    return {
        "time": format_instant(now),
        "actor": actor,
        "action": action,
        "candidate": name,
        "outcome": "done",
        "verdict": "not checked",  # a registry change is not gated
        "before": shown(before),
        "after": shown(after),
    }


def _with_time_box(entry: Entry, cand: CandidateSettings, now: float) -> Entry:
    """A new end (None: open-ended); an ended trial given a later end is active again."""
    ends_at = cand.ends_at
    if cand.duration is not None:
        ends_at = format_instant(entry.started_s + cand.duration)
    changed = replace(entry, ends_at=ends_at)
    if entry.state == ENDED and not changed.expired(now):
        changed = replace(changed, state=ACTIVE, reason="time box extended")
    return changed


__all__ = [
    "ACTIVE",
    "ENDED",
    "PROMOTED",
    "REJECTED",
    "STATES",
    "Change",
    "Conflict",
    "Entry",
    "Invalid",
    "NotFound",
    "RegistryError",
    "Snapshot",
    "entries_from",
    "new_entry",
    "patched_entry",
    "registry_audit",
    "text_map",
]
