"""The failure catalog end to end: real model servers, real Redis, the real worker's
judgement. A trial's divergent pairs are exported, and replaying the catalog against the
same candidate reproduces exactly the same disagreements, while the primary passes it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from analysis.catalog import Filters, in_slice, parse_slice
from analysis.summaries import PairEvidence
from shadowtrial import cli
from tests.test_replay import _config, _expected_disagreements, _requests, _write_jsonl, models

__all__ = ["models"]  # the module-scoped model servers of test_replay


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def test_exported_divergent_cases_reproduce_their_disagreements(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    models: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    primary, candidate = models
    requests = _requests(60, seed=5)
    jsonl = tmp_path / "traffic.jsonl"
    _write_jsonl(jsonl, requests, primary)
    cfg = str(_config(tmp_path, redis_url, prefix))
    assert cli.main(["replay", str(jsonl), "--candidate", "v2", "--url", candidate,
                     "--primary", primary, "--rate", "0", "-c", cfg]) == 0  # fmt: skip
    cases = tmp_path / "cases.jsonl"
    assert cli.main(["export", "v2", "--divergent", "-o", str(cases), "-c", cfg]) == 0
    lines = _lines(cases)
    disagreeing = _expected_disagreements(requests)
    assert lines and sum(x["catalog"]["disagreeing"] for x in lines) == disagreeing
    assert all(x["catalog"]["why"] == ["divergent"] and "primary_body" in x for x in lines)
    assert all("authorization" not in x["headers"] for x in lines)  # never the secret
    capsys.readouterr()

    code = cli.main(["replay", str(cases), "--candidate", "v2again", "--url", candidate,
                     "--rate", "0", "--check", "-c", cfg])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert f"passes 0 of {len(lines)} cases; {disagreeing} of" in out
    assert f"still fails: {lines[0]['request_id']}" in out

    code = cli.main(["replay", str(cases), "--candidate", "v1again", "--url", primary,
                     "--rate", "0", "--check", "-c", cfg])  # fmt: skip
    assert code == 0  # the primary gives the expected answers
    assert f"passes {len(lines)} of {len(lines)} cases; 0 of" in capsys.readouterr().out

    acme = tmp_path / "acme.jsonl"
    assert cli.main(["export", "v2", "--slice", "tenant=acme", "-o", str(acme), "-c", cfg]) == 0
    assert len(_lines(acme)) == sum(r["tenant"] == "acme" for r in requests)


def test_binary_bodies_round_trip_and_bad_filters_are_named(tmp_path: Path) -> None:
    from analysis.catalog import _body
    from proxy.replay import parse_line

    raw = bytes(range(256))
    line = {**_body("body", raw), **_body("primary_body", b"\xff\x00")}
    rec = parse_line(line, 1)
    assert rec.body == raw and rec.primary_body == b"\xff\x00"
    with pytest.raises(ValueError, match="FEATURE=VALUE"):
        parse_slice("tenant")
    assert parse_slice("tenant=a=b") == ("tenant", "a=b")
    failed = PairEvidence("r", 0, 1.0, None, primary_failure="primary")
    assert Filters(divergent=True).keep(failed) == [] and not in_slice(failed, "tenant", "a")
