"""The live watch end to end: a real proxy watching a real model server (no candidate),
a real worker folding, the admin API, the gauges and the CLI."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from proxy_upstreams import running_proxy, wait_until
from servers import serve_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from analysis.worker import Worker
from common.keys import WATCH, Keys
from common.records import PairRecord
from common.settings import Settings, settings_from_mapping
from shadowtrial.cli import main

TOKEN = "watch-token-0000001"
PATH = "/v1/models/m:predict"


async def predict(request: Request) -> JSONResponse:
    """A model: 'old' when the first input is under 50, less sure as it grows."""
    doc = json.loads(await request.body())
    out = []
    for row in doc.get("instances") or []:
        age = row[0] if isinstance(row, list) and row and isinstance(row[0], int | float) else 0
        p = min(0.99, max(0.5, 0.99 - abs(age - 40) / 60))
        label = "young" if age < 50 else "old"
        out.append({"label": label, "probabilities": [p, 1 - p]})
    return JSONResponse({"predictions": out})


@pytest.fixture(scope="module")
def model() -> Iterator[str]:
    with serve_app(Starlette(routes=[Route(PATH, predict, methods=["POST"])])) as url:
        yield url


def settings_for(model: str, prefix: str, token_env: str, **watch: Any) -> Settings:
    raw = {
        "proxy": {"primary": model, "mirror_paths": ["**"]},
        "redis": {"prefix": prefix},
        "admin": {"token_env": token_env},
        "worker": {"block_ms": 10, "bucket_seconds": 1},
        "watch": {"sample": 1.0, "reference": "pinned", "gauges_every_s": 0.2, **watch},
        "features": [{"name": "age", "from": "instances[0]"},
                     {"name": "tenant", "from": "header:X-Tenant"}],
    }  # fmt: skip
    return settings_from_mapping(raw, environ={})


def send(client: httpx.Client, url: str, n: int, *, shift: bool, seed: int) -> list[str]:
    rng = random.Random(seed)
    ids = []
    for i in range(n):
        age = rng.gauss(58 if shift else 38, 8)
        city = rng.choice(["lyon", "paris", "marseille"] if shift else ["lyon", "paris"])
        rid = f"{'b' if shift else 'a'}{seed}-{i}"
        headers = {"x-request-id": rid, "x-tenant": "acme"}
        r = client.post(url + PATH, json={"instances": [[age, city]]}, headers=headers)
        assert r.status_code == 200
        ids.append(rid)
    return ids


def fold(worker: Worker) -> None:
    worker.discover()
    while worker.read_watch(block=False):
        pass


def test_watch_flags_a_shift_without_a_candidate(
    model: str, redis_url: str, prefix: str, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:  # fmt: skip
    token_env = f"ST_WATCH_{prefix.upper()}"
    monkeypatch.setenv(token_env, TOKEN)
    settings = settings_for(model, prefix, token_env)
    keys = Keys(prefix)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
        t0 = time.time()
        send(http, px.url, 300, shift=False, seed=1)
        t_ref = time.time()
        time.sleep(2.2)  # whole one-second buckets apart
        t_calm = time.time()
        send(http, px.url, 300, shift=False, seed=3)  # the same world: nothing to flag
        wait_until(lambda: redis_client.xlen(keys.pairs(WATCH)) == 600, what="600 records")
        worker = Worker(redis_client, settings)
        fold(worker)
        pin = {"from": _iso(t0 - 1), "to": _iso(t_ref + 0.5)}
        refused = http.put(px.admin + "/v1/watch/reference", json=pin)
        assert refused.status_code == 401
        assert http.put(px.admin + "/v1/watch/reference", json=pin, headers=auth).status_code == 200
        calm = http.get(px.admin + "/v1/watch", params={"window": f"{time.time() - t_calm:.3f}s"})
        assert calm.json()["requests"] == 300 and calm.json()["flagged"] == []
        assert not calm.json()["outputs"]["confidence_flagged"]
        time.sleep(2.2)
        t1 = time.time()
        shifted = send(http, px.url, 300, shift=True, seed=2)
        wait_until(lambda: redis_client.xlen(keys.pairs(WATCH)) == 900, what="900 records")
        fold(worker)
        window = f"{time.time() - t1:.3f}s"
        doc = http.get(px.admin + "/v1/watch", params={"window": window}).json()
        assert doc["reference"]["kind"] == "pinned" and doc["reference"]["requests"] == 300
        assert doc["requests"] == 300
        assert set(doc["flagged"]) >= {"age", "instances[1]"}
        city = next(f for f in doc["features"] if f["feature"] == "instances[1]")
        assert city["first_seen"] == ["marseille"]
        tenant = next(f for f in doc["features"] if f["feature"] == "tenant")
        assert not tenant["flagged"] and tenant["chart"]["values"][0]["value"] == "acme"
        assert (
            doc["outputs"]["class_mix"]["old"] > 0.5 > doc["outputs"]["class_mix_reference"]["old"]
        )
        assert doc["outputs"]["confidence_flagged"]

        def accounting() -> dict[str, int]:  # the proxies write their counts once a second
            return http.get(px.admin + "/v1/watch", params={"window": "1h"}).json()["accounting"]

        wait_until(lambda: accounting()["captured"] == 900, what="the capture counts")
        assert accounting() == {"captured": 900, "folded": 900, "unreadable": 0, "dropped": 0}
        # labels come late: accuracy with an interval
        labels = [{"request_id": rid, "label": "old"} for rid in shifted[:100]]
        fed = http.post(px.admin + "/v1/feedback", json=labels, headers=auth).json()
        assert {r.get("watch") for r in fed["results"]} == {"joined"}
        doc = http.get(px.admin + "/v1/watch", params={"window": f"{time.time() - t1:.3f}s"})
        lab = doc.json()["labels"]
        assert lab["labelled"] == 100 and lab["low"] <= lab["accuracy"] <= lab["high"]
        assert lab["per_class_recall"].keys() == {"old"} and lab["over_time"]
        # the proxy's accounting: every sampled request recorded
        assert px.value("shadowtrial_watch_records_total", outcome="sampled") == 900
        assert px.value("shadowtrial_watch_records_total", outcome="recorded") == 900
        # the gauges, for existing alerting
        wait_until(lambda: px.app.watch_task.rounds >= 1, what="a gauge round")
        metrics = http.get(px.admin + "/metrics").text
        assert "shadowtrial_watch_mean_confidence" in metrics
        assert 'shadowtrial_watch_feature_drift{feature="age"}' in metrics
        audit = http.get(px.admin + "/v1/decisions").json()["decisions"]
        assert audit[0]["action"] == "watch-reference" and audit[0]["actor"] == "admin"
        # the CLI reads the same document; exit 1: a feature is flagged
        config = tmp_path / "st.toml"
        config.write_text(f'[redis]\nprefix = "{prefix}"\n[admin]\ntoken_env = "{token_env}"\n')
        argv = ["watch", "-c", str(config), "--admin", px.admin, "--window", "1h",
                "--reference", "pinned"]  # fmt: skip
        assert main(argv) == 1
        assert main(["watch", "pin", "-c", str(config), "--admin", px.admin,
                     "--from", pin["from"], "--to", pin["to"]]) == 0  # fmt: skip


def _iso(ts: float) -> str:
    from common.settings import format_instant

    return format_instant(ts)


def test_hostile_traffic_and_the_cli_never_break(
    model: str, redis_url: str, prefix: str, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    token_env = f"ST_WATCH_{prefix.upper()}"
    monkeypatch.setenv(token_env, TOKEN)
    settings = settings_for(model, prefix, token_env, max_features=8, max_categories=5,
                            reference="day")  # fmt: skip
    keys = Keys(prefix)
    bodies = [
        b'{"instances": [["\\u001b[2J\\u001b]0;pwn\\u0007", NaN]]}',
        b'{"instances": [[{"deep": [1, [2]]}]]}',
        json.dumps({"instances": [list(range(5000))]}).encode(),
        json.dumps({"instances": [{f"k\x1b[{i}m": i for i in range(20)}]}).encode(),
        b"\x00\x01 not json at all",
        *(json.dumps({"instances": [[1, f"v{i}"]]}).encode() for i in range(30)),
    ]
    with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
        for body in bodies:
            http.post(px.url + PATH, content=body, headers={"content-type": "application/json"})
        wait_until(lambda: redis_client.xlen(keys.pairs(WATCH)) == len(bodies), what="records")
        fold(Worker(redis_client, settings))
        doc = http.get(px.admin + "/v1/watch").json()
        assert doc["requests"] == len(bodies) and doc["features_over_cap"] > 0
        assert len(doc["features"]) <= 8 and doc["reference"]["available"] is False
        assert doc["outputs"]["errors"] >= 1  # the model refused what it could not read
        bad = http.get(px.admin + "/v1/watch", params={"reference": "yesterday"})
        assert bad.status_code == 400 and "reference" in bad.json()["detail"]
        assert http.get(px.admin + "/v1/watch", params={"window": "-1h"}).status_code == 400
        wrong = http.put(px.admin + "/v1/watch/reference", json={"from": "x", "to": "y"},
                         headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert wrong.status_code == 400
        profile = http.put(px.admin + "/v1/watch/profile", json={"version": 99},
                           headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert profile.status_code == 400
        config = tmp_path / "st.toml"
        config.write_text(f'[redis]\nprefix = "{prefix}"\n[admin]\ntoken_env = "{token_env}"\n')
        capsys.readouterr()
        assert main(["watch", "-c", str(config), "--admin", px.admin]) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out and "watched requests" in out


def test_watched_and_mirrored_alike_and_every_sampled_request_accounted(
    model: str, redis_url: str, prefix: str, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from proxy_upstreams import Candidate

    token_env = f"ST_WATCH_{prefix.upper()}"
    keys = Keys(prefix)
    with serve_app(Candidate()) as cand_url:
        raw = {
            "proxy": {"primary": model, "mirror_paths": ["**"], "max_capture_bytes": 4096},
            "redis": {"prefix": prefix}, "admin": {"token_env": token_env},
            "watch": {"sample": 0.5, "gauges_every_s": 0},
            "candidates": [{"name": "v2", "url": cand_url, "sample": 0.3}],
        }  # fmt: skip
        settings = settings_from_mapping(raw, environ={})
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as http:
            for i in range(200):
                body = {"instances": [[float(i), "x" * (5000 if i % 20 == 0 else 1)]]}
                http.post(px.url + PATH, json=body, headers={"x-request-id": f"q{i}"})

            def value(outcome: str) -> float:
                return px.value("shadowtrial_watch_records_total", outcome=outcome)

            def settled() -> bool:
                done = sum(value(o) for o in ("recorded", "dropped", "too_large", "shed"))
                return value("sampled") == done and px.app.mirror.in_flight == 0

            wait_until(settled, what="every watched request accounted")
            watched = redis_client.xrange(keys.pairs(WATCH))
            mirrored = redis_client.xrange(keys.pairs("v2"))
            px.check_accounting("v2")
    ids = {PairRecord.from_fields(f).request_id for _, f in watched}
    mirrored_ids = {PairRecord.from_fields(f).request_id for _, f in mirrored}
    assert 60 < value("sampled") < 140 and value("too_large") >= 1
    assert (
        len(ids) == value("recorded")
        and mirrored_ids
        and mirrored_ids <= ids | {f"q{i}" for i in range(0, 200, 20)}
    )  # sticky and nested: a request mirrored at 0.3 is watched at 0.5 (unless too large)
    assert all(PairRecord.from_fields(f).candidate_body == b"" for _, f in watched)
