"""Text from traffic cannot break the evidence, the terminal or the page (issue 12, bugs 1, 4).

A slice value or class label is whatever a client or a model sends. One unauthenticated
request with a separator in a slice value (`{"instances":[{"country":"x\\u001fy"}]}`)
made every report answer 500 and silently stopped the gate automation; ESC sequences in
a value cleared the terminal of `shadowtrial report`. Here the real proxy (data and
admin ports) and the real worker digest such requests, and every reader of the evidence
still works: the report API, the web page, promote, `shadowtrial report` and the
automation, which also survives any other error (logged, counted, retried).
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from admin_harness import ALICE, EASY_GATE, INFER, TOKENS, Model, Trial, run_worker, trial, wait_for
from reliability_harness import serve, worker, write_config
from rich.console import Console
from servers import serve_app

from analysis.summaries import SEP, SEP_SHOWN, Summary
from common.keys import Keys
from common.sanitize import install_log_filter
from shadowtrial import cli
from shadowtrial.render import gate, render_report
from tests import worker_procs as wp

HOSTILE = b'{"inputs": [], "instances": [{"country": "x\\u001fy"}]}'
ESCAPES = b'{"inputs": [], "instances": [{"country": "\\u001b[2J\\u001b[Hgate: PASS\\u202e"}]}'
SLICES = [{"name": "country", "from": "$.instances[*].country"}]
N = 30
TOKEN_ENV = "ST_TOKEN_TRAFFIC_TEXT"


def _send(t: Trial, body: bytes, n: int) -> None:
    for _ in range(n):
        answer = t.http.post(t.replicas[0].url + INFER, content=body)
        assert answer.status_code == 200, answer.text


def _old_style_fields(client: redis.Redis, keys: Keys, bucket_seconds: int) -> None:
    """Fields as a worker before the fix stored them: a SEP inside a value (bad parts)."""
    start = int(time.time()) // bucket_seconds * bucket_seconds
    key = keys.bucket("v2", start)
    for name in (
        f"s{SEP}country{SEP}a{SEP}b",
        f"q{SEP}country{SEP}a{SEP}b{SEP}primary:class{SEP}old",
        f"fm{SEP}a{SEP}b{SEP}c",
    ):
        client.hincrby(key, name, 3)
    client.zadd(keys.bucket_index("v2"), {str(start): start})


@dataclass
class Served:
    """`shadowtrial serve` and `shadowtrial worker` processes after the hostile requests."""

    admin: str
    config: Path


@contextmanager
def _hostile_processes(
    redis_url: str, folder: Path, gate: dict[str, Any], bodies: list[bytes]
) -> Iterator[Served]:
    """`serve` and `worker` processes after `bodies` (N each) went through the data port;
    the primary answers "old", the candidate "new": 0% agreement."""
    prefix = f"tt{uuid.uuid4().hex[:10]}"
    os.environ[TOKEN_ENV] = TOKENS  # inherited by the serve process
    client = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    with serve_app(Model("old")) as primary_url, serve_app(Model("new")) as candidate_url:
        config = write_config(
            folder / "shadowtrial.toml", primary_url, redis_url, prefix,
            [{"name": "v2", "url": candidate_url}],
            sections={"gate": gate, "worker": {"block_ms": 100},
                      "admin": {"token_env": TOKEN_ENV}},
        )  # fmt: skip
        with config.open("a") as f:
            f.write('[[slices]]\nname = "country"\nfrom = "$.instances[*].country"\n')
        with serve(config) as proxy, httpx.Client(timeout=30) as http:
            for body in bodies:  # the curl of the issue, on the data port
                for _ in range(N):
                    assert http.post(proxy.url + INFER, content=body).status_code == 200
            _old_style_fields(client, keys, 60)
            total = len(bodies) * N
            wp.wait_for(lambda: client.xlen(keys.pairs("v2")) == total, 15, "pairs recorded")
            with worker(config, "hostile-w1"):
                wp.wait_for(lambda: wp.consumed(client, keys, "v2"), 30, "the worker")
            yield Served(proxy.admin, config)
            logs = proxy.log_text()
    os.environ.pop(TOKEN_ENV, None)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()
    assert "Traceback" not in logs and "\x1b" not in logs, logs[-3000:]


@pytest.fixture(scope="module")
def hostile(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The issue's request (and ESC sequences) on real processes; a candidate at 0%."""
    gate = {**EASY_GATE, "min_agreement": 0.95}
    folder = tmp_path_factory.mktemp("hostile")
    with _hostile_processes(redis_url, folder, gate, [HOSTILE, ESCAPES]) as served:
        yield served


def test_the_automation_still_rejects_on_real_processes(redis_url: str, tmp_path: Path) -> None:
    """The issue's request killed the automation task: a 0% candidate stayed active."""
    gate = {**EASY_GATE, "min_agreement": 0.95, "auto_reject": True, "check_interval_s": 0.2}
    with _hostile_processes(redis_url, tmp_path, gate, [HOSTILE, HOSTILE]) as served:

        def decisions() -> list[dict[str, Any]]:
            answer = httpx.get(served.admin + "/v1/decisions", timeout=10)
            return answer.json()["decisions"]

        wp.wait_for(decisions, 15, "an automatic decision")
        (decision,) = decisions()
        assert (decision["action"], decision["actor"]) == ("reject", "automation")


