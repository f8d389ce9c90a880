"""`shadowtrial demo --scenario drift` end to end as a real process (about 30 s here).

Seeded (the split, the model, the traffic and the shift), 1,200 requests: nothing is
flagged on the 600 before the shift; after it the watch flags the new category and the
older population within a few hundred watched requests, with no label, and `/ui/watch`
on the running demo shows both flagged.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shadowtrial.demo.processes import pid_alive

REPO = Path(__file__).resolve().parents[1]
PAGE = re.compile(r"web page:\s+(http://\S+)")


def test_the_drift_scenario_flags_the_shift_and_the_page_shows_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"TMPDIR": str(tmp_path), "COLUMNS": "220", "PYTHONUNBUFFERED": "1"})
    keep = tmp_path / "keep"
    argv = [sys.executable, "-m", "shadowtrial", "demo", "--scenario", "drift",
            "--requests", "1200", "--duration", "120", "--keep", str(keep)]  # fmt: skip
    demo = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    page = None
    try:
        deadline = time.monotonic() + 150
        assert demo.stdout is not None
        while page is None and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if found := PAGE.search(line):
                page = found.group(1)
        assert page is not None, "".join(lines)[-4000:]
        html = httpx.get(page, timeout=30).text
    finally:
        demo.send_signal(signal.SIGTERM)  # ends the serving part: cleanup runs
        rest, _ = demo.communicate(timeout=60)
    out = "".join(lines) + rest
    assert demo.returncode == 0, out[-4000:]
    detection = json.loads((keep / "detection.json").read_text())
    assert detection["before"] == 600
    assert detection["before_the_shift"] == []  # no false alarm on unshifted traffic
    assert set(detection["flagged"]) == {"religious", "age"}
    for name, seen in detection["flagged"].items():
        assert 0 < seen["after_requests"] <= 400, (name, seen)
    assert detection["flagged"]["religious"]["unseen_rate"] > 0
    assert detection["flagged"]["age"]["out_of_range_rate"] > 0
    watch = json.loads((keep / "watch.json").read_text())
    assert set(watch["flagged"]) == {"religious", "age"} and watch["requests"] == 1200
    religious = next(f for f in watch["features"] if f["feature"] == "religious")
    assert "none" in religious["first_seen"]
    # the page of the running demo shows both flagged
    flagged = re.findall(r'<tr class="flagged">.*?</tr>', html, re.S)
    assert sorted(re.search(r"<b>(.*?)</b>", r).group(1) for r in flagged) == ["age", "religious"]
    assert "the watch flagged religious" in out and "the watch flagged age" in out
    assert not [p for p in json.loads((keep / "pids.json").read_text()).values() if pid_alive(p)]
