"""Behaviour metrics on /metrics and the shipped monitoring files (deploy/monitoring/).

The gate's verdict reaches Prometheus from a real trial (proxies, model servers, Redis, a
real worker); the alerting rules parse with a real PromQL parser (promql-parser, a port of
Prometheus's own) and name only metrics a running proxy exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from admin_harness import EASY_GATE, Trial, run_worker, trial, wait_for
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.gate_metrics import GateGauges

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
RULES = MONITORING / "shadowtrial-rules.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
METRIC_NAME = re.compile(r"\bshadowtrial_[a-z_]+")


def _samples(t: Trial, i: int = 0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = t.http.get(t.admin(i) + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_gate_verdict_and_agreement_reach_metrics_without_automation(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = {**EASY_GATE, "min_agreement": 0.95, "check_interval_s": 0.1}  # no auto_reject
    with trial(redis_url, prefix, monkeypatch, replicas=2, gate=gate) as t:
        t.send(0, n=60)  # the candidate always disagrees
        wait_for(lambda: t.stream_length("v2") == 60, 5, "60 pairs recorded")
        run_worker(t.conf, redis_url, 60)
        key = (("candidate", "v2"),)

        def exported() -> dict[str, float]:
            merged: dict[str, float] = {}
            for i in range(2):  # one replica (the lease holder) exports them
                for (name, labels), value in _samples(t, i).items():
                    if labels == key and name.startswith("shadowtrial_candidate_"):
                        merged[name] = value
            return merged if merged.get("shadowtrial_candidate_gate_pairs") == 60 else {}

        values: dict[str, float] = {}
        wait_for(lambda: values.update(exported()) or values, 5, "the verdict on /metrics")
        assert values["shadowtrial_candidate_verdict"] == -1
        assert values["shadowtrial_candidate_agreement"] == 0
        assert values["shadowtrial_candidate_agreement_low"] == 0
        assert 0 < values["shadowtrial_candidate_agreement_high"] < 0.95
        assert values["shadowtrial_candidate_gate_checked_timestamp_seconds"] > 0
        assert t.decisions() == []  # exporting a verdict decides nothing
        exposed = "".join(t.http.get(t.admin(i) + "/metrics").text for i in range(2))
        named = {m.removesuffix("_bucket") for e in _expressions() for m in METRIC_NAME.findall(e)}
        missing = {m for m in named if f"# HELP {m} " not in exposed}
        assert not missing, f"alert rules name metrics no proxy exposes: {missing}"


def _expressions() -> list[str]:
    """Every PromQL expression shipped: the alert rules and the dashboard's queries."""
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    return [rule["expr"] for rule in _rules()] + queries


def test_gauges_of_a_candidate_no_longer_judged_disappear() -> None:
    gauges = GateGauges(CollectorRegistry())
    passing = {"verdict": "pass", "pairs": 50, "agreement": {"rate": 0.9, "cs_low": 0.8}}
    gauges.judged("a", passing, now=1.0)
    gauges.judged("b", {"verdict": "insufficient", "pairs": 0, "agreement": {}}, now=1.0)
    assert _values(gauges.verdict) == {"a": 1, "b": 0}
    assert _values(gauges.low) == {"a": 0.8}  # no bound known: no sample, not a made-up one
    assert _values(gauges.high) == {}
    gauges.keep_only(["b"])
    for metric in (gauges.verdict, gauges.pairs, gauges.checked):
        assert set(_values(metric)) == {"b"}
    assert _values(gauges.low) == {}


def _values(metric: Any) -> dict[str, float]:
    return {s.labels["candidate"]: s.value for m in metric.collect() for s in m.samples}


def test_every_alert_rule_parses_with_a_promql_parser() -> None:
    rules = _rules()
    assert len(rules) >= 10
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        assert rule["alert"].startswith("Shadowtrial")
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        assert "for" not in rule or DURATION.match(rule["for"])


def test_every_dashboard_query_parses_and_panels_do_not_overlap() -> None:
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for expr in _expressions():
        promql_parser.parse(expr)
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]]
    assert len(set(cells)) == len(cells)
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_a_broken_expression_is_refused_by_the_parser() -> None:
    """The parser used above is strict (else the test before proves nothing)."""
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (candidate) (rate(shadowtrial_capture_total[5m])")


def test_the_operator_rule_resource_holds_the_same_groups() -> None:
    plain = yaml.safe_load(RULES.read_text())["groups"]
    resource = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == plain
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"


def test_the_worker_health_key_says_throughput_errors_and_lag(redis_url: str, prefix: str) -> None:
    import orjson
    import redis

    from analysis.worker import Worker
    from common.keys import Keys
    from tests import pairs_factory as pf

    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        pf.write(
            client,
            keys.pairs("v2"),
            [pf.record(f"r{i}", [[0.1, 0.9]], [[0.2, 0.8]]) for i in range(30)],
        )
        worker = Worker(client, pf.settings(prefix, batch=10), consumer="w1")
        worker.discover()
        worker.read_new(block=False)  # 10 of 30 applied: a heartbeat at once ("applying")
        worker.read_new(block=False)  # 20 of 30
        worker.heartbeat()
        health = orjson.loads(client.get(keys.worker_health("w1")))
        version = client.info("server")["redis_version"]
    finally:
        client.close()
    assert health["applied"] == 20 and health["errors"] == 0
    assert health["pairs_per_s"] > 0
    if int(version.split(".")[0]) >= 7:  # XINFO GROUPS reports lag from Redis 7 on
        assert health["lag"] == {"v2": 10}
    else:
        assert health["lag"] == {"v2": None}


def test_workers_reach_metrics_through_their_health_keys(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis.worker import Worker

    with trial(redis_url, prefix, monkeypatch) as t:
        before = _samples(t)
        assert not [k for k in before if k[0].startswith("shadowtrial_worker_")]  # none yet
        t.send(n=30)
        wait_for(lambda: t.stream_length("v2") == 30, 5, "30 pairs recorded")
        worker = Worker(t.redis, t.conf, consumer='w"1\n')  # a hostile id stays one label
        worker.discover()
        while worker.read_new(block=False):
            pass
        t.send(n=10)  # applied after the last heartbeat: a rate above 0 at the next one
        wait_for(lambda: t.stream_length("v2") == 40, 5, "10 more pairs recorded")
        while worker.read_new(block=False):
            pass
        worker.heartbeat()
        samples = _samples(t)  # parsed by prometheus_client's own parser
    who = (("worker", 'w"1\n'),)
    assert samples[("shadowtrial_worker_applied_total", who)] == 40
    assert samples[("shadowtrial_worker_batch_errors_total", who)] == 0
    assert samples[("shadowtrial_worker_pairs_per_second", who)] > 0
    assert samples[("shadowtrial_worker_heartbeat_timestamp_seconds", who)] > 0
    if int(t.redis.info("server")["redis_version"].split(".")[0]) >= 7:
        lag = (("candidate", "v2"), ("worker", 'w"1\n'))
        assert samples[("shadowtrial_worker_lag", lag)] == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_checks_the_rule_file() -> None:
    """Prometheus's own checker, where it is installed (Debian: the prometheus package)."""
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
