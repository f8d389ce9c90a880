"""The candidate registry and routing state in Redis, and the sync that applies them live.

Redis holds the truth every replica shares:

- `Keys.registry()`: hash candidate name -> JSON `Entry` (url or onnx, sample, timeout_ms,
  role, state, started_at, ends_at, ...).
- `Keys.routing()`: hash with `primary` (URL), `primary_name` (the promoted candidate, or
  ""), `previous`, `previous_name`, `history` (JSON list of earlier primaries, newest
  last: what `rollback` walks back through), `decided` ("1" once a promote or rollback
  chose the primary; until then each replica uses its configured one), `config_primary`
  and `version`.

Seeding from the config file at start: runtime changes survive a restart, edits of the
config file win. `Keys.registry_seeded()` remembers each configured candidate as it was
seeded; a candidate is added when first seen, its configured fields are rewritten only
when its config entry changed, and a config-sourced candidate removed from the file is
removed (its evidence stays). Likewise the primary decided at runtime (promote,
rollback) stays until `proxy.primary` in the config changes.

Every change goes through `RegistryStore.transaction`: read a snapshot, compute the
change, and apply it with one Lua script only if `version` is still the one read (else
retry). The script also bumps `version`, writes the audit entry if the change is a
decision, and publishes the new version on `Keys.events()`.

`RegistrySync` runs on each proxy process's loop: it subscribes to `Keys.events()` and
also re-reads everything every `admin.sync_ms`, so a missed message heals by itself. It
swaps the RoutingTable's primary and mirror set by single assignments. With Redis down it
keeps the last state it applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.errors import ConfigError, ShadowtrialError, StoreError
from common.keys import Keys
from common.redis_client import async_client
from common.settings import (
    CandidateSettings,
    Settings,
    candidate_from_mapping,
    format_instant,
    parse_instant,
)
from common.urls import mask_url
from proxy.candidates import CandidateRunner, build_runner
from proxy.routing import MirrorTarget, RoutingTable
from proxy.tasks import bounded, stop_tasks

log = logging.getLogger("shadowtrial.registry")

ACTIVE, REJECTED, PROMOTED, ENDED = "active", "rejected", "promoted", "ended"
STATES = (ACTIVE, REJECTED, PROMOTED, ENDED)
HISTORY_KEPT = 20  # earlier primaries remembered for rollback
TRANSACTION_TRIES = 20
RETIRE_GRACE_S = 1.0  # a replaced runner is closed after its timeout plus this
STOP_TIMEOUT_S = 2.0  # each step of RegistrySync.stop waits at most this long
RUNTIME_FIELDS = ("name", "url", "sample", "timeout_ms", "role", "ends_at", "duration")
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


def _decode_map(raw: Mapping[bytes, bytes]) -> dict[str, bytes]:
    return {k.decode(): v for k, v in raw.items()}


def _entries(raw: Mapping[str, bytes]) -> dict[str, Entry]:
    entries = {}
    for name, value in raw.items():
        try:
            entries[name] = Entry.from_json(value)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            log.warning("ignoring an unreadable registry entry %r", name)
    return entries


# -- Redis ------------------------------------------------------------------------------

# KEYS: routing, registry, seeded, audit stream.
# ARGV: expected version, channel, audit maxlen, #routing pairs, #puts, #deletes, #seeds,
#       #unseeds, #audit pairs, then the items in that order.
_COMMIT_LUA = """
local version = redis.call('HGET', KEYS[1], 'version') or '0'
if version ~= ARGV[1] then return -1 end
local i = 10
local nr, np, nd = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ns, nu, na = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
for _ = 1, nr do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, np do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, nd do redis.call('HDEL', KEYS[2], ARGV[i]); i = i + 1 end
for _ = 1, ns do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, nu do redis.call('HDEL', KEYS[3], ARGV[i]); i = i + 1 end
if na > 0 then
  local fields = {}
  for _ = 1, na do
    table.insert(fields, ARGV[i]); table.insert(fields, ARGV[i + 1]); i = i + 2
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
end
local new = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', ARGV[2], new)
return new
"""


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
        self._commit = client.register_script(_COMMIT_LUA)

    async def snapshot(self) -> Snapshot:
        """Everything, read consistently; StoreError when Redis cannot answer."""
        keys = self.keys
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys.routing())
                pipe.hgetall(keys.registry())
                pipe.hgetall(keys.registry_seeded())
                routing_raw, registry_raw, seeded = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot read the candidate registry: {exc}") from exc
        routing = {k: v.decode() for k, v in _decode_map(routing_raw).items()}
        raw = _decode_map(registry_raw)
        return Snapshot(
            version=int(routing.get("version") or 0),
            entries=_entries(raw),
            raw=raw,
            routing=routing,
            seeded={k: v.decode() for k, v in _decode_map(seeded).items()},
        )

    async def commit(self, expected: int, change: Change) -> int | None:
        """Apply `change` if the version is still `expected`; the new version, else None."""
        items: list[Any] = []
        for name, value in change.routing.items():
            items += [name, value]
        for name, entry in change.put.items():
            items += [name, entry.to_json()]
        items += change.delete
        for name, spec in change.seed.items():
            items += [name, spec]
        items += change.unseed
        for name, value in change.audit.items():
            items += [name, value]
        args = [
            str(expected), self.keys.events(), self.settings.admin.audit_max,
            len(change.routing), len(change.put), len(change.delete), len(change.seed),
            len(change.unseed), len(change.audit), *items,
        ]  # fmt: skip
        keys = [
            self.keys.routing(),
            self.keys.registry(),
            self.keys.registry_seeded(),
            self.keys.decisions(),
        ]
        try:
            result = int(await self._commit(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot change the candidate registry: {exc}") from exc
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
        try:
            await self.client.xadd(
                self.keys.decisions(),
                dict(fields),
                maxlen=self.settings.admin.audit_max,
                approximate=True,
            )
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot write the audit log: {exc}") from exc

    async def seed(self, now: float) -> int:
        """Bring the config file's candidates and primary in (see the module docstring)."""
        settings = self.settings
        _, version = await self.transaction(lambda snap: seed_change(snap, settings, now))
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


