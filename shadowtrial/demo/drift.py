"""`shadowtrial demo --scenario drift`: the world changes under a model nobody touched.

Primary only, no candidate. The primary v1 (the default demo's logistic regression) is
trained on half of the Fair survey, and `shadowtrial profile` records that half as the
training profile. Live traffic replays the other half through the proxy with
`[watch] sample = 1`; half-way through, the world shifts:

- a new client release spells the survey answer `religious = "not"` as `"none"`, a
  category training never saw (training/serving skew);
- the population gets older: every `age` moves up by AGE_SHIFT years, mostly beyond the
  oldest age in training (out of range).

Nothing errors: the model answers every request. A background reader follows the live
watch document (analysis.watch_live, the same one `GET /v1/watch` and `/ui/watch` show)
against the profile and prints when each shifted feature is first flagged, and after how
many watched requests past the shift. No label is needed.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from common.errors import ShadowtrialError
from shadowtrial.demo import config
from shadowtrial.demo.run import START_TIMEOUT_S, Demo
from shadowtrial.demo.traffic import TrafficResult

AGE_SHIFT = 15.0
NEW_SPELLING = ("not", "none")  # (what training said, what the new client sends)
SHIFTED = ("religious", "age")
RATE = 80.0  # requests per second: the whole run in about a minute
WINDOW = "1h"  # the watch window: the whole run, before and after the shift
PAGE_WINDOW = "15m"  # the page's: the same requests, a timeline in steps of about 19 s
POLL_S = 0.25
FOLD_TIMEOUT_S = 30.0


def render(ports: config.Ports, redis_url: str, profile: Path) -> str:
    """The scenario's shadowtrial.toml: a primary, no candidate, every request watched."""
    from shadowtrial.demo.data import FEATURES

    dump = json.dumps
    lines = [
        "# Written by `shadowtrial demo --scenario drift`; every key is described in the README.",
        "[proxy]",
        f"listen = {dump(f'127.0.0.1:{ports.proxy}')}",
        f"admin_listen = {dump(f'127.0.0.1:{ports.admin}')}",
        f"primary = {dump(config.url(ports.primary))}",
        "",
        "[redis]",
        f"url = {dump(redis_url)}",
        'prefix = "demo"',
        "",
        "[outputs]",
        'protocol = "oip-v2"',
        "",
        "[worker]",
        "bucket_seconds = 1  # short buckets: the timeline has points",
        "block_ms = 100",
        "",
        "[watch]",
        "sample = 1.0  # every request: the demo's traffic is small",
        f"profile = {dump(str(profile))}",
        'reference = "profile"',
        "",
        "# The requests send [1, 1] tensors, so the watch derives `age[0]`, ...: named as in",
        "# the training data, the profile's features.",
    ]
    for name in FEATURES:
        lines += ["[[features]]", f"name = {dump(name)}", f"from = {dump(name + '[0]')}", ""]
    return "\n".join(lines)


@dataclass
class Detection:
    """What the background reader saw: when each feature was first flagged."""

    before: int = 0  # requests sent before the shift
    shift_at: float = 0.0  # wall time the first shifted request left
    flagged: dict[str, dict[str, Any]] = field(default_factory=dict)
    early: set[str] = field(default_factory=set)  # flagged before the shift: false alarms
    last: dict[str, Any] = field(default_factory=dict)
    problem: str = ""


