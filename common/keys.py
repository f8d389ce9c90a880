"""Every Redis key shadowtrial uses, in one place.

Keys that belong to one candidate carry the hash tag `{prefix:name}` so that, on a Redis
Cluster, a candidate's stream, consumer group and summaries live in one slot and the
worker's atomic apply-and-acknowledge script can touch them together. The registry's
keys (registry, routing, registry_seeded, decisions) carry the tag `{prefix}`: one Lua
script changes them together and one MULTI reads them. Every key still starts with
`prefix:`, so `SCAN prefix:*` finds all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Consumer group every comparison worker joins on each candidate's pair stream.
WORKER_GROUP = "shadowtrial-workers"
# Consumer group every dispatcher joins on each `run = "dispatcher"` candidate's requests.
DISPATCH_GROUP = "shadowtrial-dispatchers"
# A worker's health record expires this long after its last heartbeat (seconds).
WORKER_HEALTH_TTL_S = 30
# Drill-down samples (divergent pairs, unparseable bodies) kept per candidate.
SAMPLES_KEPT = 200

# Fields the proxies add to a candidate's bucket hashes (Keys.bucket), beside the worker's
# own: what became of each sampled mirror that did not become a pair record, so a report
# accounts for every one (sampled = pairs + shed + too_large + primary_failed + cancelled
# + capture_dropped + trimmed + bad + in flight).
FIELD_SAMPLED = "mirror:sampled"  # requests sampled for the candidate
FIELD_SHED = "mirror:shed"  # mirror_concurrency reached, or the runner's queue was full
FIELD_TOO_LARGE = "mirror:too_large"  # request body over max_capture_bytes
FIELD_PRIMARY_FAILED = "mirror:primary_failed"  # no complete primary answer to pair with
FIELD_CANCELLED = "mirror:cancelled"  # still running when the proxy stopped
FIELD_CAPTURE_DROPPED = "capture:dropped"  # spool full, refused by Redis, or at shutdown
# `run = "dispatcher"` candidates (proxy.dispatch): a sampled request queued for a
# dispatcher, or dropped because the queue was full; then, in the dispatchers, called
# (a pair written), too old when read, trimmed away before it was read, or unreadable.
FIELD_DISPATCH_QUEUED = "dispatch:queued"
FIELD_DISPATCH_OVERFLOW = "dispatch:overflow"
FIELD_DISPATCHED = "dispatch:dispatched"
FIELD_DISPATCH_EXPIRED = "dispatch:expired"
FIELD_DISPATCH_TRIMMED = "dispatch:trimmed"
FIELD_DISPATCH_BAD = "dispatch:bad"
# Canary served-by counts (proxy.canary), per candidate on canary: requests it could take,
# answered by it, or by the primary after it failed (canary:fallback_*); the report's
# `canary` section (eligible = served + fallbacks + outside the share).
FIELD_CANARY_ELIGIBLE = "canary:eligible"
FIELD_CANARY_PREFIX = "canary:"  # + served / fallback_timeout / fallback_error / ...

# The watch on the primary (issue 15): its records go through the pair capture to the
# stream of this reserved name, which no candidate can take (candidate names start with a
# letter or digit), read by workers in their own group.
WATCH = "~watch"
WATCH_GROUP = "shadowtrial-watch"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; build once from `settings.redis.prefix`."""

    prefix: str = "shadowtrial"

    def _tag(self, candidate: str) -> str:
        return f"{self.prefix}:{{{self.prefix}:{candidate}}}"

    def _registry_tag(self) -> str:
        return f"{self.prefix}:{{{self.prefix}}}"

    # -- per candidate (one cluster slot each) --
    def pairs(self, candidate: str) -> str:
        """Stream of pair records (XADD by proxies, XREADGROUP by workers)."""
        return f"{self._tag(candidate)}:pairs"

    def requests(self, candidate: str) -> str:
        """Stream of request records waiting for a dispatcher (`run = "dispatcher"`)."""
        return f"{self._tag(candidate)}:requests"

    def bucket(self, candidate: str, bucket_start: int) -> str:
        """Hash of additive counters for one time bucket (epoch seconds of its start)."""
        return f"{self.bucket_base(candidate)}{bucket_start}"

    def rollup(self, candidate: str, hour_start: int) -> str:
        """Hash of one hour's counters, merged from its buckets once they are old."""
        return f"{self.bucket_base(candidate)}h{hour_start}"

    def bucket_base(self, candidate: str) -> str:
        """`bucket(candidate, start)` without the start: Lua scripts append it themselves."""
        return f"{self._tag(candidate)}:bucket:"

    def bucket_index(self, candidate: str) -> str:
        """Sorted set of buckets by start: members `<start>` (bucket) and `h<start>` (rollup)."""
        return f"{self._tag(candidate)}:buckets"

    def samples(self, candidate: str, kind: str) -> str:
        """Capped list of example pairs of one kind (divergent, unparseable, contract)."""
        return f"{self._tag(candidate)}:samples:{kind}"

    def applied(self, candidate: str) -> str:
        """Set of stream ids already applied: makes apply-and-ack idempotent."""
        return f"{self._tag(candidate)}:applied"

    def admitted(self, candidate: str, feature: str) -> str:
        """Set of the (at most analysis.slices.MAX_VALUES) values of a feature counted apart."""
        return f"{self._tag(candidate)}:admitted:{feature}"

    def label_join(self, candidate: str, kind: str) -> str:
        """Base name of the label-join hashes (kind "preds" or "labels"), by generation.

        `preds` maps request id -> both predicted labels (a pair seen, its label not yet);
        `labels` maps request id -> ground truth (a label seen, its pair not yet). Each kind
        lives in generations `<base>:<n>` of capped size plus a counter `<base>:gen`.
        """
        return f"{self._tag(candidate)}:join:{kind}"

    def flips(self, candidate: str) -> str:
        """List of labelled negative flips, newest first: join key SEP label (join.lua
        join_flip, capped at `worker.label_join_max`), read by `shadowtrial export --flips`."""
        return f"{self.label_join(candidate, 'preds')}:flips"

    # -- the watch (one slot: the reserved name's tag) --
    def watch_bucket(self, start: int) -> str:
        """Hash of one bucket's folded watch state (analysis.watch_store); `h<start>`: an hour."""
        return f"{self.watch_base()}{start}"

    def watch_base(self) -> str:
        """`watch_bucket(start)` without the start."""
        return f"{self._tag(WATCH)}:watch:"

    def watch_index(self) -> str:
        """Sorted set of watch buckets by start: members `<start>` and `h<start>` (rollups)."""
        return f"{self._tag(WATCH)}:watch-buckets"

    def watch_reference(self) -> str:
        """Hash of the pinned reference window: from, to (ISO), by, at."""
        return f"{self._tag(WATCH)}:watch-reference"

    def watch_profile(self) -> str:
        """String: the uploaded training profile (JSON of analysis.watch_state.WatchState)."""
        return f"{self._tag(WATCH)}:watch-profile"

    def watch_preds(self, generation: int) -> str:
        """Hash request id -> `<bucket start> SEP <predicted class>`: watched answers
        waiting for their label (POST /v1/feedback), in generations of
        `worker.label_join_hours` (the current and the previous one are looked in; each
        capped at `label_join_max` and expiring after two generations)."""
        return f"{self._tag(WATCH)}:watch-preds:{generation}"

    def watch_labels(self, generation: int) -> str:
        """Hash request id -> a label that came before its watched answer was folded
        (generations as `watch_preds`)."""
        return f"{self._tag(WATCH)}:watch-labels:{generation}"

    # -- global (the registry's keys share one slot) --
    def registry(self) -> str:
        """Hash candidate name -> JSON of its live settings (sample, timeout, state)."""
        return f"{self._registry_tag()}:registry"

    def routing(self) -> str:
        """Hash with the current and previous primary URL and a version counter."""
        return f"{self._registry_tag()}:routing"

    def registry_seeded(self) -> str:
        """Hash config-file candidate name -> its config entry as last seeded: a candidate
        deleted or changed at runtime stays so after a restart, unless the file changed."""
        return f"{self._registry_tag()}:registry:seeded"

    def lock(self, name: str) -> str:
        """A short-lived SET NX lock or lease (one replica acts: time-box ends, automation)."""
        return f"{self.prefix}:lock:{name}"

    def gate_passing(self) -> str:
        """Hash candidate name -> epoch seconds since when its gate has passed (automation)."""
        return f"{self.prefix}:gate:passing"

    def gate_verdicts(self) -> str:
        """Hash candidate name -> the verdict the automation last saw (control.notify)."""
        return f"{self.prefix}:gate:verdicts"

    def gate_changes(self) -> str:
        """Stream of verdict changes no decision need follow (control.notify), capped."""
        return f"{self.prefix}:gate:changes"

    def events(self) -> str:
        """Pub/sub channel announcing registry or routing changes to every replica."""
        return f"{self.prefix}:events"

    def decisions(self) -> str:
        """Audit stream of promote / reject / rollback decisions."""
        return f"{self._registry_tag()}:decisions"

    def label(self, request_id: str) -> str:
        """Ground-truth label for one request (from POST /v1/feedback)."""
        return f"{self.prefix}:label:{request_id}"

    def candidates_seen(self) -> str:
        """Hash candidate name -> role for every candidate a worker has summarised."""
        return f"{self.prefix}:seen"

    def workers(self) -> str:
        """Sorted set worker id -> its last heartbeat (epoch s): whose health key to read."""
        return f"{self.prefix}:workers"

    def worker_health(self, worker_id: str) -> str:
        """Heartbeat of one worker, expiring after WORKER_HEALTH_TTL_S."""
        return f"{self.prefix}:worker:{worker_id}"