# -- runners ----------------------------------------------------------------------------


class RunnerPool:
    """The runner for each registry entry: the configured one, or an HTTP one made here.

    A candidate registered at runtime, or a configured HTTP one whose timeout changed,
    gets a new HttpCandidate. A runner that is replaced is closed once the mirrors that
    may still hold it have had time to finish.
    """

    def __init__(self, configured: Sequence[CandidateRunner], max_body: int, pool_size: int):
        self._configured = {r.name: r for r in configured}
        self._made: dict[str, tuple[tuple[Any, ...], CandidateRunner]] = {}
        self._max_body = max_body
        self._pool_size = pool_size
        self._retiring: dict[asyncio.Task[None], CandidateRunner] = {}
        self._missing_warned: set[str] = set()

    def runner_for(self, entry: Entry) -> CandidateRunner | None:
        """The runner to mirror this entry with (None: this replica cannot run it)."""
        configured = self._configured.get(entry.name)
        if entry.url is None:
            if configured is None and entry.name not in self._missing_warned:
                self._missing_warned.add(entry.name)
                log.warning("ONNX candidate %s is not in this replica's config: not run here",
                            entry.name)  # fmt: skip
            return configured
        spec = (entry.url, entry.timeout_ms, entry.role)
        if configured is not None and _spec(configured) == spec:
            return configured
        made = self._made.get(entry.name)
        if made is not None and made[0] == spec:
            return made[1]
        runner = build_runner(entry.settings(), self._max_body, self._pool_size)
        if made is not None:
            self._retire(made[1], made[0][1])
        self._made[entry.name] = (spec, runner)
        return runner

    def forget(self, keep: Iterable[str]) -> None:
        """Retire runners made for entries that are gone."""
        wanted = set(keep)
        for name in [n for n in self._made if n not in wanted]:
            spec, runner = self._made.pop(name)
            self._retire(runner, spec[1])

    def _retire(self, runner: CandidateRunner, timeout_ms: int) -> None:
        async def later() -> None:
            await asyncio.sleep(timeout_ms / 1000 + RETIRE_GRACE_S)
            await _close(runner)

        task = asyncio.get_running_loop().create_task(later())
        self._retiring[task] = runner
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        """Close every runner made here, retiring ones too (configured ones belong to the
        ProxyApp)."""
        retiring, self._retiring = self._retiring, {}
        for task in retiring:
            task.cancel()
        made, self._made = self._made, {}
        for runner in [*retiring.values(), *(r for _, r in made.values())]:
            await _close(runner)


def _spec(runner: CandidateRunner) -> tuple[Any, ...] | None:
    url = getattr(runner, "url", None)
    timeout_ms = getattr(runner, "timeout_ms", None)
    return None if url is None else (url, timeout_ms, runner.role)


async def _close(runner: CandidateRunner) -> None:
    try:
        await runner.close()
    except Exception:  # one runner failing to close must not stop the others
        log.warning("candidate %s failed to close", runner.name, exc_info=True)


# -- live sync on every replica ---------------------------------------------------------