class DriftDemo(Demo):
    """The default demo's life cycle: one model, the watch as its story."""

    evidence_names: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profile_path = self.folder / "profile.json"
        self.detection = Detection()
        self._stop_reading = threading.Event()
        self._settings: Any = None

    def write_config(self) -> None:
        assert self.redis is not None
        text = render(self.ports, self.redis.url, self.profile_path)
        self.config_path.write_text(text, encoding="utf-8")

    def start_workers(self) -> None:
        """After the profile exists: the workers read it at start (the skew slice)."""

    def train(self) -> dict[str, Any]:
        from shadowtrial.demo import data, models

        started = time.monotonic()
        with self.console.status("training v1 on the Fair survey, profiling its training data"):
            rows = data.load_fair()
            train_rows, held_out = data.split(rows, self.options.seed)
            estimator = models.train(train_rows, "v1", self.options.seed)
            folder = self.folder / "models"
            folder.mkdir(parents=True, exist_ok=True)
            path = models.export(estimator, folder / "v1.onnx")
            training_csv = write_training_csv(train_rows, self.folder / "training.csv")
            self._profile(training_csv)
        self.console.print(
            f"trained v1 (logistic regression) on {len(train_rows):,} rows and profiled them"
            f" with `shadowtrial profile training.csv -o profile.json` in"
            f" {time.monotonic() - started:.1f} s"
        )
        super().start_workers()
        return {"path": path, "held_out": held_out}

    def _profile(self, training_csv: Path) -> None:
        argv = [sys.executable, "-m", "shadowtrial", "profile", str(training_csv),
                "-o", str(self.profile_path)]  # fmt: skip
        done = subprocess.run(argv, env=self.supervisor.env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            raise ShadowtrialError(f"shadowtrial profile failed: {done.stderr[-1000:]}")

    def start_servers(self, trained: dict[str, Any]) -> None:
        argv = [
            sys.executable, "-m", "shadowtrial.examples.model_server", "--model",
            str(trained["path"]), "--port", str(self.ports.primary), "--version", "v1",
            "--name", config.MODEL_NAME,
        ]  # fmt: skip
        self.supervisor.start("v1", argv)
        self.supervisor.start("proxy", [*self._shadowtrial("serve"), "--log-level", "warning"])

    def wait_ready(self) -> None:
        health = f"{config.url(self.ports.primary)}/v2/health/ready"
        self.supervisor.wait_until(lambda: _ok(health), health, START_TIMEOUT_S)
        ready = f"{self.admin_url}/readyz"
        self.supervisor.wait_until(lambda: _ok(ready), "the proxy", START_TIMEOUT_S)
        self.supervisor.wait_until(self._workers_healthy, "the workers", START_TIMEOUT_S)
        self.console.print(
            f"started: primary v1 :{self.ports.primary}, proxy :{self.ports.proxy}"
            f" (admin :{self.ports.admin}), 2 workers; no candidate, every request watched"
        )

    def send_traffic(self) -> TrafficResult:
        from shadowtrial.demo import data, traffic

        held_out = data.split(data.load_fair(), self.options.seed)[1]
        n = self.options.requests
        before = n // 2
        planned = traffic.plan(held_out, n, self.options.seed, 0.0)
        shifted = [shift(p, traffic) if i >= before else p for i, p in enumerate(planned)]
        self.detection.before = before
        reader = threading.Thread(target=self._read_watch, daemon=True)
        reader.start()
        url = self.proxy_url + config.infer_path()
        feedback = self.admin_url + "/v1/feedback"
        first = asyncio.run(
            traffic.send(shifted[:before], url, feedback, self.token, self.console, RATE)
        )
        self.detection.shift_at = time.time()
        self.console.print(
            f"[bold]the world shifts now[/]: after {before:,} requests, the new client sends"
            f' religious = "{NEW_SPELLING[1]}" for "{NEW_SPELLING[0]}" and every age'
            f" +{AGE_SHIFT:g} years"
        )
        second = asyncio.run(
            traffic.send(shifted[before:], url, feedback, self.token, self.console, RATE)
        )
        result = _sum(first, second)
        self.console.print(
            f"sent {result.sent:,} requests, {result.ok:,} answered by v1, {result.failed:,} failed"
        )
        if result.ok == 0:
            raise ShadowtrialError(f"no request got an answer ({result.first_error})")
        return result

    def wait_for_evidence(self, answered: int) -> None:
        """Until the workers have folded every watched request (or FOLD_TIMEOUT_S)."""
        deadline = time.monotonic() + FOLD_TIMEOUT_S
        while time.monotonic() < deadline:
            self.supervisor.check()
            if int(self.detection.last.get("requests") or 0) >= answered and all(
                f in self.detection.flagged for f in SHIFTED
            ):
                break
            time.sleep(POLL_S)
        self._stop_reading.set()
        self._read_once()  # the final document

    def print_report(self, trained: dict[str, Any], result: Any) -> None:
        doc = self.detection.last
        (self.folder / "watch.json").write_text(json.dumps(doc, indent=2), "utf-8")
        (self.folder / "detection.json").write_text(
            json.dumps({"before": self.detection.before, "flagged": self.detection.flagged,
                        "before_the_shift": sorted(self.detection.early)}, indent=2), "utf-8",
        )  # fmt: skip
        for line in detection_lines(self.detection, doc):
            self.console.print(line)
        self.console.print(f"web page:    {self.admin_url}/ui/watch?window={PAGE_WINDOW}")
        self.console.print(f"watch JSON:  {self.admin_url}/v1/watch?window={WINDOW}")
        self.console.print(f"admin token: {self.token}")

    # -- the watch, read in the background --

    def _read_watch(self) -> None:
        while not self._stop_reading.is_set():
            try:
                self._read_once()
            except Exception as exc:  # the reader must not die on a transient error
                self.detection.problem = f"{type(exc).__name__}: {exc}"
            self._stop_reading.wait(POLL_S)

    def _read_once(self) -> None:
        from analysis.watch_live import watch_document
        from common.settings import load_settings

        if self._settings is None:
            self._settings = load_settings(self.config_path, environ={})
        client = self._bytes_redis()
        try:
            doc = watch_document(client, self._settings, WINDOW, "profile")
        finally:
            client.close()
        self.detection.last = doc
        past = int(doc.get("requests") or 0) - self.detection.before
        for name in doc.get("flagged") or []:
            if not self.detection.shift_at:
                self.detection.early.add(str(name))
            if name in self.detection.flagged or not self.detection.shift_at:
                continue
            row = next((f for f in doc["features"] if f.get("feature") == name), {})
            self.detection.flagged[name] = {
                "after_requests": max(past, 0),
                "seconds": round(time.time() - self.detection.shift_at, 1),
                "drift": row.get("drift"), "p_adj": row.get("p_adj"),
                "unseen_rate": row.get("unseen_rate"),
                "out_of_range_rate": row.get("out_of_range_rate"),
            }  # fmt: skip

    def _bytes_redis(self) -> redis.Redis:
        assert self.redis is not None
        return redis.Redis.from_url(self.redis.url)

    def stop(self) -> None:
        self._stop_reading.set()
        super().stop()


def write_training_csv(rows: Any, path: Path) -> Path:
    """The training rows as the CSV `shadowtrial profile` reads (named columns)."""
    from shadowtrial.demo.data import FEATURES

    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(FEATURES)
        for i in range(len(rows)):
            row = rows.row(i)
            out.writerow([row[k] for k in FEATURES])
    return path


def shift(planned: Any, traffic: Any) -> Any:
    """The same request as the new client sends it: the new spelling, an older person."""
    doc = json.loads(planned.body)
    for tensor in doc["inputs"]:
        if tensor["name"] == "religious" and tensor["data"] == [NEW_SPELLING[0]]:
            tensor["data"] = [NEW_SPELLING[1]]
        elif tensor["name"] == "age":
            tensor["data"] = [float(tensor["data"][0]) + AGE_SHIFT]
    body = json.dumps(doc).encode()
    return traffic.Planned(planned.request_id, planned.tenant, body, planned.label)


def _sum(a: TrafficResult, b: TrafficResult) -> TrafficResult:
    return TrafficResult(
        sent=a.sent + b.sent, ok=a.ok + b.ok, failed=a.failed + b.failed, labels=0,
        seconds=a.seconds + b.seconds, first_error=a.first_error or b.first_error,
    )  # fmt: skip


def _ok(url: str) -> bool:
    from shadowtrial.demo.processes import http_ok

    return http_ok(url)


def detection_lines(detection: Detection, doc: dict[str, Any]) -> list[str]:
    """What the demo prints at the end: each shifted feature's first flag."""
    lines = [
        f"[red]flagged before the shift: {', '.join(sorted(detection.early))}[/]"
        if detection.early
        else f"before the shift ({detection.before:,} requests): nothing flagged"
    ]
    for name in SHIFTED:
        seen = detection.flagged.get(name)
        if seen is None:
            lines.append(f"[red]the watch did not flag {name}[/]")
            continue
        rates = (
            f"{100 * seen['unseen_rate']:.0f}% unseen values" if seen.get("unseen_rate")
            else f"{100 * (seen.get('out_of_range_rate') or 0):.0f}% out of the training range"
        )  # fmt: skip
        lines.append(
            f"[bold]the watch flagged {name}[/] {seen['after_requests']:,} watched requests past"
            f" the shift ({seen['seconds']:.1f} s later): distance {seen['drift']:.2f},"
            f" p (adj.) {seen['p_adj']:.1e}, {rates} in the window"
        )
    outputs = doc.get("outputs") or {}
    conf, ref = outputs.get("mean_confidence"), outputs.get("mean_confidence_reference")
    if conf is not None:
        lines.append(
            f"the primary's mean confidence: {100 * conf:.1f}% now"
            + (f" against {100 * ref:.1f}% in the reference" if ref is not None else "")
        )
    others = [f for f in doc.get("flagged") or [] if f not in SHIFTED]
    lines.append(
        f"{len(doc.get('features') or [])} features watched, flagged: "
        + (", ".join(doc.get("flagged") or []) or "none")
        + (f" (also {', '.join(others)})" if others else "")
    )
    return lines
