"""`shadowtrial demo --scenario canary`: shadow, canary plan, a planted regression, rollback.

The same life cycle as the default demo with a tiny threshold model
(shadowtrial.demo.canary_server) as primary and candidate. Live traffic from 500 users
(`proxy.sample_by = "header:X-User-Id"`) runs in the background the whole time:

1. the shadow: the candidate answers like the primary, so the gate passes;
2. a canary plan through the admin API (gate first, not forced): 10% -> 30% -> 60% -> 100%,
   each step at least 3 s and 100 pairs of its own;
3. at the 30% step the candidate regresses (wrong on every `high` answer);
4. the gate automation, judging every second, sets the weight back to 0 at the first
   check that fails; every answer stays 200, served by the primary when the candidate
   cannot answer.

Every step and the rollback are in the audit log (printed, and saved as decisions.json)
and on the candidate's web page.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from common.errors import ShadowtrialError
from shadowtrial.demo import config
from shadowtrial.demo.canary_server import INFER, REGRESS
from shadowtrial.demo.processes import Supervisor, child_env, http_ok, pid_alive
from shadowtrial.demo.run import START_TIMEOUT_S, Demo
from shadowtrial.demo.traffic import TrafficResult

CANDIDATE = "v2"
USERS = 500
PLAN = {"steps": [0.1, 0.3, 0.6, 1.0], "step_s": 3, "min_pairs": 100}
REGRESS_AT = 0.3  # the step at which the candidate goes wrong
CHECK_INTERVAL_S = 1.0
STORY_TIMEOUT_S = 120.0
GATE = {
    "min_pairs": 100,
    "min_agreement": 0.9,
    "max_p99_ratio": 0,  # latency not judged: the demo shares one machine's cores
    "window": "10s",  # the gate judges the last 10 s: what the canary does now
    "check_interval_s": CHECK_INTERVAL_S,
}


def render(ports: config.Ports, redis_url: str) -> str:
    """The scenario's shadowtrial.toml."""
    dump = json.dumps
    lines = [
        "# Written by `shadowtrial demo --scenario canary`; every key is described in the README.",
        "[proxy]",
        f"listen = {dump(f'127.0.0.1:{ports.proxy}')}",
        f"admin_listen = {dump(f'127.0.0.1:{ports.admin}')}",
        f"primary = {dump(config.url(ports.primary))}",
        'sample_by = "header:X-User-Id"  # a user keeps the same model on every replica',
        "",
        "[redis]",
        f"url = {dump(redis_url)}",
        'prefix = "demo"',
        "",
        "[outputs]",
        'protocol = "oip-v2"',
        "",
        "[worker]",
        "bucket_seconds = 1  # a canary step's own evidence starts at the next bucket",
        "block_ms = 100",
        "",
        "[gate]",
        *(f"{key} = {dump(value)}" for key, value in GATE.items()),
        "",
        "[[candidates]]",
        f'name = "{CANDIDATE}"',
        f"url = {dump(config.url(ports.candidate))}",
        "",
    ]
    return "\n".join(lines)


class Traffic:
    """Users' requests in the background until stopped; counts who answered."""

    def __init__(self, url: str, seed: int, threads: int = 2) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.served: Counter[str] = Counter()
        self.result = TrafficResult()
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> TrafficResult:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=15)
        self.result.seconds = time.monotonic() - self.started
        return self.result

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopping.is_set():
                with self.lock:
                    user, value = self.rng.randrange(USERS), self.rng.random()
                self._one(client, f"user-{user}", value)

    def _one(self, client: httpx.Client, user: str, value: float) -> None:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [value]}]}
        by, error = "", ""
        try:
            answer = client.post(self.url, json=body, headers={"x-user-id": user})
            by = answer.headers.get("x-shadowtrial-served-by", "?")
            if answer.status_code != 200:
                error = f"HTTP {answer.status_code}: {answer.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.result.sent += 1
            if not error:
                self.result.ok += 1
                self.served[by] += 1
            else:
                self.result.failed += 1
                self.result.first_error = self.result.first_error or error


