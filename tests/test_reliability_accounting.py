"""The accounting identity on a run where every outcome happens, checked from /metrics as
Prometheus serves it and from the streams in Redis.

Per candidate, once nothing is in flight and the spool is empty (proxy/metrics.py):

    sampled = ok + http_error + timeout + error + deferred          (mirror outcomes that
              + shed + too_large + primary_failed                    reach capture, then those
                                                                     that never do)
    ok + http_error + timeout + error + deferred = recorded + dropped
    recorded = XLEN of the candidate's stream

so sampled = recorded + dropped + shed + too_large + primary_failed: timeouts and candidate
errors ARE recorded pairs (class ERR in the flip matrix), never silent. And per request:
every request sent gets exactly one answer, is counted once in shadowtrial_requests_total
and reaches the primary exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis
from fixtures.onnx_models import tiny_model
from proxy_upstreams import (
    Candidate,
    Gate,
    Primary,
    proxy_settings,
    reset_server,
    running_proxy,
    wait_until,
)
from reliability_harness import Metrics, RedisServer, redis_server
from servers import serve_app

from common.keys import Keys
from common.records import OUTCOMES

PREFIX = "acct"
CANDIDATES = ("ok", "fail", "hang", "reset", "deferred")
MIRROR_OUTCOMES = (*OUTCOMES, "shed", "too_large", "primary_failed")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path, persist=True) as server:  # pairs survive the SIGKILL below
        yield server


def _identity(metrics: Metrics, client: redis.Redis, name: str) -> dict[str, float]:
    terms = {
        o: metrics.get_value("shadowtrial_mirror_outcomes_total", candidate=name, outcome=o)
        for o in MIRROR_OUTCOMES
    }
    for o in ("recorded", "dropped", "spooled"):
        terms[o] = metrics.get_value("shadowtrial_capture_total", candidate=name, outcome=o)
    terms["sampled"] = metrics.get_value("shadowtrial_mirror_sampled_total", candidate=name)
    terms["xlen"] = client.xlen(Keys(PREFIX).pairs(name))
    assert metrics.get_value("shadowtrial_mirrors_in_flight", candidate=name) == 0
    assert terms["sampled"] == sum(terms[o] for o in MIRROR_OUTCOMES), (name, terms)
    handed = sum(terms[o] for o in OUTCOMES)
    assert handed == terms["recorded"] + terms["dropped"], (name, terms)
    assert terms["recorded"] == terms["xlen"], (name, terms)
    assert terms["sampled"] == (
        terms["recorded"] + terms["dropped"] + terms["shed"] + terms["too_large"]
        + terms["primary_failed"]
    ), (name, terms)  # fmt: skip
    return terms


def test_every_sampled_mirror_is_recorded_or_counted_once(
    store: RedisServer, tmp_path: Path
) -> None:
    gate = Gate()
    primary = Primary()
    with ExitStack() as stack:
        primary_url = stack.enter_context(serve_app(primary))
        urls = {
            "ok": stack.enter_context(serve_app(Candidate())),
            "fail": stack.enter_context(serve_app(Candidate(status=500))),
            "hang": stack.enter_context(serve_app(Candidate(gate=gate))),
            "reset": stack.enter_context(reset_server()),
        }
        stack.callback(gate.open)  # before the hanging server stops
        candidates = [{"name": n, "url": u, "timeout_ms": 200} for n, u in urls.items()]
        model = tiny_model(tmp_path, "deferred")  # run by the worker: the proxy records only
        candidates.append({"name": "deferred", "onnx": str(model), "run": "worker"})
        settings = proxy_settings(
            primary_url, candidates, prefix=PREFIX, mirror_concurrency=12,
            max_capture_bytes=2000, spool_max=5, primary_timeout_ms=500,
        )  # fmt: skip
        px = stack.enter_context(running_proxy(settings, store.url))
        http = stack.enter_context(httpx.Client(timeout=10))
        client = redis.Redis.from_url(store.url)
        stack.callback(client.close)
        answers: list[int] = []

        def send(path: str, n: int, body: bytes = b'{"inputs": [1]}') -> None:
            answers.extend(http.post(px.url + path, content=body).status_code for _ in range(n))

        def settled() -> bool:
            metrics = Metrics.parse(http.get(px.admin + "/metrics").text)
            return (
                all(
                    metrics.get_value("shadowtrial_mirrors_in_flight", candidate=c) == 0
                    for c in CANDIDATES
                )
                and px.app.capture.depth == 0
            )

        send("/json", 40)  # the hanging candidate holds slots 200 ms each: others are shed
        send("/json", 5, body=b"x" * 3000)  # over max_capture_bytes: forwarded, not mirrored
        send("/slow/1500", 5)  # the primary times out: 504, mirrors not recorded
        wait_until(settled, timeout_s=15, what="mirrors to settle")
        store.kill()
        send("/json", 12)  # Redis down: 5 records spooled, the rest dropped
        wait_until(lambda: px.app.capture.depth == 5, timeout_s=15, what="a full spool")
        store.start()
        wait_until(settled, timeout_s=15, what="the spool to be written")
        metrics = Metrics.parse(http.get(px.admin + "/metrics").text)
        terms = {name: _identity(metrics, client, name) for name in CANDIDATES}
    for name, t in terms.items():  # shown with -s: the numbers in RELIABILITY.md
        print(name, {k: int(v) for k, v in t.items() if v})
    sent = 40 + 5 + 5 + 12
    # A loaded machine may time out an ordinary request too: the identity holds regardless.
    assert len(answers) == sent and answers.count(504) >= 5
    assert answers.count(200) + answers.count(504) == sent
    assert metrics.total("shadowtrial_requests_total") == sent
    assert len(primary.received) == sent  # each request reached the primary exactly once
    # Every term of the identity happened in this run.
    everything = {k: sum(t[k] for t in terms.values()) for k in terms["ok"]}
    for term in (*MIRROR_OUTCOMES, "recorded", "dropped", "spooled"):
        assert everything[term] > 0, (term, terms)
    assert terms["hang"]["timeout"] > 0 and terms["reset"]["error"] > 0
    assert terms["deferred"]["deferred"] > 0 and terms["fail"]["http_error"] > 0
