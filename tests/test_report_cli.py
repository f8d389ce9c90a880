"""`shadowtrial report NAME`: tables or JSON from the real admin API of a running proxy."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rich.console import Console
from servers import free_port

from shadowtrial import cli
from shadowtrial.render import render_report, slices
from tests.ui_trial import seed_trial, trial_settings


@pytest.fixture(scope="module")
def admin(redis_url: str) -> Iterator[str]:
    """The admin port of a proxy whose candidate v2 has a trial (BR flagged, a script tag)."""
    from tests.proxy_upstreams import running_proxy

    prefix = f"t{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)
    seed_trial(client, prefix, n=1500, hostile=True)
    try:
        with running_proxy(trial_settings(prefix), redis_url) as proxy:
            yield proxy.admin
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "shadowtrial.toml"
    path.write_text('[admin]\ntoken_env = "SHADOWTRIAL_TEST_UNSET_TOKEN"\n')
    return str(path)


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "220")  # rich sizes its tables to the terminal


def test_report_prints_readable_tables(
    admin: str, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", "v2", "--admin", admin, "-c", config]) == 0
    out = capsys.readouterr().out
    assert out.startswith("v2 ")
    assert "gate: FAIL" in out and "slice country=BR agrees" in out
    for title in ("Agreement", "Slices", "Discovered slices", "Confidence", "Latency",
                  "Errors", "Ground truth"):  # fmt: skip
        assert title in out, title
    assert "anytime-valid (CS)" in out and "McNemar" in out
    br = next(line for line in out.splitlines() if " BR " in line and "country" in line)
    # interval and the anytime-valid (e-BH) adjusted p-value: larger than a fixed-sample one
    assert "FLAGGED" in br and "%, " in br and re.search(r"│\s+0\.0\d+ │", br)
    assert "may check it at any moment" in out  # the gate says it may be read at any time
    assert "12 of " in out  # the most divergent slices; the rest are in --json


def test_report_json_is_the_api_answer(
    admin: str, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(["report", "v2", "--window", "2h", "--json", "--admin", admin, "-c", config]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["candidate"] == "v2" and report["pairs"] == 1500
    assert report["window"]["seconds"] == 7200
    assert report["gate"]["verdict"] == "fail"
    assert {"agreement", "flips", "confidence", "latency", "slices", "labels"} <= set(report)


def test_report_usage_and_connection_errors_exit_2(
    admin: str, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", "nope", "--admin", admin, "-c", config]) == 2
    assert "404" in capsys.readouterr().err
    down = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["report", "v2", "--admin", down, "-c", config]) == 2
    assert "cannot reach the admin API" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "v2", "--window", "soon", "--admin", admin, "-c", config])
    assert exc.value.code == 2
    assert "not a duration" in capsys.readouterr().err


def _report(value: str, flagged: bool) -> dict:
    row = {"slice": "country", "value": value, "pairs": 400, "agreement": 0.8,
           "ci_low": 0.76, "ci_high": 0.84, "delta_vs_overall": -0.15, "p_adj": 1e-9,
           "flagged": flagged}  # fmt: skip
    ok = {**row, "value": "FR", "agreement": 0.96, "delta_vs_overall": 0.01, "p_adj": 0.4,
          "flagged": False}  # fmt: skip
    return {"candidate": "v2", "agreement": {"rate": 0.95}, "slices": [ok, row]}


def _ansi(report: dict) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="standard", width=200)
    table = slices(report)
    assert table is not None
    console.print(table)
    return buffer.getvalue()


def test_flagged_slices_print_in_red_and_values_are_never_markup() -> None:
    text = _ansi(_report("[bold]BR[/bold]", flagged=True))
    flagged_line = next(line for line in text.splitlines() if "FLAGGED" in line)
    assert "\x1b[31m" in flagged_line  # red
    assert "[bold]BR[/bold]" in flagged_line  # the value as typed, not rich markup
    plain_line = next(line for line in text.splitlines() if "FR" in line)
    assert "\x1b[31m" not in plain_line
    assert text.index("FLAGGED") < text.index("FR")  # flagged first


def test_render_report_survives_an_empty_report() -> None:
    buffer = io.StringIO()
    render_report({"candidate": "new", "gate": {"verdict": "insufficient", "reasons": []}},
                  Console(file=buffer, width=120))  # fmt: skip
    out = buffer.getvalue()
    assert "gate: INSUFFICIENT" in out and "Agreement" in out and "—" in out


def test_the_dispatch_section_prints_and_survives_hostile_values() -> None:
    buffer = io.StringIO()
    section = {
        "queued": 12, "dispatched": 10, "overflow": 1, "expired": 1, "trimmed": 0, "bad": 0,
        "queue_depth": 0, "lag_s": 0.25,
        "candidate_latency": {"dispatcher": {"p50": 1.5, "p99": 7.0, "n": 10},
                              "proxy": {"p50": None, "p99": None, "n": 0}},
    }  # fmt: skip
    report = {"candidate": "new", "gate": {"verdict": "pass", "reasons": []}, "dispatch": section}
    render_report(report, Console(file=buffer, width=120))
    out = buffer.getvalue()
    assert "Dispatched (run = dispatcher)" in out and "250 ms" in out
    assert "called by the dispatcher (n 10)" in out and "1.5 ms / 7.0 ms" in out
    hostile = {"queued": "[red]x", "lag_s": float("nan"), "candidate_latency": ["nope"]}
    buffer = io.StringIO()
    render_report({**report, "dispatch": hostile}, Console(file=buffer, width=120))
    assert "Dispatched" in buffer.getvalue() and "[red]" not in buffer.getvalue()
    assert "Dispatched" not in _plain({**report, "dispatch": None})


def _plain(report: dict[str, object]) -> str:
    buffer = io.StringIO()
    render_report(report, Console(file=buffer, width=120))
    return buffer.getvalue()