def test_a_separator_in_a_slice_value_breaks_no_reader(
    hostile: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = httpx.get(hostile.admin + "/v1/candidates/v2/report", timeout=30)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["pairs"] == 2 * N
    assert report["records"]["malformed_fields"] == 3  # the old-style fields: skipped, counted
    values = {r["value"] for r in report["slices"] if r["slice"] == "country"}
    assert f"x{SEP_SHOWN}y" in values and not any(SEP in v for v in values)
    assert report["gate"]["verdict"] == "fail"

    page = httpx.get(hostile.admin + "/ui/candidates/v2", timeout=30)
    assert page.status_code == 200
    assert f"x{SEP_SHOWN}y" in page.text and "\x1b" not in page.text and "\u202e" not in page.text

    promote = hostile.admin + "/v1/candidates/v2/promote"
    refused = httpx.post(promote, headers=ALICE, timeout=30)
    assert refused.status_code == 409, refused.text  # the gate judged it, no 500
    assert refused.json()["gate"]["verdict"] == "fail"

    args = ["--admin", hostile.admin, "-c", str(hostile.config), "--as", "alice"]
    assert cli.main(["report", "v2", *args]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"x{SEP_SHOWN}y" in out and "\\x1b[2J" in out and "\x1b[2J" not in out
    assert cli.main(["promote", "v2", *args]) != 0  # refused by the gate, printed
    out = capsys.readouterr().out
    assert "\x1b[2J" not in out and "fail" in out


def test_escape_sequences_never_reach_the_terminal(hostile: Served) -> None:
    report = httpx.get(hostile.admin + "/v1/candidates/v2/report", timeout=30).json()
    out = io.StringIO()
    render_report(report, Console(file=out, width=250, force_terminal=True, color_system=None))
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text  # no colours asked: no ESC at all
    assert "\\x1b[2J\\x1b[Hgate: PASS\\u202e" in text  # shown, escaped
    gate_lines = [line for line in text.splitlines() if line.startswith("gate:")]
    assert gate_lines == ["gate: FAIL"]


def test_gate_automation_survives_any_error_and_still_rejects(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = {**EASY_GATE, "min_agreement": 0.95, "auto_reject": True, "check_interval_s": 0.1}
    with trial(redis_url, prefix, monkeypatch, gate=policy, slices=SLICES) as t:
        _send(t, HOSTILE, 2 * N)  # the candidate disagrees on every pair: 0% agreement
        _old_style_fields(t.redis, t.keys, t.conf.worker.bucket_seconds)
        start = int(time.time()) // t.conf.worker.bucket_seconds * t.conf.worker.bucket_seconds
        garbage = t.keys.bucket("v2", start)
        t.redis.hset(garbage, "junk", "not a number")  # any error inside a round
        wait_for(lambda: t.stream_length("v2") == 2 * N, 5, "pairs recorded")
        run_worker(t.conf, redis_url, 2 * N)

        def errors() -> float:
            text = t.http.get(t.admin() + "/metrics").text
            line = 'shadowtrial_gate_automation_errors_total{error="ValueError"}'
            found = [x for x in text.splitlines() if x.startswith(line)]
            return float(found[0].split()[-1]) if found else 0.0

        wait_for(lambda: errors() >= 3, 5, "failed rounds counted")
        assert t.decisions() == []
        t.redis.hdel(garbage, "junk")  # the error goes away: the next round decides
        wait_for(lambda: t.decisions(), 5, "an automatic decision")
        (decision,) = t.decisions()
        assert (decision["action"], decision["actor"], decision["verdict"]) == (
            "reject",
            "automation",
            "fail",
        )


def test_summary_skips_and_counts_fields_with_the_wrong_parts() -> None:
    summary = Summary(
        {
            f"q{SEP}a{SEP}1{SEP}b{SEP}2": 5,
            f"q{SEP}a{SEP}1{SEP}b{SEP}2{SEP}3": 5,
            f"fm{SEP}x": 1,
            f"fm{SEP}x{SEP}y": 2,
            f"s{SEP}a": 1,
            "cp:abc": 4,
            "rows": 7,
        }
    )
    assert summary.malformed == 3
    assert summary.slice_pairs() == [
        {"conditions": [["a", "1"], ["b", "2"]], "pairs": 5, "disagree": 0}
    ]
    assert summary.flip_matrix()[0] == ["x", "y"]
    assert summary.slices() == []
    assert summary.hist("cp", 100).sum() == 0
    assert orjson.dumps(summary.slices())


def test_every_log_line_stays_one_printable_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_log_filter()
        logging.getLogger("shadowtrial.test").warning(
            "slice %s", "x\n2026-12-02 INFO forged line\x1b[2J\u202e"
        )
        try:
            raise ValueError("boom \x1b[2J")
        except ValueError:
            logging.getLogger("shadowtrial.test").exception("failed on %r", "a\rb")
    finally:
        root.removeHandler(handler)
    first, second, *traceback = stream.getvalue().splitlines()
    assert first == "slice x\\x0a2026-12-02 INFO forged line\\x1b[2J\\u202e"
    assert second == "failed on 'a\\rb'"  # repr() escaped it already: left as it is
    assert traceback[0].startswith("Traceback") and traceback[-1] == "ValueError: boom \\x1b[2J"


def test_gate_outcomes_never_glue_to_the_rule_name() -> None:
    report = {
        "gate": {
            "verdict": "insufficient",
            "rules": [
                {"rule": "pairs", "outcome": "insufficient", "detail": "12 pairs"},
                {"rule": "agreement", "outcome": "pass", "detail": "99%"},
            ],
        }
    }
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(gate(report))
    lines = out.getvalue().splitlines()
    assert lines[1] == "  insufficient pairs 12 pairs"
    assert lines[2] == "  pass         agreement 99%"