class RegistrySync:
    """Keeps one proxy process's RoutingTable in step with Redis (pub/sub + reconcile)."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        routing: RoutingTable,
        runners: Sequence[CandidateRunner],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self.redis_url = redis_url
        self.routing = routing
        self.clock = clock
        proxy = settings.proxy
        self.pool = RunnerPool(runners, proxy.max_capture_bytes, proxy.mirror_concurrency)
        self.snapshot: Snapshot | None = None
        self.synced_at = 0.0  # monotonic time of the last successful read
        self.last_error = ""
        self.seeded = False
        self.on_tick: list[Callable[[], Awaitable[None]]] = []
        self._client: aioredis.Redis | None = None
        self._store: RegistryStore | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._stopping = False  # ends the loops even if a cancellation was swallowed

    @property
    def store(self) -> RegistryStore:
        """The store on this loop's client (after `start`)."""
        assert self._store is not None, "RegistrySync.start() was not called"
        return self._store

    @property
    def interval_s(self) -> float:
        """How often every replica re-reads the registry."""
        return self.settings.admin.sync_ms / 1000

    async def start(self, first_read_timeout_s: float = 2.0) -> None:
        """Seed, read once (bounded: Redis down must not stop the proxy), then follow."""
        self._client = redis_client(self.redis_url)
        self._store = RegistryStore(self._client, self.keys, self.settings)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_read_timeout_s):
                await self.refresh()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._reconcile())]

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop following; close the runners made at runtime and the client. Bounded:
        a task that swallows its cancellation is left behind after `timeout_s`."""
        self._stopping = True
        await stop_tasks(self._tasks, timeout_s, "registry sync")
        self._tasks = []
        await bounded(self.pool.close(), timeout_s, "closing runtime candidates")
        if self._client is not None:
            await bounded(self._client.aclose(), timeout_s, "closing the registry client")
            self._client = None

    async def refresh(self) -> bool:
        """Read Redis and apply; False (state kept) when Redis cannot answer."""
        async with self._lock:
            try:
                snap = await self.store.snapshot()
                # Seed at start, and again if Redis lost its data (restarted without
                # persistence): the configured candidates and primary come back by themselves.
                if not self.seeded or not snap.routing.get("config_primary"):
                    await self.store.seed(self.clock())
                    self.seeded = True
                    snap = await self.store.snapshot()
            except (StoreError, RegistryError) as exc:
                if str(exc) != self.last_error:
                    log.warning("registry not read, keeping the last state: %s", exc)
                self.last_error = str(exc)
                return False
            self.last_error = ""
            self.synced_at = time.monotonic()
            self.apply(snap)
            return True

    def apply(self, snap: Snapshot) -> None:
        """Swap primary and mirrors when they differ from what the routing table has."""
        self.snapshot = snap
        now = self.clock()
        primary = snap.primary(self.settings.proxy.primary)
        targets = []
        for entry in sorted(snap.entries.values(), key=lambda e: (e.started_at, e.name)):
            runner = self.pool.runner_for(entry) if entry.mirrored(now) else None
            if runner is not None:
                targets.append(MirrorTarget(runner, entry.sample))
        self.pool.forget(snap.entries)
        routing = self.routing
        if primary.rstrip("/") != routing.primary:
            log.info("primary is now %s (registry version %d)", mask_url(primary), snap.version)
            routing.set_primary(primary)
        current = [(id(t.runner), t.sample) for t in routing.mirrors]
        if current != [(id(t.runner), t.sample) for t in targets]:
            routing.set_mirrors(targets)
        routing.version = snap.version

    async def _listen(self) -> None:
        """Refresh on every event; resubscribe (and refresh) after a lost connection."""
        backoff = 0.05
        while not self._stopping:
            pubsub = None
            try:
                assert self._client is not None
                pubsub = self._client.pubsub()
                await pubsub.subscribe(self.keys.events())
                await self.refresh()
                backoff = 0.05
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        await self.refresh()
            except (RedisError, OSError) as exc:
                self.last_error = f"events: {exc}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()

    async def _reconcile(self) -> None:
        """Re-read every interval (heals missed events; applies time boxes on time)."""
        while not self._stopping:
            await asyncio.sleep(self.interval_s)
            if not await self.refresh() and self.snapshot is not None:
                self.apply(self.snapshot)  # a time box still ends with Redis down
            for hook in list(self.on_tick):
                try:
                    await hook()
                except Exception:  # a failing hook must not stop the sync
                    log.warning("registry tick hook failed", exc_info=True)

    def status(self) -> dict[str, Any]:
        """For /readyz: what this replica applied and when it last read Redis."""
        age = time.monotonic() - self.synced_at if self.synced_at else None
        return {
            "version": self.routing.version,
            "synced_s_ago": None if age is None else round(age, 3),
            "error": self.last_error,
        }


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
    "RegistryStore",
    "RegistrySync",
    "RunnerPool",
    "Snapshot",
    "new_entry",
    "patched_entry",
    "redis_client",
]
