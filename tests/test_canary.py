"""Canary: a candidate answers a share of live requests, sticky by key, the primary behind it.

Real model servers, two proxy replicas on one Redis, the admin API over HTTP.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from admin_harness import ALICE, EASY_GATE, INFER, Model, Trial, run_worker, trial, wait_for
from servers import serve_app

from common.records import PairRecord
from common.settings import parse_instant
from shadowtrial.cli import main

PROPAGATION_S = 1.0
USER = {"proxy": {"sample_by": "header:X-User-Id"}}
BUCKET_1S = {"bucket_seconds": 1}


def _canary(t: Trial, weight: Any, force: bool = True, name: str = "v2") -> httpx.Response:
    query = "?force=true" if force else ""
    url = t.admin() + f"/v1/candidates/{name}/canary{query}"
    return t.http.post(url, json={"weight": weight}, headers=ALICE)


def _ask(t: Trial, user: str, i: int = 0) -> tuple[str, str]:
    """(label answered, X-Shadowtrial-Served-By) for one user's request via replica i."""
    response = t.http.post(
        t.replicas[i].url + INFER, content=b'{"inputs": []}', headers={"x-user-id": user}
    )
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"][0], response.headers["x-shadowtrial-served-by"]


def _on_every_replica(t: Trial, weight: float) -> float:
    return _on_every_replica_within(t, weight, PROPAGATION_S)


def _on_every_replica_within(t: Trial, weight: float, timeout_s: float) -> float:
    def applied() -> bool:
        return all(
            [x.weight for x in r.app.routing.canary] == ([weight] if weight else [])
            for r in t.replicas
        )

    return wait_for(applied, timeout_s, f"canary weight {weight} on every replica")


def test_the_gate_guards_the_canary_and_bad_weights_are_refused(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch) as t:
        refused = _canary(t, 0.2, force=False)  # no evidence yet: the gate cannot pass
        assert refused.status_code == 409
        assert refused.json()["gate"]["verdict"] != "pass"
        for bad in (1.5, -0.1, True, "0.2", None):
            assert _canary(t, bad).status_code == 400, bad
        unauth = t.http.post(t.admin() + "/v1/candidates/v2/canary", json={"weight": 0.2})
        assert unauth.status_code == 401
        (decision,) = t.decisions()
        assert (decision["action"], decision["outcome"]) == ("canary", "refused")
        assert not t.replicas[0].app.routing.canary
        assert _ask(t, "someone") == ("old", "primary")


def test_weights_are_honoured_sticky_and_the_same_on_every_replica(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, replicas=2, **USER) as t:
        forced = _canary(t, 0.3)
        assert forced.status_code == 200, forced.text
        assert (forced.json()["weight"], forced.json()["forced"]) == (0.3, True)
        _on_every_replica(t, 0.3)
        users = [f"user-{i}" for i in range(400)]
        first = {u: _ask(t, u, i % 2) for i, u in enumerate(users)}
        served = [u for u, (_, by) in first.items() if by == "v2"]
        # 400 users at p = 0.3: within 4 standard deviations of 120.
        assert abs(len(served) - 120) <= 4 * math.sqrt(400 * 0.3 * 0.7), len(served)
        assert all(label == ("new" if by == "v2" else "old") for label, by in first.values())
        again = {u: _ask(t, u, (i + 1) % 2) for i, u in enumerate(users[:100])}
        assert all(again[u] == first[u] for u in again)  # same user, same model, any replica
        counted = sum(r.app.forwarder.canary_counts.counter.labels("v2", "served")._value.get()
                      for r in t.replicas)  # fmt: skip
        assert counted == len(served) + sum(by == "v2" for _, by in again.values())
        decision = t.decisions()[0]
        assert (decision["action"], decision["forced"], decision["weight_after"]) == (
            "canary",
            True,
            "0.3",
        )
        assert _canary(t, 0, force=False).status_code == 200  # ending needs no gate
        _on_every_replica(t, 0)
        assert {_ask(t, u)[1] for u in served} == {"primary"}


