"""Fuzz what a client controls on the data port (issue 12): request paths (which decide
what is mirrored), request bodies cut into arbitrary pieces sent with pauses (the body
timer and the buffer budget), and repeated request ids (the label join)."""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_upstreams import Primary, RunningProxy, proxy_settings, running_proxy, wait_until
from servers import serve_app
from test_bad_input import read_all, status_of

from analysis.feedback import record_feedback
from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from proxy.paths import compile_patterns, default_paths, normalise
from tests import pairs_factory as pf

N = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=N,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW = settings(FUZZ, max_examples=max(N // 5, 10))
INFER = "/v2/models/m/infer"

segments = st.one_of(
    st.sampled_from(["", ".", "..", "%2e", "%2E%2e", "v2", "models", "m", "infer", "%6D"]),
    st.sampled_from(["%2F", "%5c", "%00", "%", "%%", "%zz", "a%2Fb", "*", "**", ":predict"]),
    st.text(st.characters(codec="utf-8", exclude_characters="/"), max_size=6),
)
paths = st.lists(segments, max_size=8).map(lambda parts: "/" + "/".join(parts))


@FUZZ
@given(path=paths)
def test_any_path_normalises_to_a_clean_path_or_to_nothing(path: str) -> None:
    out = normalise(path)
    if out is None:
        return
    assert out.startswith("/") and "//" not in out
    assert not {".", ".."} & set(out.split("/"))
    assert "%2F" not in out.upper() and "%5C" not in out.upper()
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in out)
    match = compile_patterns(default_paths("auto")).fullmatch
    if match(out):  # an inference path: no segment smuggled a '/' past the glob
        assert out.split("/")[1] in {"v1", "v2", "invocations"}


@pytest.fixture(scope="module")
def proxy(redis_url: str) -> Iterator[tuple[RunningProxy, Primary]]:
    primary, candidate = Primary(), Primary()
    prefix = f"fz{uuid.uuid4().hex[:10]}"
    with serve_app(primary) as primary_url, serve_app(candidate) as candidate_url:
        settings_ = proxy_settings(
            primary_url,
            [{"name": "c", "url": candidate_url}],
            prefix=prefix,
            body_timeout_ms=5000,
            max_buffered_bytes=256 * 1024,
            max_capture_bytes=64 * 1024,
        )
        with running_proxy(settings_, redis_url) as px:
            yield px, primary
            wait_until(lambda: px.settled("c"), what="mirrors settled")
            px.check_accounting("c")
    store = redis.Redis.from_url(redis_url)
    for key in store.scan_iter(match=f"{prefix}:*"):
        store.delete(key)
    store.close()


@SLOW
@given(
    body=st.binary(max_size=100_000),
    cuts=st.lists(st.integers(0, 100_000), max_size=8),
    pauses=st.lists(st.floats(0, 0.05), min_size=8, max_size=8),
)
def test_bodies_sent_in_pieces_with_pauses_arrive_whole(
    proxy: tuple[RunningProxy, Primary], body: bytes, cuts: list[int], pauses: list[float]
) -> None:
    """Any cut of any body (over and under max_capture_bytes, over the buffer budget),
    sent with pauses well within body_timeout_ms: answered 200, byte-exact upstream."""
    px, primary = proxy
    marker = uuid.uuid4().hex
    edges = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nX-Mark: %s\r\nContent-Length: %d\r\n" % (
        INFER.encode(), marker.encode(), len(body)
    ) + b"Connection: close\r\n\r\n"  # fmt: skip
    port = int(px.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for (start, end), pause in zip(itertools.pairwise(edges), pauses, strict=False):
            time.sleep(pause)
            sock.sendall(body[start:end])
        sock.sendall(body[edges[min(len(pauses), len(edges) - 1)] :])  # the rest, at once
        answer = read_all(sock)
    assert status_of(answer) == 200, answer[:300]
    (seen,) = [r for r in primary.received if ["x-mark", marker] in r["headers"]]
    assert seen["body"].encode("latin-1") == body


@FUZZ
@given(
    order=st.permutations(range(6)),
    repeats=st.lists(st.integers(0, 5), max_size=6),
)
def test_repeated_request_ids_never_change_labelled_accuracy(
    redis_client: redis.Redis, order: list[int], repeats: list[int]
) -> None:
    """Six honest pairs the candidate gets right, and repeats of some of their ids with
    answers the candidate gets wrong, in any order after the honest ones: the labelled
    accuracy stays 1.0 and every repeat is counted."""
    prefix = f"fz{uuid.uuid4().hex[:10]}"
    keys = Keys(prefix)
    right, wrong = [0.9, 0.06, 0.04], [0.1, 0.8, 0.1]
    honest = [pf.record(f"r{i}", [right], [right]) for i in order]
    poison = [pf.record(f"r{i}", [right], [wrong]) for i in repeats]
    try:
        worker = Worker(redis_client, pf.settings(prefix, batch=random.choice([1, 3, 50])))
        pf.write(redis_client, keys.pairs("v2"), honest + poison)
        pf.drain(worker)
        for i in range(6):
            assert record_feedback(redis_client, keys, f"r{i}", "setosa") == {"v2": "joined"}
        now = pf.TS0 / 1000 + 30
        report = build_report(redis_client, keys, pf.settings(prefix), "v2", 3600, now=now)
        labels = report["labels"]
        assert labels["n"] == 6 and labels["candidate_accuracy"] == 1.0
        assert labels["duplicate_ids"] == len(repeats)
    finally:
        for key in redis_client.scan_iter(match=f"{prefix}:*"):
            redis_client.delete(key)
