"""`shadowtrial demo` end to end as a real process: the story, the verdicts, the cleanup.

Two runs (module fixtures, about 30 s each here): the flawed candidate with --keep (its
reports, config and pids.json are inspected), and the good candidate in a temporary
folder (which must be gone afterwards). Plus fast checks of the pieces the runs rely on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from servers import serve_app

from common.settings import load_settings
from shadowtrial.demo import config, data, traffic
from shadowtrial.demo.processes import pid_alive
from shadowtrial.examples import model_server

REPO = Path(__file__).resolve().parents[1]
CONFIGURED = ("religious", "occupation", "tenant")


@dataclass(frozen=True)
class DemoRun:
    """One finished `shadowtrial demo --no-wait` process."""

    code: int
    out: str
    tmpdir: Path
    keep: Path | None

    def report(self, name: str = config.CANDIDATE) -> dict[str, Any]:
        assert self.keep is not None
        return json.loads((self.keep / f"report-{name}.json").read_text())

    def pids(self) -> dict[str, int]:
        if self.keep is not None:
            return json.loads((self.keep / "pids.json").read_text())
        found = re.search(r"stopped (\d+) processes \(pids ([\d, ]+)\)", self.out)
        assert found, self.out[-3000:]
        pids = [int(p) for p in found.group(2).split(",")]
        assert len(pids) == int(found.group(1))
        return {str(i): pid for i, pid in enumerate(pids)}

    def ports(self) -> list[int]:
        line = next(ln for ln in self.out.splitlines() if ln.startswith("started in"))
        return [int(p) for p in re.findall(r":(\d{2,5})\b", line)]


def _run(tmp: Path, *args: str) -> DemoRun:
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"TMPDIR": str(tmpdir), "COLUMNS": "220", "REDIS_URL": "redis://127.0.0.1:9/0"})
    argv = [sys.executable, "-m", "shadowtrial", "demo", "--no-wait", *args]
    done = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    keep = Path(args[args.index("--keep") + 1]) if "--keep" in args else None
    return DemoRun(done.returncode, done.stdout + done.stderr, tmpdir, keep)


@pytest.fixture(scope="module")
def flawed(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    tmp = tmp_path_factory.mktemp("demo-flawed")
    run = _run(tmp, "--keep", str(tmp / "keep"))
    assert run.code == 0, run.out[-4000:]
    return run


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    run = _run(tmp_path_factory.mktemp("demo-good"), "--candidate", "good")
    assert run.code == 0, run.out[-4000:]
    return run


def _row(report: dict[str, Any], feature: str, value: str) -> dict[str, Any]:
    return next(r for r in report["slices"] if (r["slice"], r["value"]) == (feature, value))


def _rule(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in report["gate"]["rules"] if r["rule"] == name)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- the flawed candidate ------------------------------------------------------------------


@pytest.mark.slow
def test_first_line_says_redis_is_embedded(flawed: DemoRun) -> None:
    first = flawed.out.splitlines()[0]
    # The run's REDIS_URL points where nothing listens: the demo ran on its own Redis.
    assert first.startswith("Redis is embedded"), first


@pytest.mark.slow
def test_flawed_slice_is_flagged_and_the_gate_fails(flawed: DemoRun) -> None:
    report = flawed.report()
    row = _row(report, "religious", "not")
    drop = row["complement_agreement"] - row["agreement"]
    assert row["flagged"] and row["p_adj"] < 1e-6
    assert drop >= config.GATE["max_slice_drop"], row
    assert report["gate"]["verdict"] == "fail"
    assert _rule(report, "slices")["outcome"] == "fail"
    # Aggregate evidence looks fine: agreement within policy, more accurate on labels.
    assert _rule(report, "agreement")["outcome"] == "pass"
    assert report["labels"]["n"] > 1000
    assert report["labels"]["candidate_accuracy"] > report["labels"]["primary_accuracy"]
    assert _rule(report, "labels")["outcome"] == "pass"
    # No other configured slice is flagged: the skew hits exactly one answer.
    others = [r for r in report["slices"] if r["slice"] in CONFIGURED and r["flagged"]]
    assert others == [row]
    # The same model run by onnxruntime inside the proxy tells the same story.
    twin = flawed.report(config.ONNX_CANDIDATE)
    assert _row(twin, "religious", "not")["flagged"]
    assert twin["gate"]["verdict"] == "fail"
    assert "gate: FAIL" in flawed.out


@pytest.mark.slow
def test_flawed_gate_reason_names_the_slice(flawed: DemoRun) -> None:
    assert "religious=not" in _rule(flawed.report(), "slices")["detail"]


@pytest.mark.slow
def test_flawed_leaves_nothing_running(flawed: DemoRun) -> None:
    pids = flawed.pids()
    assert {"redis", "proxy", "worker-1", "worker-2", "v1", "v1-replica", "v2"} <= set(pids)
    assert [n for n, p in pids.items() if pid_alive(p)] == []
    settings = load_settings(flawed.keep / "shadowtrial.toml", environ={})
    listens = [settings.proxy.listen, settings.proxy.admin_listen]
    ports = [int(a.rsplit(":", 1)[1]) for a in listens] + flawed.ports()
    assert [p for p in ports if _listening(p)] == []
    assert f"stopped {len(pids)} processes" in flawed.out
    # --keep: everything went into the kept folder, nothing into the temporary one.
    assert list(flawed.tmpdir.iterdir()) == []


# -- the good candidate --------------------------------------------------------------------


@pytest.mark.slow
def test_good_changes_no_configured_slice_beyond_policy(good: DemoRun) -> None:
    flagged = [ln for ln in good.out.splitlines() if "FLAGGED" in ln]
    assert not [ln for ln in flagged if any(f" {name} " in ln for name in CONFIGURED)], flagged
    assert re.search(r"pass\s+labels on [\d,]+ labelled pairs", good.out)


@pytest.mark.slow
def test_good_passes_the_gate(good: DemoRun) -> None:
    assert "gate: PASS" in good.out


@pytest.mark.slow
def test_good_leaves_nothing_running_and_no_files(good: DemoRun) -> None:
    pids = good.pids()
    assert len(pids) == 7
    assert [p for p in pids.values() if pid_alive(p)] == []
    assert [p for p in good.ports() if _listening(p)] == []
    assert list(good.tmpdir.iterdir()) == []  # the demo's temporary folder is gone


@pytest.mark.slow
def test_ctrl_c_while_serving_stops_everything(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    argv = [sys.executable, "-m", "shadowtrial", "demo", "--requests", "300", "--keep", str(keep)]
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "serving until Ctrl-C" not in log.read_text(errors="replace"):
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        pids = json.loads((keep / "pids.json").read_text())
        assert all(pid_alive(p) for p in pids.values())
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
    assert [n for n, p in pids.items() if pid_alive(p)] == []
    assert "interrupted: stopping everything" in log.read_text()


# -- the pieces, fast -------------------------------------------------------------------------


def test_generated_config_is_valid(tmp_path: Path) -> None:
    ports = config.Ports(8001, 8002, 8003, 8080, 9901)
    path = config.write(tmp_path, ports, "unix:///tmp/x/redis.sock", tmp_path / "v2.onnx", 3000)
    settings = load_settings(path, environ={})
    assert [c.name for c in settings.candidates] == ["v2", "v2-onnx", "v1-replica"]
    assert settings.candidate("v1-replica").role == "secondary"
    assert settings.candidate("v2-onnx").run == "proxy"
    assert [s.name for s in settings.slices] == list(CONFIGURED)
    assert settings.gate.max_slice_drop == config.GATE["max_slice_drop"]
    assert settings.gate.min_pairs == 1000
    assert config.min_pairs(300) == 150


def test_fair_survey_loads_offline() -> None:
    rows = data.load_fair()
    assert len(rows) == 6366
    assert set(rows.columns["religious"]) == set(data.RELIGIOUS)
    assert set(rows.labels) == set(data.CLASSES)
    train, held_out = data.split(rows, 3)
    assert (len(train), len(held_out)) == (3183, 3183)
    assert data.split(rows, 3)[1].row(0) == held_out.row(0)  # seeded: the same every run


def test_model_server_answers_oip_v2(flawed: DemoRun) -> None:
    import onnxruntime as ort

    path = flawed.keep / "models" / "v1.onnx"  # the primary the flawed run trained
    app = model_server.create_app(model_server.load_model(str(path), "v1"), config.MODEL_NAME)
    held_out = data.split(data.load_fair(), 3)[1]
    planned = traffic.plan(held_out, 5, seed=1, label_share=1.0)
    with serve_app(app) as base:
        url = f"{base}/v2/models/{config.MODEL_NAME}/infer"
        answers = [httpx.post(url, content=p.body).json() for p in planned]
        bad = httpx.post(url, content=b'{"inputs": [{"name": "age"}]}')
        unknown = httpx.post(f"{base}/v2/models/other/infer", content=planned[0].body)
        ready = httpx.get(f"{base}/v2/health/ready")
    rows = held_out.take(np.arange(5))
    feeds = {
        k: v.reshape(-1, 1).astype(object if k in data.CATEGORICAL else np.float32)
        for k, v in rows.columns.items()
    }
    labels, probs = ort.InferenceSession(str(path)).run(None, feeds)
    assert [a["outputs"][0]["data"][0] for a in answers] == labels.tolist()
    served = [a["outputs"][1]["data"] for a in answers]
    assert np.allclose(served, probs, atol=1e-6)
    first = answers[0]
    assert first["id"] == planned[0].request_id and first["model_version"] == "v1"
    assert "parameters" not in first  # not marked as shadowtrial's own ONNX answer
    assert first["outputs"][1]["parameters"]["classes"] == list(data.CLASSES)
    assert bad.status_code == 400 and unknown.status_code == 404 and ready.status_code == 200


def test_generated_config_with_dispatch_runs_the_http_candidate_in_a_dispatcher(
    tmp_path: Path,
) -> None:
    ports = config.Ports(8001, 8002, 8003, 8080, 9901)
    onnx = tmp_path / "v2.onnx"
    path = config.write(tmp_path, ports, "unix:///tmp/x/redis.sock", onnx, 3000, dispatch=True)
    settings = load_settings(path, environ={})
    assert settings.candidate("v2").run == "dispatcher"
    assert settings.candidate("v1-replica").run != "dispatcher"  # the noise floor stays put
