"""`shadowtrial demo --scenario canary` end to end as a real process (about 25 s here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common.settings import parse_instant
from shadowtrial.demo.processes import pid_alive

REPO = Path(__file__).resolve().parents[1]


def test_the_canary_scenario_steps_up_then_rolls_back_the_planted_regression(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"TMPDIR": str(tmp_path), "COLUMNS": "220"})
    keep = tmp_path / "keep"
    argv = [sys.executable, "-m", "shadowtrial", "demo", "--scenario", "canary", "--no-wait"]
    done = subprocess.run(
        [*argv, "--requests", "400", "--keep", str(keep)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    decisions = json.loads((keep / "decisions.json").read_text())[::-1]  # oldest first
    steps = [(d["actor"], d["action"], d.get("weight_after"), d["verdict"]) for d in decisions]
    assert steps[0] == ("admin", "canary", "0.1", "pass")  # gate first: not forced
    assert ("automation", "canary", "0.3", "pass") in steps  # a step on its own evidence
    assert steps[-1] == ("automation", "canary", "0", "fail")  # the rollback
    assert [d["forced"] for d in decisions[:-1]] == [False] * (len(decisions) - 1)
    # the rollback came with the first failing verdict (within one 1 s check interval)
    changes = json.loads((keep / "gate_changes.json").read_text())
    failed = next(c for c in changes if c["to"] == "fail")
    lag = (
        parse_instant(decisions[-1]["time"]).timestamp() - parse_instant(failed["time"]).timestamp()
    )
    assert 0 <= lag <= 1.0, (failed, decisions[-1])
    assert " 0 failed; answered " in out  # every client answered, whoever served it
    assert "regression planted" in out and "/ui/candidates/v2" in out
    assert not [p for p in json.loads((keep / "pids.json").read_text()).values() if pid_alive(p)]