def test_a_candidate_killed_mid_canary_costs_the_clients_nothing(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ExitStack() as candidate_server:
        url = candidate_server.enter_context(serve_app(Model("new")))
        candidates = [{"name": "v2", "url": url, "timeout_ms": 500}]
        with trial(redis_url, prefix, monkeypatch, candidates=candidates, **USER) as t:
            assert _canary(t, 1.0).status_code == 200
            _on_every_replica(t, 1.0)
            assert {_ask(t, f"u{i}") for i in range(10)} == {("new", "v2")}
            candidate_server.close()  # the candidate dies
            answers = {_ask(t, f"u{i}") for i in range(30)}
            assert answers == {("old", "primary")}  # every answer 200, from the primary
            counts = t.replicas[0].app.forwarder.canary_counts.counter
            fell_back = sum(
                counts.labels("v2", outcome)._value.get()
                for outcome in ("fallback_error", "fallback_timeout", "fallback_http_error")
            )
            assert fell_back == 30
            metrics = t.http.get(t.admin() + "/metrics").text
            assert 'shadowtrial_canary_total{candidate="v2",outcome="served"} 10.0' in metrics
            assert 'shadowtrial_canary_latency_seconds_count{candidate="v2"} 10.0' in metrics
            assert "shadowtrial_primary_latency_seconds_count 30.0" in metrics  # not the canary's
            # The page shows the weight and who answered, every replica's counts summed.
            page = t.http.get(t.admin() + "/ui/candidates/v2")

            def shown() -> bool:
                nonlocal page
                page = t.http.get(t.admin() + "/ui/candidates/v2")
                return 'fell back to the primary: <b class="bad">30</b>' in page.text

            wait_for(shown, 5, "the canary's counts on the page")
            assert "Canary: 100.0% of keys answered by v2" in page.text
            assert "served by v2: <b>10</b>" in page.text and "(error 30)" in page.text
            for control in ('data-body="weight"', 'data-body="plan"', 'data-body="end"'):
                assert control in page.text


def test_a_planted_regression_rolls_the_canary_back_within_a_check_interval(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = {**EASY_GATE, "min_agreement": 0.95, "check_interval_s": 0.2}  # no auto_reject
    _regression(redis_url, prefix, monkeypatch, gate, "canary", "0")


def test_a_planted_regression_rejects_the_canary_by_policy(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = {**EASY_GATE, "min_agreement": 0.95, "check_interval_s": 0.2, "canary_on_fail": "reject"}
    _regression(redis_url, prefix, monkeypatch, gate, "reject", None)


def _regression(
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    gate: dict[str, Any],
    action: str,
    weight_after: str | None,
) -> None:
    with trial(redis_url, prefix, monkeypatch, replicas=2, gate=gate, **USER) as t:
        assert _canary(t, 0.5).status_code == 200  # forced: no evidence yet
        _on_every_replica(t, 0.5)
        for i in range(120):  # v2 always disagrees; every request makes a pair, either way
            _ask(t, f"user-{i}", i % 2)
        wait_for(lambda: t.stream_length("v2") == 120, 5, "the pairs recorded")
        run_worker(t.conf, redis_url, 120)
        took = _on_every_replica_within(t, 0.0, 3 * 0.2 + PROPAGATION_S)
        assert took <= 3 * 0.2 + PROPAGATION_S
        rollback = t.decisions()[0]
        # At the very check that first saw the gate fail (its change is recorded then).
        (change,) = [fields for _, fields in t.redis.xrange(t.keys.gate_changes())]
        assert (change[b"from"], change[b"to"]) == (b"insufficient", b"fail")
        failed_at = parse_instant(change[b"time"].decode()).timestamp()
        assert 0 <= parse_instant(rollback["time"]).timestamp() - failed_at <= 0.2
        assert (rollback["action"], rollback["actor"], rollback["verdict"]) == (
            action,
            "automation",
            "fail",
        )
        assert rollback.get("weight_after") == weight_after
        assert any(
            e["rule"] == "agreement" and e["outcome"] == "fail" for e in rollback["evidence"]
        )
        (listed,) = t.http.get(t.admin() + "/v1/candidates").json()["candidates"]
        if action == "canary":
            assert (listed["canary"], listed["state"]) == (0, "active")  # back to shadow only
        else:
            assert listed["state"] == "rejected"


def test_the_primary_shadows_the_canary_with_the_roles_reversed(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, **USER) as t:
        assert _canary(t, 0.5).status_code == 200
        _on_every_replica(t, 0.5)
        answers = [_ask(t, f"user-{i}") for i in range(60)]
        served = sum(by == "v2" for _, by in answers)
        assert 0 < served < 60
        wait_for(lambda: t.stream_length("v2") == 60, 5, "a pair for every request")
        records = [
            PairRecord.from_fields(fields) for _, fields in t.redis.xrange(t.keys.pairs("v2"))
        ]
        assert sum(r.served_by == "v2" for r in records) == served
        assert {r.served_by for r in records} == {"v2", "primary"}
        # Each side keeps its meaning, whoever answered the client.
        assert all(b'"old"' in r.primary_body and b'"new"' in r.candidate_body for r in records)
        assert all(r.primary_status == r.candidate_status == 200 for r in records)
        px = t.replicas[0]
        wait_for(lambda: px.settled("v2"), 5, "mirrors settled")
        px.check_accounting("v2")
        metrics = t.http.get(t.admin() + "/metrics").text
        assert "shadowtrial_canary_eligible_total 60.0" in metrics
        assert f"shadowtrial_canary_primary_total {60 - served}.0" in metrics
        # The shadow's candidate latency; the canary's own answers are in its histogram.
        shadow = f'shadowtrial_candidate_latency_seconds_count{{candidate="v2"}} {60 - served}.0'
        assert shadow in metrics
        assert f'shadowtrial_canary_latency_seconds_count{{candidate="v2"}} {served}.0' in metrics
        run_worker(t.conf, redis_url, 60)
        report = t.http.get(t.admin() + "/v1/candidates/v2/report").json()
        assert report["pairs"] == 60 and report["agreement"]["rate"] == 0.0

        # The client's answer never waits for the primary's shadow of it.
        assert _canary(t, 1.0).status_code == 200
        _on_every_replica(t, 1.0)
        t.candidate.hold.open()
        response = t.http.post(px.url + "/hold", content=b"{}", headers={"x-user-id": "u"})
        assert response.headers["x-shadowtrial-served-by"] == "v2"
        assert t.stream_length("v2") == 60  # the primary still holds its shadow answer
        t.primary.hold.open()
        wait_for(lambda: t.stream_length("v2") == 61, 5, "the held shadow recorded")


def test_the_cli_sets_and_ends_a_canary(
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trial(redis_url, prefix, monkeypatch, tokens="cli-token") as t:
        conf = tmp_path / "st.toml"
        conf.write_text(
            f'[proxy]\nadmin_listen = "{t.admin().removeprefix("http://")}"\n'
            f'primary = "{t.primary_url}"\n[redis]\nprefix = "{prefix}"\n'
            f'[admin]\ntoken_env = "ST_TOKEN_{prefix.upper()}"\n'
        )
        assert main(["canary", "v2", "0.25", "-c", str(conf)]) == 1
        assert "refused: the gate refuses to put v2 on canary" in capsys.readouterr().out
        assert main(["canary", "v2", "0.25", "--force", "-c", str(conf)]) == 0
        assert "v2 answers 25% of keys (forced)" in capsys.readouterr().out
        assert main(["canary", "v2", "2", "-c", str(conf)]) == 2  # not a share: usage error
        plan = ["--steps", "0.1,0.5,1", "--step-s", "60", "--min-pairs", "200", "--force"]
        assert main(["canary", "v2", *plan, "-c", str(conf)]) == 0
        assert "v2 answers 10% of keys (forced), then [0.5, 1.0] every 60 s and 200 pairs" in (
            capsys.readouterr().out
        )
        assert main(["canary", "v2", "0.1", "--steps", "0.2", "-c", str(conf)]) == 2
        assert main(["canary", "v2", "0", "-c", str(conf)]) == 0
        assert "canary of v2 ended" in capsys.readouterr().out


def test_a_plan_steps_up_on_passing_evidence_and_its_last_step_promotes(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = {**EASY_GATE, "check_interval_s": 0.1}  # no auto_promote: the plan decides
    with trial(redis_url, prefix, monkeypatch, replicas=2, gate=gate, worker=BUCKET_1S,
               **USER) as t:  # fmt: skip
        t.candidate.label = "old"  # agrees with the primary: the gate passes
        plan = {"steps": [0.2, 0.5, 1.0], "step_s": 0.5}
        url = t.admin() + "/v1/candidates/v2/canary?force=true"
        started = t.http.post(url, json=plan, headers=ALICE)
        assert started.status_code == 200 and started.json()["weight"] == 0.2
        _on_every_replica(t, 0.2)
        for step, users in ((0.2, range(80)), (0.5, range(80, 200))):
            _next_bucket()  # a step's evidence is the whole buckets after it began
            before = t.stream_length("v2")
            for i in users:
                _ask(t, f"user-{i}", i % 2)
            recorded = before + len(users)  # served by either model: a pair each
            wait_for(lambda n=recorded: t.stream_length("v2") == n, 5, f"pairs at {step}")
            run_worker(t.conf, redis_url, len(users))
            if step == 0.2:
                _on_every_replica_within(t, 0.5, 5)
        for replica in t.replicas:
            wait_for(lambda r=replica: r.app.routing.primary == t.candidate_url, 5, "promoted")
        assert not any(r.app.routing.canary for r in t.replicas)
        steps = [(d["action"], d["actor"], d.get("weight_after")) for d in t.decisions()[::-1]]
        assert steps == [
            ("canary", "alice", "0.2"),
            ("canary", "automation", "0.5"),
            ("promote", "automation", None),
        ]


def test_a_step_advances_only_on_its_own_evidence(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = {**EASY_GATE, "check_interval_s": 0.1}
    with trial(redis_url, prefix, monkeypatch, gate=gate, worker=BUCKET_1S, **USER) as t:
        t.candidate.label = "old"  # agrees with the primary: the gate passes
        for i in range(100):  # plenty of passing shadow evidence before the plan
            _ask(t, f"early-{i}")
        wait_for(lambda: t.stream_length("v2") == 100, 5, "the shadow's pairs")
        run_worker(t.conf, redis_url, 100)
        plan = {"steps": [0.2, 0.5, 1.0], "step_s": 0, "min_pairs": 40}
        started = t.http.post(t.admin() + "/v1/candidates/v2/canary", json=plan, headers=ALICE)
        assert started.status_code == 200 and started.json()["min_pairs"] == 40
        _on_every_replica(t, 0.2)
        time.sleep(2.5)  # past a whole bucket and many checks: the old pairs do not count
        assert [x.weight for x in t.replicas[0].app.routing.canary] == [0.2]
        _next_bucket()
        for i in range(30):  # under min_pairs: still no step
            _ask(t, f"step-{i}")
        wait_for(lambda: t.stream_length("v2") == 130, 5, "the step's first pairs")
        run_worker(t.conf, redis_url, 30)
        time.sleep(1.0)
        assert [x.weight for x in t.replicas[0].app.routing.canary] == [0.2]
        for i in range(30, 45):
            _ask(t, f"step-{i}")
        wait_for(lambda: t.stream_length("v2") == 145, 5, "the step's last pairs")
        run_worker(t.conf, redis_url, 15)
        _on_every_replica_within(t, 0.5, 5)
        step = t.decisions()[0]
        assert (step["actor"], step["weight_after"], step["step_min_pairs"]) == (
            "automation", "0.5", "40",
        )  # fmt: skip
        assert int(step["step_pairs"]) >= 40
        entry = t.http.get(t.admin() + "/v1/candidates").json()["candidates"][0]
        assert entry["canary_min_pairs"] == 40


def _next_bucket() -> None:
    """Sleep into the next 1 s bucket (BUCKET_1S), just past its start."""
    time.sleep(1.02 - time.time() % 1.0)


def test_a_plan_must_grow() -> None:
    from control.canary import canary_plan
    from control.registry import Invalid

    assert canary_plan({"steps": [0.1, 1.0], "step_s": 60}).weight == 0.1
    assert canary_plan({"steps": [0.1, 1.0], "step_s": 60, "min_pairs": 500}).min_pairs == 500
    for bad in (
        {"steps": [0.5, 0.2], "step_s": 60},
        {"steps": [0, 0.5], "step_s": 60},
        {"steps": [], "step_s": 60},
        {"steps": [0.1] * 21, "step_s": 60},
        {"steps": [0.1, 0.2]},
        {"weight": 0.1, "steps": [0.2], "step_s": 1},
        {"steps": [0.1, float("nan")], "step_s": 60},
        {"steps": [0.1, 0.2], "step_s": 60, "min_pairs": 1.5},
        {"steps": [0.1, 0.2], "step_s": 60, "min_pairs": -1},
        {"steps": [0.1, 0.2], "step_s": 60, "min_pairs": "500"},
    ):
        with pytest.raises(Invalid):
            canary_plan(bad)
