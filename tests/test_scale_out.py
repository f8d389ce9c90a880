"""Scale out, not up: (1 proxy, 1 worker) and (3 proxies, 4 workers) give the same report.

The same recorded traffic (a deterministic set of requests with request ids, tenant
headers and a country per row) goes from the same real model servers through one
`shadowtrial serve` process judged by one `shadowtrial worker`, and through three proxies
(round-robin) judged by four workers sharing the consumer group; both on one Redis under
different prefixes. Every count and statistic of both reports must be equal: pairs, sampled,
agreement and its intervals, the flip matrix, confidence histograms and shift, slices,
discovered slices. Left out, because they measure *when* and *how fast* rather than *what*
(fleet.VOLATILE): the time window and per-bucket timeline (wall-clock), latency (each
process's own timing, naturally different), the gate (its p99-ratio rule reads latency),
and drill-down examples (which pair of a batch is kept as an example depends on how the
batches fell).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from common.keys import Keys
from tests import fleet as fl
from tests import worker_procs as wp

pytestmark = pytest.mark.slow  # ~30 s: nine processes start and 2 x 2,400 requests flow

REQUESTS = 2400
CANDIDATES = (("v2", "v2", 0.5), ("same", "v1", 1.0))  # name, model variant, sample
WORKER = {"batch": 50}  # small batches: four workers all get a share


@dataclass
class Setup:
    """One deployment: its prefix, proxies and worker names."""

    prefix: str
    proxies: list[fl.Proxy]
    workers: list[str]


@dataclass
class Outcome:
    """Both deployments after the traffic, with their reports per candidate."""

    small: Setup
    large: Setup
    expected: dict[str, int]
    reports: dict[str, dict[str, dict[str, Any]]]  # setup -> candidate -> report
    fleet: fl.Fleet


def _setup(fleet: fl.Fleet, config: Path, name: str, prefix: str, size: tuple[int, int]) -> Setup:
    proxies = [fleet.proxy(f"{name}-proxy-{i}", config) for i in range(size[0])]
    workers = [f"{name}-worker-{i}" for i in range(size[1])]
    for worker in workers:
        fleet.worker(worker, config)
    return Setup(prefix, proxies, workers)


@pytest.fixture(scope="module")
def outcome(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """Start both deployments at once, send them the traffic, wait for every pair."""
    folder = tmp_path_factory.mktemp("scale")
    fleet = fl.Fleet(folder)
    client = redis.Redis.from_url(redis_url)
    setups: list[Setup] = []
    try:
        models = {v: fleet.model_server(f"model-{v}", v) for v in ("v1", "v2")}
        cands = [fl.Candidate(n, models[v], s) for n, v, s in CANDIDATES]
        for name, size in (("small", (1, 1)), ("large", (3, 4))):
            prefix = f"t{uuid.uuid4().hex[:10]}{name}"
            path = folder / f"{name}.toml"
            config = fl.write_config(path, redis_url, prefix, models["v1"], cands, WORKER)
            setups.append(_setup(fleet, config, name, prefix, size))
        small, large = setups
        health = [f"{u}/v2/health/ready" for u in models.values()]
        fleet.wait_http([*health, *(f"{p.admin}/healthz" for s in setups for p in s.proxies)])
        for s in setups:  # every worker has joined before any pair arrives
            keys = Keys(s.prefix)
            fleet.wait_until(
                lambda s=s, keys=keys: all(client.exists(keys.worker_health(w)) for w in s.workers),
                30,
                f"{s.workers} healthy",
            )
        traffic = fl.make_traffic(REQUESTS)
        expected = {n: fl.expected_pairs(traffic, s) for n, _, s in CANDIDATES}
        reports = {}
        for label, s in (("small", small), ("large", large)):
            assert fl.send(traffic, [p.data for p in s.proxies]) == {200: REQUESTS}
            reports[label] = fl.wait_for_pairs(fleet, s.proxies[-1].admin, expected)
        yield Outcome(small, large, expected, reports, fleet)
    finally:
        fleet.close()
        for s in setups:
            _delete(client, s.prefix)
        client.close()


def _delete(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def test_one_and_many_processes_give_identical_reports(outcome: Outcome) -> None:
    for name, n in outcome.expected.items():
        small, large = outcome.reports["small"][name], outcome.reports["large"][name]
        assert small["pairs"] == large["pairs"] == n
        assert fl.comparable(small) == fl.comparable(large), name
        assert set(small) - set(fl.comparable(small)) == set(fl.VOLATILE)
    v2 = outcome.reports["large"]["v2"]
    # the comparison is about something: flips, slices, discoveries, two histograms
    assert 0 < outcome.expected["v2"] < REQUESTS
    assert v2["flips"]["matrix"][1][0] > 0 and v2["agreement"]["rate"] < 1.0
    assert {s["slice"] for s in v2["slices"]} >= {"tenant", "country"}
    assert len({s["agreement"] for s in v2["slices"]}) > 1
    assert sum(v2["confidence"]["primary"]["hist"]) == sum(v2["confidence"]["candidate"]["hist"])
    assert v2["confidence"]["primary"]["hist"] != v2["confidence"]["candidate"]["hist"]


def test_every_process_of_the_large_setup_took_part(outcome: Outcome, redis_url: str) -> None:
    large = outcome.large
    total = sum(outcome.expected.values())
    recorded = [
        fl.metric_sum(p.admin, "shadowtrial_capture_total", outcome="recorded")
        for p in large.proxies
    ]
    assert sum(recorded) == total and all(r > 0 for r in recorded)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = Keys(large.prefix)
        applied: list[int] = []

        def all_reported() -> bool:  # health keys are refreshed every 2 s
            applied[:] = [wp.applied_by(client, keys, w) for w in large.workers]
            return sum(applied) == total

        outcome.fleet.wait_until(all_reported, 10, "every worker's applied count")
        assert all(a > 0 for a in applied), applied
        for name in outcome.expected:
            assert wp.consumed(client, keys, name)
    finally:
        client.close()
