"""`shadowtrial replay` end to end: real model servers, real Redis, the real worker and report.

The recorded primary is the example model server's v1, the new candidate its v2 (same
weights, shifted bias: it flips the rows near the boundary), so the number of disagreeing
rows is known exactly from the model's own code.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from servers import free_port, serve_app

from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from common.records import OUTCOME_DEFERRED, PairRecord
from common.settings import Settings, load_settings
from proxy.replay import ReplayError, TokenBucket, check_jsonl, parse_line
from shadowtrial import cli
from shadowtrial.examples import model_server
from tests import pairs_factory as pf

TENANTS = ("acme", "globex", "initech")


# -- the pieces ------------------------------------------------------------------------------


class FakeTime:
    """A clock that only moves when the bucket sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _acquire(bucket: TokenBucket, times: int) -> None:
    async def go() -> None:
        for _ in range(times):
            await bucket.acquire()

    asyncio.run(go())


def test_token_bucket_paces_to_the_rate_after_the_burst() -> None:
    fake = FakeTime()
    bucket = TokenBucket(10.0, burst=3, clock=fake.clock, sleep=fake.sleep)
    _acquire(bucket, 8)
    assert fake.slept[:0] == [] and len(fake.slept) == 5  # 3 free, then one per 0.1 s
    assert sum(fake.slept) == pytest.approx(0.5)
    fake.now += 10.0  # idle: the bucket refills to its burst, no more
    before = len(fake.slept)
    _acquire(bucket, 4)
    assert len(fake.slept) - before == 1


def test_token_bucket_rate_zero_never_waits() -> None:
    fake = FakeTime()
    _acquire(TokenBucket(0.0, clock=fake.clock, sleep=fake.sleep), 100)
    assert fake.slept == []


def test_parse_line_json_and_text_bodies() -> None:
    rec = parse_line({"body": {"inputs": []}, "path": "v2/models/m/infer?x=1"}, 3)
    assert rec.body == b'{"inputs":[]}' and rec.headers == {"content-type": "application/json"}
    assert (rec.path, rec.query, rec.method, rec.request_id) == ("/v2/models/m/infer", "x=1",
                                                                  "POST", "replay-3")  # fmt: skip
    assert rec.primary_body is None
    text = parse_line(
        {"body": "a,b\n1,2", "headers": {"Content-Type": "text/csv", "Host": "x"},
         "primary_body": "ok", "primary_status": 503, "primary_ms": 4.5, "request_id": "r9"},
        1,
    )  # fmt: skip
    assert text.body == b"a,b\n1,2" and text.headers == {"content-type": "text/csv"}
    assert (text.primary_body, text.primary_status, text.primary_ms) == (b"ok", 503, 4.5)


@pytest.mark.parametrize(
    ("line", "problem"),
    [('{"path": "/x"}', 'line 2: expected an object with at least "body"'),
     ("not json", "line 2 is not JSON"),
     ('{"body": 1, "headers": {"a": 1}}', "line 2: headers must be an object of strings"),
     ('{"body": 1, "primary_body": 2, "primary_ms": -1}', "line 2: primary_ms must be")],
)  # fmt: skip
def test_bad_lines_are_named(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('# recorded yesterday\n{"body": 1}\n'.replace('{"body": 1}', line) + "\n")
    with pytest.raises(ReplayError, match=problem.replace("(", r"\(")):
        check_jsonl(path, None)


def test_comments_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('# header\n\n{"body": 1}\n  \n{"body": 2}\n')
    assert check_jsonl(path, None) == 2 and check_jsonl(path, 1) == 1


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[str, str]]:
    """(primary v1, candidate v2) base URLs of real model servers."""
    with (
        serve_app(model_server.create_app("v1")) as v1,
        serve_app(model_server.create_app("v2")) as v2,
    ):
        yield v1, v2


def _config(tmp_path: Path, redis_url: str, prefix: str, extra: str = "") -> Path:
    path = tmp_path / "shadowtrial.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n\n'
        '[outputs]\nprotocol = "oip-v2"\n\n'
        '[[slices]]\nname = "tenant"\nfrom = "header:x-tenant"\n' + extra
    )
    return path


