"""Promote, reject, rollback, time boxes and gate automation, on real replicas and models."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from admin_harness import ALICE, BOB, EASY_GATE, INFER, Trial, run_worker, trial, wait_for
from fixtures.onnx_models import tiny_model

from control.decisions import anytime_fail

PROPAGATION_S = 1.0


def _promote(t: Trial, name: str = "v2", force: bool = False, i: int = 0) -> httpx.Response:
    query = "?force=true" if force else ""
    return t.http.post(t.admin(i) + f"/v1/candidates/{name}/promote{query}", headers=ALICE)


def test_promote_is_refused_by_the_gate_then_forced_and_every_replica_switches(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, replicas=2) as t:
        refused = _promote(t)
        assert refused.status_code == 409
        body = refused.json()
        assert body["error"] == "the gate refuses to promote v2"
        assert body["gate"]["verdict"] == "insufficient"
        assert any("pairs" in r for r in body["gate"]["reasons"])
        assert t.decisions()[0]["outcome"] == "refused"
        assert t.send(0) == t.send(1) == ["old"]

        # A request in flight on the old primary when the switch happens.
        held: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: held.append(t.http.post(t.replicas[0].url + "/hold", content=b"{}"))
        )
        thread.start()
        assert t.primary.hold.arrived.wait(5)

        promoted = _promote(t, force=True)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["primary"] == t.candidate_url
        assert promoted.json()["previous"] == t.primary_url
        for replica in t.replicas:
            took = wait_for(
                lambda r=replica: r.app.routing.primary == t.candidate_url,
                PROPAGATION_S,
                "replica switches",
            )
            print(f"promote reached a replica in {took * 1000:.1f} ms")
        assert t.send(0) == t.send(1) == ["new"]  # new requests: the new primary
        assert not held  # still waiting on the old primary
        t.primary.hold.open()
        thread.join(5)
        assert held[0].status_code == 200
        assert held[0].json()["outputs"][0]["data"] == ["old"]  # finished where it started

        # The promoted candidate is no longer mirrored to (it answers the clients now).
        assert all(not r.app.routing.mirrors for r in t.replicas)
        listed = t.http.get(t.admin(1) + "/v1/candidates").json()
        assert listed["routing"]["primary_name"] == "v2"
        assert listed["candidates"][0]["state"] == "promoted"
        assert _promote(t, force=True).status_code == 409  # already the primary


def test_rollback_restores_the_previous_primary_everywhere(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, replicas=2) as t:
        assert t.http.post(t.admin(1) + "/v1/rollback", headers=BOB).status_code == 409
        assert _promote(t, force=True).status_code == 200
        wait_for(lambda: all(r.app.routing.primary == t.candidate_url for r in t.replicas), 2)
        back = t.http.post(t.admin(1) + "/v1/rollback", headers=BOB)
        assert back.status_code == 200
        assert back.json()["primary"] == t.primary_url
        for replica in t.replicas:
            wait_for(lambda r=replica: r.app.routing.primary == t.primary_url, PROPAGATION_S)
        assert t.send(0) == t.send(1) == ["old"]
        (entry,) = t.http.get(t.admin() + "/v1/candidates").json()["candidates"]
        assert entry["state"] == "rejected" and "rolled back by bob" in entry["reason"]
        nothing = t.http.post(t.admin() + "/v1/rollback", headers=BOB)
        assert nothing.status_code == 409 and nothing.json()["error"] == "nothing to roll back to"
        actions = [(d["action"], d["actor"]) for d in t.decisions()]
        assert actions == [("rollback", "bob"), ("promote", "alice")]


def test_reject_stops_mirroring_and_keeps_the_evidence(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, replicas=2) as t:
        t.send(0, n=3)
        t.send(1, n=3)
        wait_for(lambda: t.stream_length("v2") == 6, 5, "6 pairs recorded")
        rejected = t.http.post(t.admin() + "/v1/candidates/v2/reject", headers=ALICE)
        assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
        for replica in t.replicas:
            wait_for(lambda r=replica: not r.app.routing.mirrors, PROPAGATION_S, "stops mirroring")
        hits = len(t.candidate.hits)
        t.send(0, n=5)
        t.send(1, n=5)
        assert len(t.candidate.hits) == hits  # nothing mirrored any more
        assert t.stream_length("v2") == 6  # the evidence stays
        report = t.http.get(t.admin() + "/v1/candidates/v2/report?window=1h")
        assert report.status_code == 200 and report.json()["candidate"] == "v2"
        again = t.http.post(t.admin() + "/v1/candidates/v2/reject", headers=ALICE)
        assert again.status_code == 409
        assert t.decisions()[0]["action"] == "reject"


def test_an_onnx_candidate_cannot_become_the_primary(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = tiny_model(tmp_path, "sum")
    onnx = [{"name": "v2-onnx", "onnx": str(model), "run": "worker"}]
    with trial(redis_url, prefix, monkeypatch, candidates=onnx) as t:
        refused = _promote(t, "v2-onnx", force=True)
        assert refused.status_code == 409
        assert "ONNX candidate and cannot become the primary" in refused.json()["error"]
        assert t.replicas[0].app.routing.primary == t.primary_url
        patch = t.http.patch(
            t.admin() + "/v1/candidates/v2-onnx", json={"timeout_ms": 5}, headers=ALICE
        )
        assert patch.status_code == 400 and "config file" in patch.json()["detail"]


def test_promote_without_force_when_the_gate_passes(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The candidate agrees with the primary here: both answer "old".
    with trial(redis_url, prefix, monkeypatch, gate=EASY_GATE) as t:
        t.candidate.label = "old"
        t.send(0, n=60)
        wait_for(lambda: t.stream_length("v2") == 60, 5, "60 pairs recorded")
        run_worker(t.conf, redis_url, 60)
        promoted = _promote(t)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["gate"]["verdict"] == "pass"
        assert promoted.json()["forced"] is False
        decision = t.decisions()[0]
        assert (decision["verdict"], decision["forced"], decision["outcome"]) == (
            "pass",
            False,
            "done",
        )


def test_a_time_box_ends_the_trial_once_across_replicas(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, replicas=2, admin={"sync_ms": 50}) as t:
        ends = datetime.now(UTC) + timedelta(seconds=1)
        body = {"name": "boxed", "url": t.candidate_url, "ends_at": ends.isoformat()}
        assert (
            t.http.post(t.admin() + "/v1/candidates", json=body, headers=ALICE).status_code == 201
        )
        for replica in t.replicas:
            wait_for(lambda r=replica: "boxed" in {m.name for m in r.app.routing.mirrors}, 1)

        def ended() -> list[dict[str, str]]:
            return [d for d in t.decisions() if d["action"] == "end"]

        wait_for(ended, 5, "the final verdict")
        for replica in t.replicas:
            assert "boxed" not in {m.name for m in replica.app.routing.mirrors}
        ticks = [r.app.trials.ticks for r in t.replicas]
        wait_for(
            lambda: all(
                r.app.trials.ticks >= n + 5 for r, n in zip(t.replicas, ticks, strict=True)
            ),
            5,
        )
        (final,) = ended()  # exactly one, though both replicas watched the clock
        assert final["candidate"] == "boxed" and final["actor"] == "time-box"
        assert final["verdict"] == "insufficient" and final["reasons"]
        assert sum(len(r.app.trials.ended) for r in t.replicas) == 1
        entry = next(
            c
            for c in t.http.get(t.admin() + "/v1/candidates").json()["candidates"]
            if c["name"] == "boxed"
        )
        assert entry["state"] == "ended"

        # Extending the time box reopens the trial.
        later = {"duration": "1h"}
        reopened = t.http.patch(t.admin() + "/v1/candidates/boxed", json=later, headers=ALICE)
        assert reopened.status_code == 200 and reopened.json()["state"] == "active"
        wait_for(lambda: "boxed" in {m.name for m in t.replicas[1].app.routing.mirrors}, 1)


def test_automation_rejects_a_failing_candidate(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = {**EASY_GATE, "min_agreement": 0.95, "auto_reject": True, "check_interval_s": 0.1}
    with trial(redis_url, prefix, monkeypatch, replicas=2, gate=gate) as t:
        t.send(0, n=60)  # the candidate always disagrees
        wait_for(lambda: t.stream_length("v2") == 60, 5, "60 pairs recorded")
        run_worker(t.conf, redis_url, 60)
        wait_for(lambda: t.decisions(), 5, "an automatic decision")
        (decision,) = t.decisions()
        assert (decision["action"], decision["actor"], decision["verdict"]) == (
            "reject",
            "automation",
            "fail",
        )
        # The audit entry names the rule it acted on and its evidence (here a bound).
        failed = [e for e in decision["evidence"] if e["outcome"] == "fail"]
        agreement = next(e for e in failed if e["rule"] == "agreement")
        assert agreement["anytime"] is True
        assert agreement["evidence"]["high"] < agreement["evidence"]["minimum"] == 0.95
        for replica in t.replicas:
            wait_for(lambda r=replica: not r.app.routing.mirrors, PROPAGATION_S)


def test_automation_acts_only_on_anytime_valid_fails() -> None:
    """A fail from a rule judged only at the end of a trial is not acted on early."""
    end_only = {"rule": "latency", "outcome": "fail", "anytime": False}
    anytime = {"rule": "slices", "outcome": "fail", "anytime": True}
    assert not anytime_fail({"verdict": "fail", "rules": [end_only]})
    assert anytime_fail({"verdict": "fail", "rules": [end_only, anytime]})
    assert not anytime_fail({"verdict": "pass", "rules": []})


def test_automation_promotes_after_the_gate_held(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = {**EASY_GATE, "auto_promote_after_s": 1, "check_interval_s": 0.1}
    with trial(redis_url, prefix, monkeypatch, replicas=2, gate=gate) as t:
        t.candidate.label = "old"
        t.send(0, n=60, path=INFER)
        wait_for(lambda: t.stream_length("v2") == 60, 5, "60 pairs recorded")
        run_worker(t.conf, redis_url, 60)
        wait_for(lambda: t.decisions(), 5, "an automatic promotion")
        (decision,) = t.decisions()
        assert (decision["action"], decision["actor"], decision["verdict"]) == (
            "promote",
            "automation",
            "pass",
        )
        for replica in t.replicas:
            wait_for(lambda r=replica: r.app.routing.primary == t.candidate_url, PROPAGATION_S)
