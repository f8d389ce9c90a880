"""Issue 12, the operator's side: credentials in URLs masked wherever a URL is shown (bug 7),
config errors that never print a secret (bug 8), registry changes audited and model URLs
on metadata addresses refused, and the admin port's guards (Host allow-list, failed-token
limit, minimum token length). Real proxies, real Redis, real HTTP."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from admin_harness import ALICE, BOB, trial, wait_for

from common.errors import ConfigError
from common.settings import settings_from_mapping
from common.store import resolve_redis_url
from common.urls import check_destination, mask_url
from control import admin_guard
from control.admin_guard import FailureLimit
from control.auth import check_token_length

URL_SECRET = "SECRET-URL-PW-0101"
QUERY_SECRET = "SECRET-URL-Q-0102"
TOKEN_VALUE = "SECRET-ADMIN-TOKEN-0103"


# -- bug 7: credentials in URLs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://h:6379/0?password={URL_SECRET}", "redis://h:6379/0?password=***"),
        (f"redis://u:{URL_SECRET}@h/0", "redis://u:***@h/0"),
        (f"redis://:{URL_SECRET}@h/0", "redis://***@h/0"),
        (f"redis://{URL_SECRET}@h/0", "redis://***@h/0"),
        (f"http://h/x?db=1&api_key={URL_SECRET}&x=2", "http://h/x?db=1&api_key=***&x=2"),
        (f"http://h/?Token={URL_SECRET}&ssl_keyfile=a", "http://h/?Token=***&ssl_keyfile=***"),
        ("http://h:8001/v2", "http://h:8001/v2"),
    ],
)
def test_mask_url_hides_userinfo_passwords_and_secret_query_values(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_a_redis_password_in_a_query_parameter_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bug 7: redis-py accepts ?password=; the start line printed it in clear."""
    caplog.set_level(logging.INFO, logger="shadowtrial.store")
    url, server = resolve_redis_url(f"redis://127.0.0.1:6379/0?password={URL_SECRET}")
    assert server is None and URL_SECRET in url  # the client still gets the password
    assert "using Redis at redis://127.0.0.1:6379/0?password=***" in caplog.text
    assert URL_SECRET not in caplog.text


def test_a_bad_redis_url_error_hides_a_query_password() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"redis": {"url": f"http://h/0?password={URL_SECRET}"}}, {})
    assert URL_SECRET not in str(caught.value) and "redis.url" in str(caught.value)


def test_model_url_credentials_never_shown_by_the_api_or_the_page(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug 7: /readyz, GET /v1/candidates, the page, a promote's answer and the audit log."""
    with trial(redis_url, prefix, monkeypatch) as t:
        base = t.candidate_url.replace("http://", f"http://user:{URL_SECRET}@")
        added = t.http.post(
            t.admin() + "/v1/candidates", json={"name": "v3", "url": base}, headers=ALICE
        )
        assert added.status_code == 201, added.text
        assert added.json()["url"].startswith("http://user:***@")
        t.send(n=2)  # the masked URL is only shown: the candidate is still reached
        promoted = t.http.post(t.admin() + "/v1/candidates/v3/promote?force=true", headers=ALICE)
        assert promoted.status_code == 200, promoted.text
        replica = t.replicas[0].app
        wait_for(lambda: replica.routing.primary == base, what="the replica applied the promote")
        t.send()
        shown = [
            promoted.text,
            t.http.get(t.admin() + "/readyz").text,
            t.http.get(t.admin() + "/v1/candidates").text,
            t.http.get(t.admin() + "/v1/decisions").text,
            t.http.get(t.admin() + "/ui/").text,
            t.http.get(t.admin() + "/ui/candidates/v3").text,
        ]
        assert orjson.loads(shown[1])["primary"]["url"].startswith("http://user:***@")
        for text in shown:
            assert URL_SECRET not in text
        assert t.candidate.hits  # traffic went to the URL with the credentials


# -- bug 8: config errors never print secrets ----------------------------------------------


def test_a_token_in_the_default_variable_is_named_not_printed() -> None:
    """Bug 8: with token_env naming another variable, SHADOWTRIAL_ADMIN_TOKEN is an unknown
    key; the error printed the token."""
    environ = {"SHADOWTRIAL_ADMIN_TOKEN": TOKEN_VALUE, "MY_TOKEN": "x" * 20}
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"admin": {"token_env": "MY_TOKEN"}}, environ)
    message = str(caught.value)
    assert TOKEN_VALUE not in message and TOKEN_VALUE not in repr(caught.value.value)
    assert "admin.token" in message and "token_env" in message