def _requests(n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rows = 2 if i % 10 == 0 else 1
        data = [round(rng.uniform(-1.5, 1.5), 3) for _ in range(5 * rows)]
        body = {
            "inputs": [{"name": "features", "shape": [rows, 5], "datatype": "FP32", "data": data}]
        }
        out.append({"body": body, "tenant": TENANTS[i % 3], "rows": rows})
    return out


def _expected_disagreements(requests: list[dict]) -> int:
    flips = 0
    for req in requests:
        rows = model_server.parse_rows(req["body"])
        v1 = model_server.predict_rows(rows, model_server.BIAS["v1"])
        v2 = model_server.predict_rows(rows, model_server.BIAS["v2"])
        flips += sum(a[0] != b[0] for a, b in zip(v1, v2, strict=True))
    return flips


def _write_jsonl(path: Path, requests: list[dict], primary: str) -> None:
    """Half the lines carry the primary's recorded answer (fetched from the real v1)."""
    lines = []
    with httpx.Client() as client:
        for i, req in enumerate(requests):
            line = {
                "request_id": f"q{i}",
                "path": "/v2/models/model/infer",
                "body": req["body"],
                "headers": {"x-tenant": req["tenant"], "authorization": "Bearer s3cret"},
            }
            if i % 2 == 0:
                answer = client.post(primary + line["path"], json=req["body"])
                line |= {"primary_body": answer.json(), "primary_status": answer.status_code,
                         "primary_ms": 3.0 + i % 7}  # fmt: skip
            lines.append(orjson.dumps(line).decode())
    path.write_text("\n".join(lines) + "\n")


def _report(redis_url: str, settings: Settings, name: str) -> dict:
    client = redis.Redis.from_url(redis_url)
    try:
        assert pf.drain(Worker(client, settings)) > 0
        return build_report(client, Keys(settings.redis.prefix), settings, name, 3600)
    finally:
        client.close()


def test_replay_a_file_then_the_stream_it_made(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    models: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    primary, candidate = models
    requests = _requests(120)
    jsonl = tmp_path / "yesterday.jsonl"
    _write_jsonl(jsonl, requests, primary)
    cfg = _config(tmp_path, redis_url, prefix)
    code = cli.main(["replay", str(jsonl), "--candidate", "v2new", "--url", candidate,
                     "--primary", primary, "--rate", "0", "-c", str(cfg)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "replayed 120 requests to v2new: ok 120" in out and "wrote 120 pair records" in out

    settings = load_settings(cfg)
    report = _report(redis_url, settings, "v2new")
    rows = sum(r["rows"] for r in requests)
    assert report["pairs"] == 120 and report["agreement"]["n"] == rows
    assert report["agreement"]["disagree"] == _expected_disagreements(requests) > 0
    assert report["errors"]["candidate"] == 0 and report["errors"]["primary"] == 0
    tenants = {s["value"]: s["pairs"] for s in report["slices"] if s["slice"] == "tenant"}
    assert set(tenants) == set(TENANTS) and sum(tenants.values()) == rows
    assert report["latency"]["candidate"]["p50"] > 0

    client = redis.Redis.from_url(redis_url)
    stored = client.xrange(Keys(prefix).pairs("v2new"), count=1)[0][1]
    client.close()
    record = PairRecord.from_fields(stored)
    # the proxy's header capture: content-type and slice headers; never the secret
    assert record.headers == {"content-type": "application/json", "x-tenant": "acme"}

    code = cli.main(["replay", "--from-stream", "v2new", "--candidate", "v2again", "--url",
                     candidate, "--rate", "0", "-c", str(cfg)])  # fmt: skip
    assert code == 0
    again = _report(redis_url, settings, "v2again")
    assert again["pairs"] == 120
    assert again["agreement"]["disagree"] == report["agreement"]["disagree"]
    assert again["latency"]["primary"]["n"] == report["latency"]["primary"]["n"]


def test_a_candidate_that_refuses_connections_is_evidence(
    tmp_path: Path, redis_url: str, prefix: str, models: tuple[str, str]
) -> None:
    primary, _ = models
    requests = _requests(10)
    jsonl = tmp_path / "r.jsonl"
    _write_jsonl(jsonl, requests, primary)
    cfg = _config(tmp_path, redis_url, prefix)
    dead = f"http://127.0.0.1:{free_port()}"
    code = cli.main(["replay", str(jsonl), "--candidate", "down", "--url", dead,
                     "--primary", primary, "--rate", "0", "-c", str(cfg)])  # fmt: skip
    assert code == 0
    report = _report(redis_url, load_settings(cfg), "down")
    assert report["pairs"] == 10 and report["errors"]["candidate"] == 10
    assert report["errors"]["by_kind"] == {"error": 10}


def test_the_rate_limit_holds(
    tmp_path: Path, redis_url: str, prefix: str, models: tuple[str, str]
) -> None:
    primary, candidate = models
    jsonl = tmp_path / "r.jsonl"
    _write_jsonl(jsonl, _requests(30), primary)
    cfg = _config(tmp_path, redis_url, prefix)
    started = time.monotonic()
    code = cli.main(["replay", str(jsonl), "--candidate", "paced", "--url", candidate,
                     "--primary", primary, "--rate", "100", "-c", str(cfg)])  # fmt: skip
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed >= 0.19  # a burst of 10, then 20 more at 100/s


def test_lines_without_a_primary_answer_are_skipped_without_primary(
    tmp_path: Path, redis_url: str, prefix: str, models: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    primary, candidate = models
    jsonl = tmp_path / "r.jsonl"
    _write_jsonl(jsonl, _requests(6), primary)  # 3 with answers, 3 without
    cfg = _config(tmp_path, redis_url, prefix)
    code = cli.main(["replay", str(jsonl), "--candidate", "half", "--url", candidate,
                     "--rate", "0", "-c", str(cfg)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "skipped 3 without a recorded primary answer" in out and "wrote 3 pair" in out


# -- usage errors ------------------------------------------------------------------------------


def _replay(args: list[str]) -> int:
    return cli.main(["replay", *args])


def test_usage_errors_exit_2(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = _config(tmp_path, redis_url, prefix)
    good = tmp_path / "r.jsonl"
    good.write_text('{"body": {"inputs": []}, "primary_body": {}}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": 1}\n{"nobody": 1}\n')
    cases = {
        "missing.jsonl": [str(tmp_path / "missing.jsonl"), "--candidate", "x", "--url", "http://h"],
        "line 2": [str(bad), "--candidate", "x", "--url", "http://h"],
        "no URL for candidate 'ghost'": [str(good), "--candidate", "ghost"],
        "name the same stream": ["--from-stream", "a", "--candidate", "a", "--url", "http://h"],
        "holds no pairs": ["--from-stream", "empty", "--candidate", "b", "--url", "http://h"],
        "--rate must be": [str(good), "--candidate", "x", "--url", "http://h", "--rate", "-1"],
    }
    for problem, args in cases.items():
        assert _replay([*args, "-c", str(cfg)]) == 2, problem
        assert problem in capsys.readouterr().err

    unreachable = _config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", prefix)
    assert (
        _replay([str(good), "--candidate", "x", "--url", "http://h", "-c", str(unreachable)]) == 2
    )
    assert "Redis" in capsys.readouterr().err

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # no embedded server lives there
    monkeypatch.delenv("REDIS_URL", raising=False)
    nothing = tmp_path / "none.toml"
    nothing.write_text(f'[redis]\nprefix = "{prefix}"\n')
    assert _replay([str(good), "--candidate", "x", "--url", "http://h", "-c", str(nothing)]) == 2
    assert "no embedded Redis is running" in capsys.readouterr().err


# -- an ONNX candidate: the worker runs it ---------------------------------------------------


def test_an_onnx_candidate_is_deferred_to_the_worker(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    from fixtures.onnx_models import tiny_model

    model = tiny_model(tmp_path, "rowsum")  # Y = sum of each row's values
    rng = random.Random(5)
    lines = []
    for _ in range(40):
        row = [round(rng.uniform(0, 10), 2) for _ in range(3)]
        tensor = {"name": "X", "shape": [1, 3], "datatype": "FP32", "data": row}
        answer = {"outputs": [{"name": "Y", "shape": [1, 1], "datatype": "FP32",
                               "data": [sum(row)]}]}  # fmt: skip
        lines.append(orjson.dumps({"body": {"inputs": [tensor]}, "primary_body": answer}).decode())
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(lines))
    extra = f'\n[[candidates]]\nname = "rowsum"\nonnx = "{model}"\nrun = "worker"\n'
    cfg = _config(tmp_path, redis_url, prefix, extra)
    assert _replay([str(jsonl), "--candidate", "rowsum", "--rate", "0", "-c", str(cfg)]) == 0
    client = redis.Redis.from_url(redis_url)
    first = PairRecord.from_fields(client.xrange(Keys(prefix).pairs("rowsum"), count=1)[0][1])
    client.close()
    assert first.candidate_outcome == OUTCOME_DEFERRED and first.candidate_body == b""
    report = _report(redis_url, load_settings(cfg), "rowsum")
    assert report["records"]["deferred"] == 40 and report["errors"]["candidate"] == 0
    assert report["agreement"]["n"] == 40 and report["agreement"]["disagree"] == 0
    assert report["regression"]["n"] == 40
    assert report["regression"]["mean_abs_diff"] < 1e-5
