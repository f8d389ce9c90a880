"""`run = "dispatcher"`: the proxy queues the request and the primary's answer, dispatcher
processes call the candidate (proxy.dispatch). On a real proxy, real primary and candidate
servers, real Redis, the real worker and report:

- the same traffic gives the same counters in both modes, and the accounting identity
  holds in both;
- a dispatcher killed mid-batch loses nothing, and one that is merely slow while another
  takes its records over duplicates nothing;
- a full queue and records too old are counted, as are unreadable records;
- the candidate never sees the client's credentials, the admin token or redacted headers,
  and those never wait in Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from proxy_upstreams import CANDIDATE_BODY, Gate, Primary, running_proxy, wait_until
from servers import free_port, serve_app

from analysis.report import build_report
from analysis.worker import Worker
from common.errors import ConfigError
from common.keys import DISPATCH_GROUP, Keys
from common.records import PairRecord
from common.redis_client import async_client
from common.settings import Settings, settings_from_mapping
from proxy.dispatch import Dispatcher

ROOT = Path(__file__).resolve().parents[1]
HOUR = 3600
ADMIN_TOKEN = "admin-token-that-must-stay-home-0123456789"
SECRET_HEADER = "x-tenant-secret"


@dataclass
class HeaderCandidate:
    """An ASGI candidate that keeps every request's headers; waits on `gate` if given."""

    gate: Gate | None = None
    seen: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        with self.lock:
            self.seen.append({n.decode(): v.decode() for n, v in scope["headers"]})
        if self.gate is not None:
            await self.gate.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": CANDIDATE_BODY})


def _raw(primary: str, candidate: str, prefix: str, **dispatch: Any) -> dict[str, Any]:
    return {
        "proxy": {
            "primary": primary, "mirror_paths": ["**"],
            "redact_headers": ["authorization", "cookie", "x-api-key", SECRET_HEADER],
        },
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "dispatch": {"block_ms": 20, **dispatch},
        "candidates": [
            {"name": "p", "url": candidate, "timeout_ms": 10_000},
            {"name": "d", "url": candidate, "timeout_ms": 10_000, "run": "dispatcher"},
        ],
    }  # fmt: skip


def _settings(primary: str, candidate: str, prefix: str, **dispatch: Any) -> Settings:
    return settings_from_mapping(_raw(primary, candidate, prefix, **dispatch), environ={})


