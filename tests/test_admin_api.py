"""The admin API's evidence routes and its edges: reports, feedback, drill-down with
copy-as-curl, JSON errors, the OpenAPI document, and the data port never serving any of it."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import orjson
import pytest
from admin_harness import ALICE, INFER, answer, run_worker, trial

from control.openapi import OPERATIONS

SECRETS = ("SECRET-TOKEN-123", "SECRET-KEY-456", "SECRET-Q-789", "SECRET-PW-000")


def test_the_data_port_never_serves_admin_routes(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        data = t.replicas[0].url
        for method, path in (
            ("GET", "/v1/candidates"),
            ("POST", "/v1/candidates"),
            ("POST", "/v1/rollback"),
            ("GET", "/openapi.json"),
            ("GET", "/ui/"),
        ):
            response = t.http.request(method, data + path, headers=ALICE)
            assert response.status_code == 200, (method, path)
            assert response.content == answer("old"), (method, path)  # the primary answered
        assert {"/v1/candidates", "/v1/rollback", "/openapi.json", "/ui/"} <= set(t.primary.hits)
        assert t.replicas[0].app.routing.primary == t.primary_url  # no rollback happened
        listed = t.http.get(t.admin() + "/v1/candidates")
        assert listed.json()["routing"]["primary"] == t.primary_url


def test_errors_are_json_with_fitting_status(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        admin = t.admin()
        cases = [
            ("GET", "/v1/nowhere", 404),
            ("GET", "/v1/rollback", 405),
            ("GET", "/v1/candidates/nope/report", 404),
            ("GET", "/v1/candidates/v2/report?window=soon", 400),
            ("GET", "/v1/candidates/v2/report?window=0s", 400),
            ("GET", "/v1/candidates/v2/pairs?limit=0", 400),
            ("GET", "/v1/candidates/v2/pairs?slice=country", 400),
            ("GET", "/v1/candidates/v2/pairs?divergent=maybe", 400),
            ("GET", "/v1/decisions?limit=x", 400),
            ("POST", "/v1/candidates/nope/promote", 404),
            ("POST", "/v1/candidates/v2/promote?force=perhaps", 400),
            ("POST", "/v1/candidates/nope/reject", 404),
        ]
        for method, path, status in cases:
            response = t.http.request(method, admin + path, headers=ALICE)
            assert response.status_code == status, (method, path, response.text)
            body = response.json()
            assert set(body) >= {"error", "detail"}, (method, path)


def test_reports_over_windows(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        t.send(0, n=5)
        run_worker(t.conf, redis_url, 5)
        for window in ("15m", "1h", "2d", "90s", "trial"):
            response = t.http.get(t.admin() + f"/v1/candidates/v2/report?window={window}")
            assert response.status_code == 200, window
            report = response.json()
            assert set(report) >= {
                "candidate",
                "window",
                "pairs",
                "agreement",
                "flips",
                "latency",
                "slices",
                "gate",
            }
            assert report["pairs"] == 5 and report["agreement"]["rate"] == 0.0
            assert report["gate"]["verdict"] in {"insufficient", "fail"}
        assert (
            t.http.get(t.admin() + "/v1/candidates/v2/report").json()["window"]["seconds"] == 3600
        )


def test_feedback_is_joined_to_pairs(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        url = t.replicas[0].url + INFER
        for rid in ("rid-1", "rid-2"):
            t.http.post(url, content=b"{}", headers={"x-request-id": rid})
        run_worker(t.conf, redis_url, 2)
        feedback = t.admin() + "/v1/feedback"
        one = t.http.post(feedback, json={"request_id": "rid-1", "label": "old"}, headers=ALICE)
        assert one.status_code == 200, one.text
        assert one.json() == {
            "recorded": 1,
            "results": [{"request_id": "rid-1", "candidates": {"v2": "joined"}}],
        }
        many = [{"request_id": "rid-2", "label": "new"}, {"request_id": "later", "label": 3}]
        answered = t.http.post(feedback, json=many, headers=ALICE).json()
        assert [r["candidates"]["v2"] for r in answered["results"]] == ["joined", "pending"]
        row = t.http.post(feedback, json={"request_id": "later", "row": 2, "label": 1},
                          headers=ALICE).json()["results"]  # fmt: skip
        assert row == [{"request_id": "later", "candidates": {"v2": "pending"}, "row": 2}]
        numeric = t.http.post(feedback, json={"request_id": "later", "value": 2.5},
                              headers=ALICE)  # fmt: skip
        assert numeric.status_code == 200, numeric.text
        labels = t.http.get(t.admin() + "/v1/candidates/v2/report").json()["labels"]
        assert labels["n"] == 2
        assert labels["primary_accuracy"] == 0.5 and labels["candidate_accuracy"] == 0.5
        for bad in (
            {"request_id": "x", "label": 1.5},
            {"request_id": "", "label": "a"},
            {"label": "a"},
            [],
            {"request_id": "x", "label": "a", "more": 1},
            {"request_id": "x", "label": "a", "row": -1},
            {"request_id": "x", "label": "a", "row": True},
            {"request_id": "x", "label": "a", "value": 1.0},
            {"request_id": "x", "value": "1.0"},
            {"request_id": "x", "value": 10**400},
        ):
            refused = t.http.post(feedback, json=bad, headers=ALICE)
            assert refused.status_code == 400, bad
        assert t.http.post(feedback, json={"request_id": "x", "label": "a"}).status_code == 401


def test_drilldown_pairs_carry_curl_lines_without_secrets(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = {
        "capture_headers": ["content-type", "authorization", "x-api-key"],
        "redact_fields": ["password"],
    }
    slices = [{"name": "tenant", "from": "header:X-Tenant"}]
    with trial(redis_url, prefix, monkeypatch, proxy=proxy, slices=slices) as t:
        body = orjson.dumps({"inputs": [1, 2], "password": "SECRET-PW-000"})
        for tenant in ("acme", "beta"):
            headers = {
                "content-type": "application/json",
                "authorization": "Bearer SECRET-TOKEN-123",
                "x-api-key": "SECRET-KEY-456",
                "x-tenant": tenant,
            }
            url = t.replicas[0].url + INFER + "?api_key=SECRET-Q-789&debug=1"
            assert t.http.post(url, content=body, headers=headers).status_code == 200
        run_worker(t.conf, redis_url, 2)
        response = t.http.get(t.admin() + "/v1/candidates/v2/pairs?divergent=true")
        assert response.status_code == 200
        assert not any(secret in response.text for secret in SECRETS)
        pairs = response.json()["pairs"]
        assert len(pairs) == 2
        pair = pairs[0]
        assert pair["primary"]["labels"] == ["old"] and pair["candidate"]["labels"] == ["new"]
        primary_line, candidate_line = pair["curl"]["primary"], pair["curl"]["candidate"]
        assert primary_line.startswith(f"curl -sS -X POST '{t.primary_url}{INFER}?")
        assert candidate_line.startswith(f"curl -sS -X POST '{t.candidate_url}{INFER}?")
        assert "[redacted]" in primary_line and "debug=1" in primary_line
        only_acme = t.http.get(t.admin() + "/v1/candidates/v2/pairs?slice=tenant=acme").json()
        assert [p["slices"][0]["tenant"] for p in only_acme["pairs"]] == ["acme"]
        limited = t.http.get(t.admin() + "/v1/candidates/v2/pairs?limit=1").json()["pairs"]
        assert len(limited) == 1
        if shutil.which("curl"):  # the line really reproduces the request
            hits = len(t.candidate.hits)
            run = subprocess.run(shlex.split(candidate_line), capture_output=True, timeout=10)
            assert run.returncode == 0 and run.stdout == answer("new")
            assert len(t.candidate.hits) == hits + 1


def test_the_openapi_document_describes_every_route(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        doc = t.http.get(t.admin() + "/openapi.json").json()
        admin_app = t.replicas[0].app.admin
    assert doc["openapi"].startswith("3.")
    served = {
        (method, route.path)
        for route in admin_app.routes
        if not route.path.startswith("/ui")
        for method in (route.methods or set()) - {"HEAD"}
    }
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert served == described
    assert len(described) == len(OPERATIONS) == 20  # 18-20th: the watch (GET, 2 PUTs)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"] and op["summary"], (method, path)
            if method != "get":
                assert op["security"] == [{"bearer": []}] and "401" in op["responses"]
