"""Where traffic goes right now: the primary's base URL and the candidates mirrored to.

The forwarder reads `table.primary`, `table.mirrors` and `table.canary` once per
request; every change replaces an attribute with a new immutable value, so a swap is one
assignment (atomic on the event loop): requests already in flight keep the values they
read, new ones see the new ones. The values start from the settings;
control.sync.RegistrySync then keeps them in step with the registry in Redis (pub/sub
plus a periodic re-read) on every replica, through `set_primary` / `set_mirrors` /
`set_canary`, and records the registry `version` applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.settings import Settings
from proxy.runner import CandidateRunner


@dataclass(frozen=True, slots=True)
class MirrorTarget:
    """One candidate as the mirror sees it: its runner and its sample rate."""

    runner: CandidateRunner
    sample: float

    @property
    def name(self) -> str:
        """The candidate's name (its stream)."""
        return self.runner.name


@dataclass(frozen=True, slots=True)
class CanaryTarget:
    """One candidate on canary (proxy.canary): where it answers, the share of keys it gets."""

    name: str
    url: str
    weight: float
    timeout_s: float


class RoutingTable:
    """The live routing state of one proxy process."""

    def __init__(self, primary: str, mirrors: Iterable[MirrorTarget] = ()) -> None:
        self.primary = primary.rstrip("/")
        self.mirrors: tuple[MirrorTarget, ...] = tuple(mirrors)
        self.version = 0  # registry version last applied (0: the settings alone)
        self.canary: tuple[CanaryTarget, ...] = ()  # candidates answering a share of requests
        # X-Shadowtrial-Served-By of the primary's answers: "primary", or the promoted name
        self.primary_name = b"primary"

    @classmethod
    def from_settings(cls, settings: Settings, runners: Sequence[CandidateRunner]) -> RoutingTable:
        """The configured primary, and every configured candidate at its sample rate."""
        by_name = {runner.name: runner for runner in runners}
        mirrors = [
            MirrorTarget(by_name[cand.name], cand.sample)
            for cand in settings.candidates
            if cand.name in by_name
        ]
        return cls(settings.proxy.primary, mirrors)

    def set_primary(self, url: str) -> None:
        """Send new requests to another primary (one assignment)."""
        self.primary = url.rstrip("/")

    def set_mirrors(self, mirrors: Iterable[MirrorTarget]) -> None:
        """Replace the set of candidates mirrored to (one assignment)."""
        self.mirrors = tuple(mirrors)

    def set_canary(self, targets: Iterable[CanaryTarget]) -> None:
        """Replace the candidates on canary (one assignment)."""
        self.canary = tuple(targets)

    def primary_address(self) -> tuple[str, int]:
        """Host and port of the primary, for readiness probes."""
        parts = urlsplit(self.primary)
        default = 443 if parts.scheme == "https" else 80
        return parts.hostname or "127.0.0.1", parts.port or default
