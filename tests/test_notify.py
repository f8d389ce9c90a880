"""Webhook notifications: decisions reach a real HTTP receiver, filtered, retried."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from admin_harness import ALICE, EASY_GATE, INFER, run_worker, trial, wait_for
from servers import serve_app

from control.notify import gate_payload, payload

SECRET = "T000-SECRET-PATH-0001"


class Receiver:
    """An ASGI webhook receiver that fails its first `fail` POSTs with 500."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.got: list[dict[str, Any]] = []
        self.attempts = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.attempts += 1
        status = 500 if self.attempts <= self.fail else 200
        if status == 200:
            self.got.append(orjson.loads(body))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def test_listed_decisions_are_posted_and_a_failing_receiver_is_retried(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver(fail=1)
    with serve_app(receiver) as base:
        notify = {"url": f"{base}/hooks/{SECRET}", "events": ["canary", "promote"]}
        gate = {"check_interval_s": 0.1}
        with trial(redis_url, prefix, monkeypatch, replicas=2, notify=notify, gate=gate) as t:
            url = t.admin() + "/v1/candidates/v2"
            assert t.http.post(url + "/canary?force=true", json={"weight": 0.1}, headers=ALICE)
            assert t.http.post(url + "/reject", headers=ALICE).status_code == 200  # not listed
            wait_for(lambda: len(receiver.got) == 1, 5, "the canary notification, retried")
            assert receiver.attempts == 2  # the first answer was a 500
            (sent,) = receiver.got
            assert (sent["event"], sent["decision"]["candidate"]) == ("canary", "v2")
            assert "alice canary v2 to weight 0.1 (forced)" in sent["text"]
            stored = b"".join(
                orjson.dumps([k.decode(), str(t.redis.type(k))]) for k in t.redis.keys(prefix + "*")
            )
            assert SECRET.encode() not in stored
            for key in t.redis.keys(prefix + "*"):
                if t.redis.type(key) == b"stream":
                    assert SECRET.encode() not in orjson.dumps(
                        [[str(v) for v in e[1].values()] for e in t.redis.xrange(key)]
                    )


def test_a_gate_change_without_a_decision_is_posted_as_filtered(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver(fail=0)
    with serve_app(receiver) as base:
        notify = {"url": f"{base}/hooks/{SECRET}", "events": ["gate:fail"]}
        gate = {**EASY_GATE, "min_agreement": 0.5, "check_interval_s": 0.1}  # no auto_reject
        with trial(redis_url, prefix, monkeypatch, notify=notify, gate=gate) as t:
            t.candidate.label = "old"  # agrees: insufficient -> pass, not listed
            t.send(n=40)
            wait_for(lambda: t.stream_length("v2") == 40, 5, "agreeing pairs")
            run_worker(t.conf, redis_url, 40)
            verdicts = t.keys.gate_verdicts()
            wait_for(lambda: t.redis.hget(verdicts, "v2") == b"pass", 5, "a passing gate")
            t.candidate.label = "new"  # a regression: pass -> fail, no decision follows
            t.send(n=200)
            wait_for(lambda: t.stream_length("v2") == 240, 5, "disagreeing pairs")
            run_worker(t.conf, redis_url, 200)
            wait_for(lambda: receiver.got, 5, "the gate change posted")
            (sent,) = receiver.got  # the pass was not listed
            assert sent["event"] == "gate:fail"
            assert (sent["change"]["from"], sent["change"]["to"]) == ("pass", "fail")
            assert sent["text"].startswith("shadowtrial: the gate on v2 went from pass to fail")
            assert t.decisions() == []  # no decision: the automation only watched
            assert t.http.post(t.replicas[0].url + INFER, content=b"{}").status_code == 200


def test_a_hostile_candidate_name_cannot_break_the_text() -> None:
    sent = payload({"action": "canary", "actor": "a\x1b[31m", "candidate": "v\n2"})
    assert "\x1b" not in sent["text"] and "\n" not in sent["text"]
    change = {"candidate": "v\n2", "from": "pass", "to": "fail", "reasons": ["\x1b[2Jx" * 500]}
    text = gate_payload(change)["text"]
    assert "\x1b" not in text and "\n" not in text and len(text) <= 1000