@contextmanager
def running_dispatcher(settings: Settings, redis_url: str, consumer: str) -> Iterator[Dispatcher]:
    """A Dispatcher running its loop in a thread of its own; stopped (and drained) after."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        client = async_client(redis_url)
        box["d"] = Dispatcher(client, settings, consumer)
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        try:
            await box["d"].run()
        finally:
            await box["d"].close()
            await client.aclose()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield box["d"]
    finally:
        box["loop"].call_soon_threadsafe(box["d"].stop)
        thread.join(30)
        assert not thread.is_alive()


def _reports(
    client: redis.Redis, settings: Settings, names: tuple[str, ...] = ("p", "d")
) -> dict[str, dict[str, Any]]:
    """Drain the worker until every sampled request of each candidate is accounted for."""
    worker = Worker(client, settings)
    keys = Keys(settings.redis.prefix)
    found: dict[str, dict[str, Any]] = {}

    def settled() -> bool:
        worker.discover()
        while worker.read_new(block=False):
            pass
        for name in names:
            found[name] = build_report(client, keys, settings, name, HOUR)
        return all(r["pending"] == 0 for r in found.values())

    wait_until(settled, timeout_s=20, what="every sampled request accounted for")
    return found


def _identity_holds(report: dict[str, Any]) -> bool:
    ended = report["pairs"] + report["shed"] + sum(report["dropped"].values())
    ended += report["records"]["trimmed"] + report["records"]["bad"]
    return report["sampled"] == ended


def _pairs(client: redis.Redis, keys: Keys, name: str) -> list[PairRecord]:
    return [PairRecord.from_fields(f) for _, f in client.xrange(keys.pairs(name))]


HEADERS = {
    "authorization": f"Bearer {ADMIN_TOKEN}",
    "x-api-key": "client-key-123",
    "cookie": "session=abc",
    SECRET_HEADER: "tenant-secret-456",
    "x-tenant": "acme",
    "content-type": "application/json",
}
SECRETS = (ADMIN_TOKEN, "client-key-123", "session=abc", "tenant-secret-456")


def test_dispatched_pairs_match_the_proxys_and_never_carry_secrets(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    cand = HeaderCandidate()
    n = 12
    with serve_app(Primary()) as primary, serve_app(cand) as cand_url:
        settings = _settings(primary, cand_url, prefix)
        keys = Keys(prefix)
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
            for i in range(n):
                body = orjson.dumps({"i": i, "x": [1.5, 2.5]})
                assert http.post(px.url + "/json", content=body, headers=HEADERS).status_code == 200
            # A body holding a secret field is called by the proxy even for "d".
            secret_body = b'{"password": "hunter2", "i": -1}'
            assert http.post(px.url + "/json", content=secret_body).status_code == 200
            wait_until(lambda: px.settled("p") and px.settled("d"), what="mirrors to finish")
            queued = redis_client.xrange(keys.requests("d"))
            assert len(queued) == n  # nothing dispatched yet: no dispatcher runs
            assert len(cand.seen) == n + 2  # "p" each time, "d" for the secret only
            px.check_accounting("d")  # /metrics: sampled = dispatched + ..., all recorded
            raw = repr(queued).encode()
            assert not [s for s in (*SECRETS, "hunter2") if s.encode() in raw]
            with running_dispatcher(settings, redis_url, "one"):
                reports = _reports(redis_client, settings)
    p, d = reports["p"], reports["d"]
    for key in ("pairs", "sampled", "shed", "errors", "agreement"):
        assert p[key] == d[key], key
    assert d["pairs"] == n + 1 and d["pending"] == 0
    assert _identity_holds(p) and _identity_holds(d)
    assert d["dropped"]["dispatch_expired"] == d["dropped"]["dispatch_overflow"] == 0
    section = d["dispatch"]
    assert (section["queued"], section["dispatched"], section["queue_depth"]) == (n, n, 0)
    assert section["candidate_latency"]["dispatcher"]["n"] == n
    assert section["candidate_latency"]["proxy"]["n"] == 1  # the secret-holding request
    assert p["dispatch"] is None
    modes = sorted(r.mode for r in _pairs(redis_client, keys, "d"))
    assert modes == ["dispatcher"] * n + ["proxy"]
    assert {r.mode for r in _pairs(redis_client, keys, "p")} == {"proxy"}
    assert redis_client.xlen(keys.requests("d")) == 0  # finished records are deleted
    # The candidate got the same requests from both modes, minus what must stay home.
    assert len(cand.seen) == 2 * (n + 1)
    dispatched = [h for h in cand.seen if h.get("x-tenant") == "acme"]
    for headers in dispatched:
        assert not [s for s in SECRETS if any(s in v for v in headers.values())], headers
        assert headers["x-shadowtrial-shadow"] == "1" and SECRET_HEADER not in headers
    for pair in _pairs(redis_client, keys, "d"):
        assert not [s for s in SECRETS if s.encode() in repr(pair).encode()]


def test_overflow_and_expiry_are_counted_and_the_identity_holds(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    cand = HeaderCandidate()
    with serve_app(Primary()) as primary, serve_app(cand) as cand_url:
        settings = _settings(primary, cand_url, prefix, max_queue=3, max_age_s=0.2)
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
            for i in range(5):
                assert http.post(px.url + "/json", content=b'{"i": %d}' % i).status_code == 200
            wait_until(lambda: px.settled("d"), what="records queued")
            assert redis_client.xlen(Keys(prefix).requests("d")) == 3  # two refused
            px.check_accounting("d")  # the two refused are dropped on /metrics
            assert px.captured("d", "dropped") == 2
            time.sleep(0.3)  # every queued record is now older than max_age_s
            metrics = http.get(px.admin + "/metrics").text  # the proxy reads the queue
            assert 'shadowtrial_dispatch_queue_depth{candidate="d"} 3' in metrics
            lag = _sample(metrics, 'shadowtrial_dispatch_lag_seconds{candidate="d"}')
            assert 0.3 <= lag < 30
            calls_before = len(cand.seen)  # "p" was called by the proxy
            with running_dispatcher(settings, redis_url, "late"):
                report = _reports(redis_client, settings, ("d",))["d"]
    assert len(cand.seen) == calls_before  # nothing expired was sent
    assert report["pairs"] == 0 and report["sampled"] == 5 and report["pending"] == 0
    assert report["dropped"]["dispatch_overflow"] == 2
    assert report["dropped"]["dispatch_expired"] == 3
    assert _identity_holds(report)
    assert report["dispatch"]["expired"] == 3 and report["dispatch"]["overflow"] == 2


def _sample(text: str, series: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(series + " "))
    return float(line.rsplit(" ", 1)[1])


def test_unreadable_records_are_counted_bad_and_never_sent(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    cand = HeaderCandidate()
    keys = Keys(prefix)
    with serve_app(cand) as cand_url:
        settings = _settings("http://127.0.0.1:9", cand_url, prefix)
        stream = keys.requests("d")
        good = PairRecord("r1", "d", int(time.time() * 1000), mode="dispatcher").to_fields()
        hostile = [
            {b"m": b"\xff not json"},
            {b"m": b'{"v": 1, "request_id": ["x"]}'},
            {**good, b"h": b'[["x-evil", "a\\r\\nInjected: 1"]]'},
            {**good, b"h": b'{"not": "a list"}'},
            {**good, b"h": orjson.dumps([["a", "b"]] * 10_000)},
        ]
        redis_client.xgroup_create(stream, DISPATCH_GROUP, id="0", mkstream=True)
        for fields in hostile:
            redis_client.xadd(stream, fields)

        async def rounds() -> None:
            client = async_client(redis_url)
            dispatcher = Dispatcher(client, settings, "bad")
            try:
                await dispatcher.round(block=False)
                await dispatcher.drain(5)
            finally:
                await dispatcher.close()
                await client.aclose()

        asyncio.run(rounds())
    assert cand.seen == []
    counts: dict[str, int] = {}
    for member in redis_client.zrange(keys.bucket_index("d"), 0, -1):
        for name, value in redis_client.hgetall(keys.bucket("d", int(member))).items():
            counts[name.decode()] = counts.get(name.decode(), 0) + int(value)
    assert counts == {"dispatch:bad": len(hostile)}
    assert redis_client.xlen(stream) == 0 and redis_client.xlen(keys.pairs("d")) == 0


def test_two_dispatchers_on_one_record_write_one_pair(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """A slow (alive) dispatcher's records are taken over; both call the candidate, the
    first to finish writes the pair, the other's acknowledgement finds nothing to do."""
    gate = Gate()
    cand = HeaderCandidate(gate=gate)
    n = 6
    keys = Keys(prefix)
    with serve_app(Primary()) as primary, serve_app(cand) as cand_url:
        raw = _raw(primary, cand_url, prefix)
        raw["candidates"] = raw["candidates"][1:]  # only "d"
        slow = settings_from_mapping(raw, environ={})
        raw["dispatch"]["claim_idle_ms"] = 100
        eager = settings_from_mapping(raw, environ={})
        try:
            with (
                running_proxy(slow, redis_url) as px,
                httpx.Client(timeout=10) as http,
                running_dispatcher(slow, redis_url, "slow") as first,
            ):
                for i in range(n):
                    http.post(px.url + "/json", content=b'{"i": %d}' % i)
                wait_until(lambda: len(cand.seen) == n, what="the first calls")
                with running_dispatcher(eager, redis_url, "eager") as second:
                    wait_until(lambda: len(cand.seen) == 2 * n, what="calls taken over")
                    time.sleep(1.5)  # more claim rounds: its own calls look idle too
                    assert len(cand.seen) == 2 * n  # ... and are not made again
                    gate.open()
                    report = _reports(redis_client, slow, ("d",))["d"]
                    wait_until(lambda: _finished(first) + _finished(second) == 2 * n)
                    taken = _taken_over(first) + _taken_over(second)
        finally:
            gate.open()
    pairs = _pairs(redis_client, keys, "d")
    assert sorted(p.request_id for p in pairs) == sorted({p.request_id for p in pairs})
    assert len(pairs) == n and report["pairs"] == n and report["dispatch"]["dispatched"] == n
    assert taken == n
    assert _identity_holds(report)