class CanaryDemo(Demo):
    """The default demo's life cycle, with a canary plan and a rollback as its story."""

    evidence_names = (CANDIDATE,)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pythonpath = Path(sys.modules["shadowtrial"].__file__ or "").resolve().parent.parent
        extra = {"SHADOWTRIAL_ADMIN_TOKEN": self.token, "TMPDIR": str(self.folder / "tmp")}
        self.supervisor = Supervisor(self.folder, child_env(extra, pythonpath))
        self.traffic: Traffic | None = None
        self._last = ""

    def write_config(self) -> None:
        assert self.redis is not None
        self.config_path.write_text(render(self.ports, self.redis.url), encoding="utf-8")

    def train(self) -> dict[str, Any]:
        self.console.print("models: a threshold (high when x >= 0.5), nothing to train")
        return {}

    def start_servers(self, trained: dict[str, Any]) -> None:
        for name, port in (("v1", self.ports.primary), (CANDIDATE, self.ports.candidate)):
            argv = [sys.executable, "-m", "shadowtrial.demo.canary_server", "--port", str(port)]
            self.supervisor.start(name, argv)
        self.supervisor.start("proxy", [*self._shadowtrial("serve"), "--log-level", "warning"])

    def wait_ready(self) -> None:
        for port in (self.ports.primary, self.ports.candidate):
            health = f"{config.url(port)}/v2/health/ready"
            self.supervisor.wait_until(lambda h=health: http_ok(h), health, START_TIMEOUT_S)
        ready = f"{self.admin_url}/readyz"
        self.supervisor.wait_until(lambda: http_ok(ready), "the proxy", START_TIMEOUT_S)
        self.supervisor.wait_until(self._workers_healthy, "the workers", START_TIMEOUT_S)
        self.console.print(
            f"started: primary v1 :{self.ports.primary}, candidate {CANDIDATE}"
            f" :{self.ports.candidate}, proxy :{self.ports.proxy} (admin :{self.ports.admin}),"
            " 2 workers"
        )

    def send_traffic(self) -> TrafficResult:
        """Start the users' traffic (it runs until the story ends); the shadow's part."""
        self.traffic = Traffic(self.proxy_url + INFER, self.options.seed)
        self.traffic.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.traffic.result.sent < self.options.requests and time.monotonic() < deadline:
            self.supervisor.check()
            time.sleep(0.1)
        result = self.traffic.result
        self.console.print(f"shadow: {result.sent:,} requests from {USERS} users, all answered"
                           f" by the primary, mirrored to {CANDIDATE}" if not result.failed else
                           f"shadow: {result.failed:,} of {result.sent:,} requests failed"
                           f" ({result.first_error})")  # fmt: skip
        if result.ok == 0:
            raise ShadowtrialError(f"no request got an answer ({result.first_error})")
        return result

    def wait_for_evidence(self, answered: int) -> None:
        """Until the gate passes on the shadow (the traffic keeps running)."""
        report = self._wait(lambda: self._verdict() == "pass", 60, "the shadow's gate to pass")
        self.console.print(f"shadow gate: pass ({report})")

    def print_report(self, trained: dict[str, Any], result: Any) -> None:
        from shadowtrial.admin_client import AdminClient

        assert self.traffic is not None
        with AdminClient(self.admin_url, self.token) as admin:
            started = admin.canary(CANDIDATE, PLAN).json_or_raise()  # gate first, not forced
            self.console.print(
                f"canary plan: {CANDIDATE} answers {started['weight']:.0%} of users, then"
                f" {PLAN['steps'][1:]} (each step >= {PLAN['step_s']} s and"
                f" {PLAN['min_pairs']} pairs of its own, gate passing on them)"
            )
            regressed_at = self._follow(admin)
            decisions = admin.decisions()
            report = admin.report(CANDIDATE, "1h")
        traffic = self.traffic.stop()
        (self.folder / "decisions.json").write_text(json.dumps(decisions, indent=2), "utf-8")
        (self.folder / f"report-{CANDIDATE}.json").write_text(json.dumps(report, indent=2), "utf-8")
        self._print_end(decisions, regressed_at, traffic, report)

    # -- the story --

    def _follow(self, admin: Any) -> float:
        """Print each step; plant the regression at REGRESS_AT; until the rollback."""
        weight, regressed_at = -1.0, 0.0
        deadline = time.monotonic() + STORY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.supervisor.check()
            entry = next(c for c in admin.candidates()["candidates"] if c["name"] == CANDIDATE)
            if entry["state"] != "active":
                raise ShadowtrialError(f"{CANDIDATE} is {entry['state']}: the plan did not stop")
            if entry["canary"] != weight:
                weight = entry["canary"]
                self.console.print(f"  {time.strftime('%H:%M:%S')} weight {weight:.0%}")
                if weight == REGRESS_AT and not regressed_at:
                    httpx.post(config.url(self.ports.candidate) + REGRESS, timeout=5)
                    regressed_at = time.time()
                    self.console.print(
                        f"  {time.strftime('%H:%M:%S')} [red]regression planted: {CANDIDATE}"
                        " now answers `low` for every input"
                    )
                if weight == 0 and regressed_at:
                    return regressed_at
            time.sleep(0.1)
        raise ShadowtrialError(f"no rollback within {STORY_TIMEOUT_S:.0f} s")

    def _print_end(
        self, decisions: list[dict[str, Any]], regressed_at: float, traffic: TrafficResult,
        report: dict[str, Any],
    ) -> None:  # fmt: skip
        self.console.print("audit log (oldest first):")
        for d in reversed(decisions):
            weight = (
                f" {d.get('weight_before')} -> {d.get('weight_after')}"
                if "weight_after" in d
                else ""
            )
            step = f", step pairs {d['step_pairs']}" if "step_pairs" in d else ""
            self.console.print(
                f"  {d['time']} {d['actor']}: {d['action']}{weight} ({d['outcome']},"
                f" gate {d['verdict']}{step})"
            )
        rollback = decisions[0]
        changes = self._gate_changes()
        (self.folder / "gate_changes.json").write_text(json.dumps(changes, indent=2), "utf-8")
        failed = next((c for c in changes if c["to"] == "fail"), None)
        if failed is not None:
            self.console.print(
                f"the gate failed at {failed['time']}, {_since(failed['time'], regressed_at)}"
                f" after the regression; the canary was rolled back at {rollback['time']}"
                f" ({_between(failed['time'], rollback['time'])} later; one check every"
                f" {CHECK_INTERVAL_S:g} s)"
            )
        served = ", ".join(f"{n:,} by {by}" for by, n in self.traffic.served.most_common())
        self.console.print(
            f"traffic: {traffic.sent:,} requests, {traffic.failed:,} failed; answered {served}"
        )
        canary = report.get("canary") or {}
        self.console.print(
            f"canary counts (every replica): served {canary.get('served', 0):,}, fell back"
            f" {sum((canary.get('fallbacks') or {}).values()):,}"
        )
        self.console.print(f"web page:    {self.admin_url}/ui/candidates/{CANDIDATE}")
        self.console.print(f"audit log:   {self.admin_url}/v1/decisions  (also decisions.json)")
        self.console.print(f"admin token: {self.token}")

    def _verdict(self) -> str:
        from shadowtrial.admin_client import AdminClient

        with AdminClient(self.admin_url, self.token) as admin:
            report = admin.report(CANDIDATE, "10s")
        self._last = f"{report.get('pairs', 0):,} pairs in the last 10 s, agreement" \
            f" {(report.get('agreement') or {}).get('rate')}"  # fmt: skip
        return str((report.get("gate") or {}).get("verdict"))

    def _wait(self, done: Any, timeout_s: float, what: str) -> str:
        deadline = time.monotonic() + timeout_s
        while not done():
            self.supervisor.check()
            if time.monotonic() > deadline:
                raise ShadowtrialError(f"timed out waiting for {what}")
            time.sleep(0.5)
        return self._last

    def _gate_changes(self) -> list[dict[str, Any]]:
        from common.keys import Keys

        client = self._redis()
        try:
            rows = client.xrange(Keys("demo").gate_changes())
        finally:
            client.close()
        return [fields for _, fields in rows]

    def stop(self) -> None:
        """Stop the traffic, then every process this demo started; check none is left."""
        if self.traffic is not None:
            self.traffic.stop()
        pids = self.supervisor.pids()
        self.supervisor.stop([["proxy"], ["worker-1", "worker-2", "v1", CANDIDATE]])
        if self.redis is not None:
            self.redis.stop()
        alive = [f"{n} ({p})" for n, p in pids.items() if pid_alive(p)]
        if alive:
            self.console.print(f"[red]still running: {', '.join(alive)}")
        elif pids:
            self.console.print(f"stopped {len(pids)} processes")


def _instant(text: str) -> float:
    from common.settings import parse_instant

    return parse_instant(text).timestamp()


def _since(text: str, then: float) -> str:
    return f"{_instant(text) - then:.1f} s"


def _between(first: str, second: str) -> str:
    return f"{_instant(second) - _instant(first):.1f} s"