@pytest.mark.parametrize(
    ("raw", "environ"),
    [
        ({"admin": {"token": TOKEN_VALUE}}, {}),  # a token pasted into the file
        ({}, {"SHADOWTRIAL_ADMIN_TOKENN": TOKEN_VALUE}),  # a misspelt variable
        ({}, {"SHADOWTRIAL_ADMIN_TOKEN": TOKEN_VALUE, "SHADOWTRIAL_PROXY_PRIMARY": TOKEN_VALUE}),
        (
            {"admin": {"token_env": "OTHER"}},
            {"OTHER": TOKEN_VALUE, "SHADOWTRIAL_GATE_MIN_PAIRS": f"x{TOKEN_VALUE}"},
        ),
        ({}, {"SHADOWTRIAL_REDIS_PASSWORD": TOKEN_VALUE}),
    ],
)
def test_no_config_error_prints_a_secret(raw: dict, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(raw, environ)
    assert TOKEN_VALUE not in str(caught.value)
    assert caught.value.key  # the key is still named


# -- registry changes: validated URLs, audited --------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://2852039166/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://169.254.169.254.:80/",
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_metadata_addresses_are_refused(url: str) -> None:
    assert check_destination(url)
    with pytest.raises(ConfigError, match="allow_link_local_urls"):
        settings_from_mapping({"candidates": [{"name": "m", "url": url}]}, {})
    allowed = {"proxy": {"allow_link_local_urls": True}, "candidates": [{"name": "m", "url": url}]}
    assert settings_from_mapping(allowed, {}).candidates[0].name == "m"


def test_registry_writes_refuse_metadata_urls_and_are_audited(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        admin = t.admin() + "/v1/candidates"
        refused = t.http.post(
            admin, json={"name": "meta", "url": "http://169.254.169.254"}, headers=ALICE
        )
        assert refused.status_code == 400 and "link-local" in refused.json()["detail"]
        url = t.candidate_url.replace("http://", f"http://u:{URL_SECRET}@")
        assert t.http.post(admin, json={"name": "v3", "url": url}, headers=ALICE).status_code == 201
        patched = t.http.patch(admin + "/v3", json={"sample": 0.5}, headers=BOB)
        assert patched.status_code == 200
        assert t.http.delete(admin + "/v3", headers=ALICE).status_code == 200
        log = t.decisions()[:3]
        assert [(d["action"], d["actor"], d["candidate"]) for d in log] == [
            ("delete", "alice", "v3"),
            ("patch", "bob", "v3"),
            ("add", "alice", "v3"),
        ]
        deleted, patch, add = log
        assert orjson.loads(patch["before"])["sample"] == 1.0
        assert orjson.loads(patch["after"])["sample"] == 0.5
        assert add["before"] == "" and deleted["after"] == ""
        assert orjson.loads(add["after"])["url"].startswith("http://u:***@")
        dump = b"".join(v for e in t.redis.xrange(t.keys.decisions()) for v in e[1].values())
        assert URL_SECRET.encode() not in dump


# -- the admin port's front door ----------------------------------------------------------


def _refused(t: Any, reason: str) -> float:
    return t.replicas[0].app.metrics.value("shadowtrial_admin_refused_total", {"reason": reason})


def test_the_admin_port_answers_only_allowed_host_names(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read /pairs."""
    admin = {"allowed_hosts": ["localhost", "*.svc.cluster.local"]}
    with trial(redis_url, prefix, monkeypatch, admin=admin) as t:
        port = t.admin().rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "svc"):
            answer = t.http.get(t.admin() + "/v1/candidates/v2/pairs", headers={"host": host})
            assert answer.status_code == 421, host
            assert answer.json()["error"] == "host not allowed"
        assert _refused(t, "host") == 4
        for host in (f"localhost:{port}", "LOCALHOST", "st-admin.ns.svc.cluster.local:9901",
                     "127.0.0.1", f"127.0.0.1:{port}", "[::1]:9901", "10.1.2.3"):  # fmt: skip
            answer = t.http.get(t.admin() + "/v1/candidates", headers={"host": host})
            assert answer.status_code == 200, host
        assert t.http.get(t.admin() + "/healthz", headers={"host": "evil"}).status_code == 421


def test_too_many_wrong_tokens_get_429_even_with_the_right_one(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = {"auth_failures_per_minute": 3}
    wrong = {"authorization": "Bearer wrong-token-000000"}
    with trial(redis_url, prefix, monkeypatch, admin=admin) as t:
        reject = t.admin() + "/v1/candidates/v2/reject"
        assert [t.http.post(reject, headers=wrong).status_code for _ in range(3)] == [401] * 3
        limited = t.http.post(reject, headers=ALICE)
        assert limited.status_code == 429 and 50 <= int(limited.headers["retry-after"]) <= 60
        assert t.http.post(reject, headers=wrong).status_code == 429
        assert t.http.get(t.admin() + "/v1/candidates").status_code == 200  # open reads
        assert _refused(t, "unauthorized") == 3 and _refused(t, "auth_limited") == 2
        assert t.http.get(t.admin() + "/v1/candidates").json()["candidates"][0]["state"] == (
            "active"
        )


def test_the_failure_limit_slides_per_address_and_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    limit = FailureLimit(2, clock=lambda: now[0])
    limit.failed("a")
    limit.failed("a")
    assert limit.retry_after("a") == pytest.approx(60) and limit.retry_after("b") == 0
    now[0] += 30
    limit.failed("b")
    assert limit.retry_after("a") == pytest.approx(30) and limit.retry_after("b") == 0
    now[0] += 30.5
    assert limit.retry_after("a") == 0
    monkeypatch.setattr(admin_guard, "MAX_ADDRESSES", 100)
    for i in range(1000):
        limit.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limit._failures) <= 100


def test_serve_refuses_a_short_admin_token_without_printing_it(tmp_path: Path) -> None:
    config = tmp_path / "shadowtrial.toml"
    config.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\n')
    for value in ("short-SECRET-1", "alice=alice-SECRET-token-01,bob=bob-SECRET"):
        env = {**os.environ, "SHADOWTRIAL_ADMIN_TOKEN": value}
        done = subprocess.run(
            [sys.executable, "-m", "shadowtrial", "serve", "-c", str(config)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "min_token_length" in done.stderr and "SECRET" not in done.stderr
    check_token_length("T", 16, {"T": "x" * 16})  # long enough: no error


def test_mask_url_leaves_urls_without_credentials_as_written() -> None:
    for url in ("unix:///tmp/redis.sock", "unix:///tmp/r.sock?db=2", "redis+cluster://h:7000"):
        assert mask_url(url) == url
    assert (
        mask_url(f"unix:///tmp/r.sock?password={URL_SECRET}") == "unix:///tmp/r.sock?password=***"
    )


def test_admin_error_answers_mask_urls_an_exception_quotes() -> None:
    import asyncio

    from starlette.requests import Request

    from common.errors import StoreError
    from control.admin import _server_error, _store_error

    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    quoted = f"cannot reach redis://:{URL_SECRET}@h:6379/0?password={URL_SECRET}"
    for handler, exc in ((_store_error, StoreError(quoted)), (_server_error, ValueError(quoted))):
        answer = asyncio.run(handler(request, exc))
        assert (
            URL_SECRET not in answer.body.decode()
            and "redis://***@h:6379/0" in answer.body.decode()
        )