def _finished(d: Dispatcher) -> float:
    return sum(
        s.value for m in d.metrics.outcomes.collect() for s in m.samples
        if s.name.endswith("_total")
    )  # fmt: skip


def _taken_over(d: Dispatcher) -> float:
    return sum(
        s.value for m in d.metrics.outcomes.collect() for s in m.samples
        if s.name.endswith("_total") and s.labels["outcome"] == "taken_over"
    )  # fmt: skip


def test_a_killed_dispatcher_loses_nothing(
    redis_url: str, prefix: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """`shadowtrial dispatch` SIGKILLed with every call in flight: a second dispatcher takes
    its records over once they are idle; every request becomes exactly one pair."""
    gate = Gate()
    cand = HeaderCandidate(gate=gate)
    n = 8
    keys = Keys(prefix)
    with serve_app(Primary()) as primary, serve_app(cand) as cand_url:
        raw = _raw(primary, cand_url, prefix, claim_idle_ms=300, cpu_priority="idle")
        raw["candidates"] = raw["candidates"][1:]
        settings = settings_from_mapping(raw, environ={})
        config = tmp_path / "shadowtrial.toml"
        config.write_text(_toml(raw, redis_url))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SHADOWTRIAL_CONFIG": str(config)}
        try:
            with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
                for i in range(n):
                    http.post(px.url + "/json", content=b'{"i": %d}' % i)
                wait_until(lambda: px.settled("d"), what="records queued")
                port = free_port()
                argv = ["dispatch", "--id", "doomed", "--metrics-port", str(port)]
                proc = subprocess.Popen(
                    [sys.executable, "-m", "shadowtrial", *argv],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    wait_until(lambda: len(cand.seen) == n, timeout_s=30, what="calls")
                    # Its own /metrics: every call in flight, the queue still holding them.
                    metrics = f"http://127.0.0.1:{port}/metrics"
                    wait_until(
                        lambda: f'shadowtrial_dispatch_queue_depth{{candidate="d"}} {n}.0'
                        in http.get(metrics).text, what="the queue gauge",
                    )  # fmt: skip
                    assert f"shadowtrial_dispatch_in_flight {n}.0" in http.get(metrics).text
                    # dispatch.cpu_priority = "idle": the proxies get the CPU first.
                    assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
                finally:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                assert redis_client.xlen(keys.pairs("d")) == 0  # killed before any finished
                gate.open()
                with running_dispatcher(settings, redis_url, "survivor"):
                    report = _reports(redis_client, settings, ("d",))["d"]
        finally:
            gate.open()
    pairs = _pairs(redis_client, keys, "d")
    assert sorted(p.request_id for p in pairs) == sorted({p.request_id for p in pairs})
    assert len(pairs) == n and report["pending"] == 0 and _identity_holds(report)
    assert len(cand.seen) == 2 * n  # each called twice: recorded once
    assert redis_client.xlen(keys.requests("d")) == 0


def _toml(raw: dict[str, Any], redis_url: str) -> str:
    """The test's settings as a config file for the `shadowtrial dispatch` process."""
    lines = [f'[redis]\nurl = "{redis_url}"\nprefix = "{raw["redis"]["prefix"]}"']
    values = raw["dispatch"].items()
    lines.append("[dispatch]\n" + "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in values))
    for cand in raw["candidates"]:
        body = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in cand.items())
        lines.append(f"[[candidates]]\n{body}")
    return "\n\n".join(lines) + "\n"


def test_dispatcher_settings_refuse_what_cannot_wait_in_redis() -> None:
    base = {"name": "d", "url": "http://127.0.0.1:9", "run": "dispatcher"}
    with pytest.raises(ConfigError, match="forward_credentials"):
        settings_from_mapping({"candidates": [{**base, "forward_credentials": True}]}, {})
    with pytest.raises(ConfigError, match="only HTTP candidates"):
        onnx = {"name": "o", "onnx": "m.onnx", "run": "dispatcher"}
        settings_from_mapping({"candidates": [onnx]}, {})
    with pytest.raises(ConfigError, match="one of idle, low, normal"):
        settings_from_mapping({"candidates": [base], "dispatch": {"cpu_priority": "high"}}, {})
    settings = settings_from_mapping({"candidates": [base], "dispatch": {"max_queue": 5}}, {})
    assert settings.candidates[0].run == "dispatcher" and settings.dispatch.max_queue == 5
    assert settings.dispatch.cpu_priority == "normal"  # candidate latencies stay faithful


def test_a_candidate_registered_with_run_dispatcher_is_dispatched(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin API takes `run: proxy|dispatcher`; the proxy queues for the registered
    candidate and a dispatcher finds it in the registry."""
    from admin_harness import ALICE, Model, trial

    from proxy.candidates import DispatchedCandidate

    with trial(redis_url, prefix, monkeypatch) as t:
        app = t.replicas[0].app
        extra = Model("extra")
        with serve_app(extra) as extra_url:
            url = t.admin() + "/v1/candidates"
            for bad in ("worker", "elsewhere", 1):
                body = {"name": "v3", "url": extra_url, "run": bad}
                refused = t.http.post(url, json=body, headers=ALICE)
                assert refused.status_code == 400, refused.text
            body = {"name": "v3", "url": extra_url, "run": "dispatcher"}
            created = t.http.post(url, json=body, headers=ALICE)
            assert created.status_code == 201 and created.json()["run"] == "dispatcher"
            wait_until(lambda: any(m.name == "v3" for m in app.routing.mirrors), what="v3")
            runner = next(m.runner for m in app.routing.mirrors if m.name == "v3")
            assert isinstance(runner, DispatchedCandidate)
            t.send(0, n=3)
            wait_until(lambda: t.redis.xlen(t.keys.requests("v3")) == 3, what="3 queued")
            assert extra.hits == []  # the proxy did not call it
            with running_dispatcher(t.conf, redis_url, "registry"):
                wait_until(lambda: t.stream_length("v3") == 3, what="3 dispatched pairs")
            assert len(extra.hits) == 3


def test_records_trimmed_before_anyone_finished_them_are_counted(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """A dead dispatcher's records deleted from the stream (an operator's XTRIM) before a
    live one takes them over: gone, but counted `dispatch:trimmed`, never lost silently."""
    keys = Keys(prefix)
    stream = keys.requests("d")
    settings = _settings("http://127.0.0.1:9", "http://127.0.0.1:9", prefix, claim_idle_ms=100)
    record = PairRecord("r", "d", int(time.time() * 1000), mode="dispatcher").to_fields()
    redis_client.xgroup_create(stream, DISPATCH_GROUP, id="0", mkstream=True)
    for _ in range(3):
        redis_client.xadd(stream, {**record, b"h": b"[]"})
    read = redis_client.xreadgroup(DISPATCH_GROUP, "dead", {stream: ">"}, count=10)
    assert len(read[0][1]) == 3
    redis_client.xtrim(stream, maxlen=0)
    time.sleep(0.2)  # idle beyond claim_idle_ms

    async def rounds() -> None:
        client = async_client(redis_url)
        dispatcher = Dispatcher(client, settings, "live")
        try:
            await dispatcher.round(block=False)
            await dispatcher.drain(5)
        finally:
            await dispatcher.close()
            await client.aclose()

    asyncio.run(rounds())
    counts: dict[str, int] = {}
    for member in redis_client.zrange(keys.bucket_index("d"), 0, -1):
        for name, value in redis_client.hgetall(keys.bucket("d", int(member))).items():
            counts[name.decode()] = counts.get(name.decode(), 0) + int(value)
    assert counts == {"dispatch:trimmed": 3}
    assert redis_client.xpending(stream, DISPATCH_GROUP)["pending"] == 0


def test_redis_dying_mid_call_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Redis (append-only) killed while every call is in flight and restarted: the records
    the dispatcher could not finish stay pending, are taken over after claim_idle_ms and
    become exactly one pair each."""
    from reliability_harness import redis_server

    gate = Gate()
    cand = HeaderCandidate(gate=gate)
    n = 5
    prefix = f"t{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    with redis_server(tmp_path, persist=True) as server, serve_app(cand) as cand_url:
        settings = _settings("http://127.0.0.1:9", cand_url, prefix, claim_idle_ms=300)
        client = redis.Redis.from_url(server.url)
        stream = keys.requests("d")
        client.xgroup_create(stream, DISPATCH_GROUP, id="0", mkstream=True)
        for i in range(n):
            record = PairRecord(f"r{i}", "d", int(time.time() * 1000), mode="dispatcher")
            client.xadd(stream, {**record.to_fields(), b"h": b"[]"})
        try:
            with running_dispatcher(settings, server.url, "survivor"):
                wait_until(lambda: len(cand.seen) == n, what="every call in flight")
                server.kill()
                gate.open()  # the answers arrive while Redis is away: nothing is written
                time.sleep(0.5)
                server.start()
                wait_until(lambda: client.xlen(keys.pairs("d")) == n, timeout_s=20,
                           what="every record finished after the restart")  # fmt: skip
                assert client.xlen(stream) == 0
        finally:
            gate.open()
        pairs = [PairRecord.from_fields(f) for _, f in client.xrange(keys.pairs("d"))]
        assert sorted(p.request_id for p in pairs) == [f"r{i}" for i in range(n)]
        assert len(cand.seen) == 2 * n  # called again after the restart, recorded once
        assert client.xpending(stream, DISPATCH_GROUP)["pending"] == 0
        client.close()


@pytest.mark.parametrize(
    ("priority", "policy", "nice_added"),
    [("idle", "SCHED_IDLE", 0), ("low", "SCHED_OTHER", 10), ("normal", "SCHED_OTHER", 0)],
)
def test_dispatch_cpu_priority_is_applied_to_the_process(
    priority: str, policy: str, nice_added: int
) -> None:
    """What serve_dispatcher applies before its first round, read back by the process."""
    code = (
        "import os; from proxy.dispatch import _lower_priority; before = os.nice(0); "
        f"_lower_priority({priority!r}); "
        "print(os.sched_getscheduler(0), os.nice(0) - before)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.split()  # fmt: skip
    assert int(out[0]) == getattr(os, policy)
    assert int(out[1]) == min(nice_added, 19 - os.nice(0))
