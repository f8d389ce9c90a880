"""Issue 16: per-candidate requests (own headers from env, dropped headers, body fields)."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict

import httpx
import orjson
import pytest
from proxy_upstreams import Primary, proxy_settings, running_proxy, wait_until
from servers import serve_app

from common.errors import ConfigError, ModelLoadError
from common.settings import candidate_from_mapping, settings_from_mapping
from proxy.candidate_request import request_shape

CHAT = "/v1/chat/completions"
BODY = {"model": "primary-model", "messages": [{"role": "user", "content": "hi"}]}


def _seen(app: Primary) -> tuple[dict[str, list[str]], dict]:
    (seen,) = [r for r in app.received if r["raw_path"] == CHAT]
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    return headers, orjson.loads(seen["body"])


def test_a_candidate_gets_its_own_key_model_and_headers_and_the_primary_is_unchanged(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue: the client's `Authorization: Bearer sk-...` went to the candidate, with no
    way to give it its own credentials or model name."""
    monkeypatch.setenv("ST_TEST_CANDIDATE_KEY", "sk-candidate")
    primary, cand = Primary(), Primary()
    with ExitStack() as stack:
        urls = [stack.enter_context(serve_app(app)) for app in (primary, cand)]
        candidates = [
            {
                "name": "other",
                "url": urls[1],
                "headers": {"Authorization": "env:ST_TEST_CANDIDATE_KEY", "X-Org": "lab"},
                "drop_headers": ["X-Trace"],
                "body_set": {"model": "candidate-model"},
            }
        ]
        settings = proxy_settings(urls[0], candidates, prefix=prefix, mirror_paths=[CHAT])
        with running_proxy(settings, redis_url) as px:
            headers = {"authorization": "Bearer sk-client", "x-trace": "t1", "x-org": "client"}
            answer = httpx.post(px.url + CHAT, json=BODY, headers=headers, timeout=10)
            assert answer.status_code == 200
            wait_until(lambda: px.settled("other") and cand.received, what="the candidate")
    at_primary, primary_body = _seen(primary)
    at_cand, cand_body = _seen(cand)
    assert at_primary["authorization"] == ["Bearer sk-client"]
    assert at_primary["x-trace"] == ["t1"] and at_primary["x-org"] == ["client"]
    assert primary_body == BODY
    assert at_cand["authorization"] == ["sk-candidate"]
    assert at_cand["x-org"] == ["lab"] and "x-trace" not in at_cand
    assert cand_body == {**BODY, "model": "candidate-model"}
    assert at_cand["x-shadowtrial-shadow"] == ["1"]


def test_a_literal_credential_is_refused_without_echoing_it() -> None:
    raw = {"name": "c", "url": "http://127.0.0.1:9", "headers": {"Authorization": "Bearer sk-1"}}
    with pytest.raises(ConfigError) as err:
        settings_from_mapping({"candidates": [raw]}, {})
    assert "env:" in str(err.value) and "sk-1" not in str(err.value)
    for bad in ({"X-A": "one\r\nX-B: two"}, {"Bad Name": "x"}):
        with pytest.raises(ConfigError):
            candidate_from_mapping({**raw, "headers": bad})


def test_the_registry_round_trip_keeps_the_reference_not_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Candidates registered by the admin API are stored as JSON: only `env:NAME` lands."""
    monkeypatch.setenv("ST_TEST_KEY2", "sk-secret")
    raw = {
        "name": "c",
        "url": "http://127.0.0.1:9",
        "headers": {"X-Api-Key": "env:ST_TEST_KEY2"},
        "drop_headers": ["Cookie"],
        "body_set": {"model": "m", "temperature": 0},
    }
    stored = orjson.dumps(asdict(candidate_from_mapping(raw)))
    assert b"sk-secret" not in stored
    again = candidate_from_mapping(orjson.loads(stored))
    assert again == candidate_from_mapping(raw)
    shape = request_shape(again)
    assert shape.headers([("cookie", "a"), ("x-api-key", "client")]) == [("X-Api-Key", "sk-secret")]


def test_a_missing_variable_fails_at_start_naming_it() -> None:
    cand = candidate_from_mapping(
        {"name": "c", "url": "http://127.0.0.1:9", "headers": {"Authorization": "env:NOPE_X"}}
    )
    with pytest.raises(ModelLoadError, match="NOPE_X"):
        request_shape(cand, {})
    with pytest.raises(ModelLoadError, match="several lines"):
        request_shape(cand, {"NOPE_X": "a\r\nX-Injected: 1"})


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"not json", []),
        (b"[1, 2]", []),
        (b'{"model": "x"}', [("content-encoding", "gzip")]),
        (b'{"model": "\xff', []),
    ],
)
def test_bodies_that_are_not_plain_json_objects_are_sent_unchanged(
    body: bytes, headers: list[tuple[str, str]]
) -> None:
    cand = candidate_from_mapping(
        {"name": "c", "url": "http://127.0.0.1:9", "body_set": {"model": "m"}}
    )
    assert request_shape(cand, {}).body(body, headers) == body
