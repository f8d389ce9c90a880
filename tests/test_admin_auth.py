"""Bearer tokens on the admin API: missing, wrong, right, none configured, closed reads."""

from __future__ import annotations

import hmac

import pytest
from admin_harness import ALICE, BOB, trial

from control import auth


def test_token_values_single_named_and_base64_padding() -> None:
    assert auth.split_named("s3cret") == [("admin", "s3cret")]
    assert auth.split_named(" alice=tok1, bob=tok2 ") == [("alice", "tok1"), ("bob", "tok2")]
    # base64 padding is part of one token, not a name=value pair
    assert auth.split_named("YWJjZA==") == [("admin", "YWJjZA==")]
    assert auth.split_named("YWI=") == [("admin", "YWI=")]
    assert auth.split_named("") == [] and auth.split_named(None) == []
    assert auth.bearer("Bearer abc") == "abc" and auth.bearer("bearer  abc ") == "abc"
    assert auth.bearer("Basic abc") is None and auth.bearer("Bearer ") is None


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auth.compare is hmac.compare_digest
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(auth, "compare", spy)
    tokens = auth.parse_tokens("alice=aaaa,bob=bbbb,carol=cccc")
    assert auth.authenticate("aaaa", tokens) == "alice"
    assert len(calls) == 3  # no early exit on the first match
    # Digests of equal length are compared, whatever the presented token's length.
    assert {len(a) for a, _ in calls} == {len(b) for _, b in calls} == {32}
    calls.clear()
    assert auth.authenticate("bbbx", tokens) is None  # same length as a real token
    assert auth.authenticate("x" * 500, tokens) is None
    assert len(calls) == 6
    assert auth.authenticate(None, tokens) is None


def test_writes_need_the_right_token(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        url = t.admin() + "/v1/candidates"
        body = {"name": "v3", "url": t.candidate_url}
        missing = t.http.post(url, json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["error"] == "unauthorized"
        same_length = {"authorization": "Bearer alice-token-0002"}
        for headers in (
            same_length,
            {"authorization": "Bearer nope"},
            {"authorization": "Basic YWxpY2U6eA=="},
        ):
            wrong = t.http.post(url, json=body, headers=headers)
            assert wrong.status_code == 401, headers
            assert wrong.json()["error"] == "unauthorized"
        for method in ("PATCH", "DELETE"):
            assert t.http.request(method, url + "/v2").status_code == 401
        assert t.http.post(t.admin() + "/v1/rollback").status_code == 401
        assert t.http.get(url).status_code == 200  # reads are open by default
        assert t.http.post(url, json=body, headers=ALICE).status_code == 201
        listed = t.http.get(url).json()["candidates"]
        assert {c["name"] for c in listed} == {"v2", "v3"}


def test_without_a_configured_token_decisions_say_how_to_set_one(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, tokens=None) as t:
        refused = t.http.post(t.admin() + "/v1/candidates/v2/promote?force=true", headers=ALICE)
        assert refused.status_code == 503
        body = refused.json()
        assert body["error"] == "admin token not configured"
        assert f"ST_TOKEN_{prefix.upper()}" in body["detail"]  # names the variable to set
        assert t.http.get(t.admin() + "/v1/candidates").status_code == 200
        assert t.replicas[0].app.routing.primary == t.primary_url  # nothing changed


def test_closed_reads_need_a_token_too(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, admin={"open_reads": False}) as t:
        for path in ("/v1/candidates", "/v1/decisions", "/v1/candidates/v2/report", "/ui/"):
            assert t.http.get(t.admin() + path).status_code == 401, path
            assert t.http.get(t.admin() + path, headers=BOB).status_code == 200, path
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):  # probes stay open
            assert t.http.get(t.admin() + path).status_code == 200, path


def test_the_audit_log_names_the_actor(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        admin = t.admin()
        promoted = t.http.post(admin + "/v1/candidates/v2/promote?force=true", headers=ALICE)
        assert promoted.status_code == 200 and promoted.json()["actor"] == "alice"
        assert t.http.post(admin + "/v1/rollback", headers=BOB).json()["actor"] == "bob"
        log = t.decisions()
        assert [(d["action"], d["actor"]) for d in log] == [
            ("rollback", "bob"),
            ("promote", "alice"),
        ]
        assert log[1]["forced"] is True and log[1]["candidate"] == "v2"
        assert log[1]["primary_before"] == t.primary_url
        assert log[1]["primary_after"] == t.candidate_url
        assert log[1]["verdict"] == "insufficient" and log[1]["reasons"]
        assert log[0]["time"] >= log[1]["time"]


def test_one_token_is_audited_as_admin(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, tokens="just-one-token") as t:
        headers = {"authorization": "Bearer just-one-token"}
        answer = t.http.post(t.admin() + "/v1/candidates/v2/reject", headers=headers)
        assert answer.status_code == 200
        assert t.decisions()[0]["actor"] == "admin"
