"""Mirroring: what is sampled, what candidates receive, what is recorded, what is shed."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
import redis
from proxy_upstreams import (
    CANDIDATE_BODY,
    JSON_BODY,
    Candidate,
    Gate,
    Primary,
    proxy_settings,
    reset_server,
    running_proxy,
    wait_until,
)
from servers import free_port, serve_app

from common.keys import Keys
from common.records import PairRecord
from proxy.mirror import sample_point

INFER = "/v2/models/m/infer"


@pytest.fixture(scope="module")
def primary() -> Iterator[tuple[Primary, str]]:
    app = Primary()
    with serve_app(app) as url:
        yield app, url


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def pairs(client: redis.Redis, prefix: str, candidate: str) -> list[PairRecord]:
    entries = client.xrange(Keys(prefix).pairs(candidate))
    return [PairRecord.from_fields(fields) for _, fields in entries]


def test_pair_record_holds_both_answers_and_redacts_secrets(
    primary: tuple[Primary, str], redis_url: str, prefix: str, redis_client: redis.Redis,
    client: httpx.Client,
) -> None:  # fmt: skip
    cand = Candidate()
    with serve_app(cand) as cand_url:
        settings = proxy_settings(
            primary[1],
            [{"name": "v2", "url": cand_url}],
            prefix=prefix,
            capture_headers=["content-type", "authorization", "cookie"],
            slices=[{"name": "tenant", "from": "header:X-Tenant"}],
        )
        with running_proxy(settings, redis_url) as px:
            headers = {
                "content-type": "application/json",
                "authorization": "Bearer s3cret",
                "cookie": "session=abc",
                "x-tenant": "acme",
                "x-request-id": "rid-1",
                "x-not-captured": "1",
            }
            body = b'{"inputs": [1, 2]}'
            response = client.post(px.url + "/json?debug=1", content=body, headers=headers)
            assert response.content == JSON_BODY
            wait_until(lambda: len(pairs(redis_client, prefix, "v2")) == 1, what="one pair")
            px.check_accounting("v2")
    (record,) = pairs(redis_client, prefix, "v2")
    assert record.request_id == "rid-1" and record.candidate == "v2"
    assert abs(record.ts_ms - time.time() * 1000) < 60_000
    assert (record.method, record.path, record.query) == ("POST", "/json", "debug=1")
    assert record.request_body == body
    assert record.primary_status == 200 and record.primary_body == JSON_BODY
    assert record.primary_content_type == "application/json"
    assert record.candidate_outcome == "ok" and record.candidate_status == 200
    assert record.candidate_body == CANDIDATE_BODY
    assert record.candidate_content_type == "application/json"
    assert record.primary_ms > 0 and record.candidate_ms > 0
    assert record.role == "candidate" and record.candidate_error == ""
    assert record.headers == {
        "content-type": "application/json",
        "authorization": "[redacted]",
        "cookie": "[redacted]",
        "x-tenant": "acme",
    }
    # The candidate got the same request: body, id, and no secret stripped or added.
    assert cand.bodies == [body] and cand.request_ids == ["rid-1"]


def _timed(client: httpx.Client, url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    response = client.post(url, content=b'{"x": 1}')
    return time.perf_counter() - started, response.content


def test_failing_candidates_change_neither_answer_nor_latency(
    primary: tuple[Primary, str], redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    gate = Gate()
    names = ("hang", "fail", "reset", "slow")
    with ExitStack() as stack:
        hang = stack.enter_context(serve_app(Candidate(gate=gate)))
        stack.callback(gate.open)  # before the hanging server stops
        fail = stack.enter_context(serve_app(Candidate(status=500)))
        slow = stack.enter_context(serve_app(Candidate(delay_s=0.2)))
        reset = stack.enter_context(reset_server())
        candidates = [
            {"name": "hang", "url": hang, "timeout_ms": 300},
            {"name": "fail", "url": fail},
            {"name": "reset", "url": reset},
            {"name": "slow", "url": slow, "timeout_ms": 5000},
        ]
        plain = stack.enter_context(running_proxy(proxy_settings(primary[1]), redis_url))
        shadow = stack.enter_context(
            running_proxy(
                proxy_settings(primary[1], candidates, prefix=prefix, mirror_concurrency=4096),
                redis_url,
            )
        )
        n, sent, medians = 60, 5, []
        with httpx.Client(timeout=10) as client:
            for _ in range(5):  # warm both connection pools
                _timed(client, plain.url + "/json")
                _timed(client, shadow.url + "/json")
            # Up to three attempts: a machine saturated by other work can spoil one, while
            # a proxy that waits on its candidates fails every attempt.
            for _attempt in range(3):
                base, mirrored = [], []
                for _ in range(n):  # interleaved, so drift hits both alike
                    took, body = _timed(client, plain.url + "/json")
                    assert body == JSON_BODY
                    base.append(took)
                    took, body = _timed(client, shadow.url + "/json")
                    assert body == JSON_BODY
                    mirrored.append(took)
                sent += n
                medians.append((statistics.median(base), statistics.median(mirrored)))
                if medians[-1][1] <= medians[-1][0] * 1.5 + 0.005:
                    break
        wait_until(lambda: all(shadow.settled(c) for c in names), what="mirrors to finish")
        for name in names:
            shadow.check_accounting(name)
    assert any(m <= b * 1.5 + 0.005 for b, m in medians), medians
    total = sent
    assert shadow.outcome("hang", "timeout") == total
    assert shadow.outcome("fail", "http_error") == total
    assert shadow.outcome("reset", "error") == total
    assert shadow.outcome("slow", "ok") == total
    outcomes = {
        name: {r.candidate_outcome for r in pairs(redis_client, prefix, name)} for name in names
    }
    assert outcomes == {
        "hang": {"timeout"},
        "fail": {"http_error"},
        "reset": {"error"},
        "slow": {"ok"},
    }
    slow_record = pairs(redis_client, prefix, "slow")[0]
    # The server's 200 ms timer runs on its loop's cached clock and may fire a few µs early;
    # the candidate's time now excludes connection setup, so nothing pads it.
    assert slow_record.candidate_ms >= 195 > slow_record.primary_ms


def test_mirrors_beyond_the_bound_are_shed_and_counted(
    primary: tuple[Primary, str], redis_url: str, prefix: str, redis_client: redis.Redis,
    client: httpx.Client,
) -> None:  # fmt: skip
    gate = Gate()
    cand = Candidate(gate=gate)
    with serve_app(cand) as cand_url:
        try:
            settings = proxy_settings(
                primary[1], [{"name": "blocked", "url": cand_url, "timeout_ms": 30_000}],
                prefix=prefix, mirror_concurrency=2,
            )  # fmt: skip
            with running_proxy(settings, redis_url) as px:
                for _ in range(6):
                    started = time.monotonic()
                    assert client.post(px.url + "/json", content=b"{}").content == JSON_BODY
                    assert time.monotonic() - started < 2.0
                assert px.outcome("blocked", "shed") == 4
                assert px.value("shadowtrial_mirrors_in_flight", candidate="blocked") == 2
                assert px.sampled("blocked") == 6
                gate.open()
                wait_until(lambda: px.settled("blocked"), what="blocked mirrors to finish")
                wait_until(lambda: px.captured("blocked", "recorded") == 2, what="2 recorded")
                px.check_accounting("blocked")
        finally:
            gate.open()
    assert len(pairs(redis_client, prefix, "blocked")) == 2


def test_bodies_over_the_capture_limit_are_forwarded_not_mirrored(
    redis_url: str, prefix: str, client: httpx.Client
) -> None:
    primary = Primary()
    cand = Candidate()
    limit = 1000
    with serve_app(primary) as primary_url, serve_app(cand) as cand_url:
        settings = proxy_settings(
            primary_url, [{"name": "c", "url": cand_url}], prefix=prefix, max_capture_bytes=limit
        )
        with running_proxy(settings, redis_url) as px:
            at_limit = bytes(range(200)) * 5
            seen = client.post(px.url + "/echo", content=at_limit).json()
            assert seen["body"].encode("latin-1") == at_limit
            for declared in (True, False):
                primary.partial_body.clear()
                head, tail = b"h" * (limit + 500), b"t" * 3000

                def body(head: bytes = head, tail: bytes = tail) -> Iterator[bytes]:
                    yield head
                    # The rest is sent only once the primary holds the head: the proxy
                    # streams an oversized body instead of buffering it.
                    assert primary.partial_body.wait(5), "proxy buffered the large body"
                    yield tail

                headers = {"content-length": str(len(head + tail))} if declared else {}
                response = client.post(px.url + "/echo", content=body(), headers=headers)
                seen = response.json()
                assert seen["body"].encode("latin-1") == head + tail
            wait_until(lambda: px.settled("c"), what="mirror to finish")
            assert px.sampled("c") == 3
            assert px.outcome("c", "too_large") == 2
            assert px.outcome("c", "ok") == 1
            px.check_accounting("c")
    assert cand.bodies == [at_limit]


def test_only_configured_methods_and_paths_are_mirrored(
    primary: tuple[Primary, str], redis_url: str, prefix: str, client: httpx.Client
) -> None:
    cand = Candidate()
    with serve_app(cand) as cand_url:
        settings = proxy_settings(
            primary[1], [{"name": "c", "url": cand_url}], prefix=prefix,
            mirror_paths=["/v2/models/*/infer"],
        )  # fmt: skip
        with running_proxy(settings, redis_url) as px:
            client.get(px.url + INFER, headers={"x-request-id": "get"})
            client.put(px.url + INFER, content=b"{}", headers={"x-request-id": "put"})
            client.post(px.url + "/v1/other", content=b"{}", headers={"x-request-id": "other"})
            client.post(px.url + INFER, content=b"{}", headers={"x-request-id": "yes"})
            wait_until(lambda: px.captured("c", "recorded") == 1, what="one recorded pair")
            assert px.sampled("c") == 1
    assert cand.request_ids == ["yes"]


def test_sample_point_is_uniform_and_nested() -> None:
    ids = [f"req-{i}" for i in range(2000)]
    points = [sample_point(i) for i in ids]
    rate = 0.3
    share = sum(p < rate for p in points) / len(ids)
    assert abs(share - rate) <= 4 * math.sqrt(rate * (1 - rate) / len(ids))
    low = {i for i, p in zip(ids, points, strict=True) if p < 0.1}
    high = {i for i, p in zip(ids, points, strict=True) if p < rate}
    assert low < high  # a 10% sample is inside the 30% one
    assert sample_point("req-7") == sample_point("req-7")


def test_two_proxies_make_identical_sampling_decisions(
    primary: tuple[Primary, str], redis_url: str, prefix: str, client: httpx.Client
) -> None:
    ids = [f"user-req-{i}" for i in range(150)]
    expected = sorted(i for i in ids if sample_point(i) < 0.3)
    seen = []
    for replica in range(2):
        cand = Candidate()
        with serve_app(cand) as cand_url:
            settings = proxy_settings(
                primary[1],
                [{"name": "c", "url": cand_url, "sample": 0.3}],
                prefix=f"{prefix}r{replica}",
            )
            with running_proxy(settings, redis_url) as px:
                for rid in ids:
                    client.post(px.url + "/json", content=b"{}", headers={"x-request-id": rid})
                wait_until(lambda px=px: px.settled("c"), what="mirrors to finish")
                assert px.sampled("c") == len(expected)
        seen.append(sorted(cand.request_ids))
    assert seen[0] == seen[1] == expected
    assert 0 < len(expected) < len(ids)


def test_sampling_by_header_keeps_a_users_requests_together(
    primary: tuple[Primary, str], redis_url: str, prefix: str, client: httpx.Client
) -> None:
    users = [f"user-{i}" for i in range(40)]
    chosen = {u for u in users if sample_point(u) < 0.5}
    cand = Candidate()
    with serve_app(cand) as cand_url:
        settings = proxy_settings(
            primary[1], [{"name": "c", "url": cand_url, "sample": 0.5}], prefix=prefix,
            sample_by="header:X-User-Id",
        )  # fmt: skip
        with running_proxy(settings, redis_url) as px:
            for user in users:
                for k in range(3):
                    headers = {"x-user-id": user, "x-request-id": f"{user}-{k}"}
                    client.post(px.url + "/json", content=b"{}", headers=headers)
            wait_until(lambda: px.settled("c"), what="mirrors to finish")
    mirrored_users = {rid.rsplit("-", 1)[0] for rid in cand.request_ids}
    assert mirrored_users == chosen
    assert len(cand.request_ids) == 3 * len(chosen)


@pytest.mark.parametrize("record_failures", [False, True])
def test_failed_primary_is_counted_not_recorded_unless_configured(
    redis_url: str, prefix: str, redis_client: redis.Redis, client: httpx.Client,
    record_failures: bool,
) -> None:  # fmt: skip
    cand = Candidate()
    closed = f"http://127.0.0.1:{free_port()}"
    with serve_app(cand) as cand_url:
        settings = proxy_settings(
            closed, [{"name": "c", "url": cand_url}], prefix=prefix,
            mirror_on_primary_error=record_failures,
        )  # fmt: skip
        with running_proxy(settings, redis_url) as px:
            assert client.post(px.url + "/json", content=b"{}").status_code == 502
            wait_until(lambda: px.settled("c"), what="mirror to finish")
            if record_failures:
                wait_until(lambda: px.captured("c", "recorded") == 1, what="recorded")
            px.check_accounting("c")
            assert px.outcome("c", "primary_failed") == (0 if record_failures else 1)
    records = pairs(redis_client, prefix, "c")
    if record_failures:
        assert [r.primary_status for r in records] == [502]
        assert records[0].candidate_outcome == "ok"
    else:
        assert records == []
    assert len(cand.bodies) == 1  # the candidate was asked either way (same start time)


def test_running_proxy_metrics_are_exposed_on_admin(
    primary: tuple[Primary, str], redis_url: str, prefix: str, client: httpx.Client
) -> None:
    cand = Candidate()
    with serve_app(cand) as cand_url:
        settings = proxy_settings(primary[1], [{"name": "c", "url": cand_url}], prefix=prefix)
        with running_proxy(settings, redis_url) as px:
            client.post(px.url + "/json", content=b"{}")
            wait_until(lambda: px.captured("c", "recorded") == 1, what="recorded")
            text = client.get(px.admin + "/metrics").text
    for line in (
        'shadowtrial_mirror_sampled_total{candidate="c"} 1.0',
        'shadowtrial_mirror_outcomes_total{candidate="c",outcome="ok"} 1.0',
        'shadowtrial_capture_total{candidate="c",outcome="recorded"} 1.0',
        'shadowtrial_mirrors_in_flight{candidate="c"} 0.0',
        "shadowtrial_capture_spool_depth 0.0",
    ):
        assert line in text


# The admin side (reports, feedback, drill-down, the web page) calls analysis, but only
# inside the functions that need it: never at import, never on the data port's path.
ADMIN_SIDE = {"admin.py", "decisions.py"}


def test_proxy_code_never_imports_analysis() -> None:
    import ast
    from pathlib import Path

    import proxy

    for path in Path(proxy.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body if path.name in ADMIN_SIDE else ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "analysis" or n.startswith("analysis.") for n in names), path


def test_a_hanging_candidate_does_not_hold_back_the_others(
    primary: tuple[Primary, str], redis_url: str, prefix: str, client: httpx.Client
) -> None:
    gate = Gate()
    with serve_app(Candidate(gate=gate)) as stuck, serve_app(Candidate()) as fast:
        try:
            candidates = [
                {"name": "stuck", "url": stuck, "timeout_ms": 30_000},
                {"name": "fast", "url": fast},
            ]
            settings = proxy_settings(primary[1], candidates, prefix=prefix)
            with running_proxy(settings, redis_url) as px:
                client.post(px.url + "/json", content=b"{}")
                # Recorded and its slot freed while the other candidate is still stuck.
                wait_until(lambda: px.captured("fast", "recorded") == 1, what="fast recorded")
                assert px.value("shadowtrial_mirrors_in_flight", candidate="fast") == 0
                assert px.value("shadowtrial_mirrors_in_flight", candidate="stuck") == 1
                assert px.app.mirror.in_flight == 1
                gate.open()
                wait_until(lambda: px.captured("stuck", "recorded") == 1, what="stuck recorded")
        finally:
            gate.open()
