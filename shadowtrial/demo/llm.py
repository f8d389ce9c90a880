"""`shadowtrial demo --scenario llm`: a text candidate judged by meaning, on this machine.

The same story as the default demo with two small local text "models"
(shadowtrial.demo.text_server): the primary, its replica (the noise floor), and a
candidate behind "another provider" that needs its own key and model name (the proxy sends
them from `headers` and `body_set`). The candidate rewords most answers (it agrees by
meaning, not by string) and answers the billing topic wrongly: that slice is flagged.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from common.errors import ShadowtrialError
from shadowtrial.demo import config
from shadowtrial.demo.processes import Supervisor, child_env, http_ok
from shadowtrial.demo.run import START_TIMEOUT_S, Demo
from shadowtrial.demo.text_server import BANK, CANDIDATE_KEY, CANDIDATE_MODEL
from shadowtrial.demo.traffic import TrafficResult

CANDIDATE = "llm-v2"
REPLICA = "llm-replica"
KEY_ENV = "LLM_DEMO_CANDIDATE_KEY"
CHAT = "/v1/chat/completions"


def render(ports: config.Ports, redis_url: str, requests: int) -> str:
    """The scenario's shadowtrial.toml."""
    gate = {"min_pairs": config.min_pairs(requests), **config.GATE}
    dump = json.dumps
    lines = [
        "# Written by `shadowtrial demo --scenario llm`; every key is described in the README.",
        "[proxy]",
        f"listen = {dump(f'127.0.0.1:{ports.proxy}')}",
        f"admin_listen = {dump(f'127.0.0.1:{ports.admin}')}",
        f"primary = {dump(config.url(ports.primary))}",
        f'mirror_paths = ["{CHAT}"]',
        "",
        "[redis]",
        f"url = {dump(redis_url)}",
        'prefix = "demo"',
        "",
        "[outputs]",
        'protocol = "openai"',
        'text_agreement = "meaning"  # sentence embeddings, in the workers',
        "",
        "[worker]",
        "bucket_seconds = 5",
        "block_ms = 200",
        "",
        "[gate]",
        *(f"{key} = {dump(value)}" for key, value in gate.items()),
        "",
        "[[candidates]]",
        f'name = "{CANDIDATE}"',
        f"url = {dump(config.url(ports.candidate))}",
        f'headers = {{ Authorization = "env:{KEY_ENV}" }}',
        f'body_set = {{ model = "{CANDIDATE_MODEL}" }}',
        "",
        "[[candidates]]",
        f'name = "{REPLICA}"',
        f"url = {dump(config.url(ports.replica))}",
        'role = "secondary"',
        "",
        "[[slices]]",
        'name = "topic"',
        "from = '$.metadata.topic'",
        "",
    ]
    return "\n".join(lines)


class LlmDemo(Demo):
    """The default demo's life cycle with text models, chat traffic and a text report."""

    evidence_names = (CANDIDATE, REPLICA)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pythonpath = Path(sys.modules["shadowtrial"].__file__ or "").resolve().parent.parent
        extra = {"SHADOWTRIAL_ADMIN_TOKEN": self.token, KEY_ENV: f"Bearer {CANDIDATE_KEY}"}
        extra["TMPDIR"] = str(self.folder / "tmp")
        self.supervisor = Supervisor(self.folder, child_env(extra, pythonpath))

    def write_config(self) -> None:
        assert self.redis is not None
        text = render(self.ports, self.redis.url, self.options.requests)
        self.config_path.write_text(text, encoding="utf-8")

    def train(self) -> dict[str, Any]:
        self.console.print("text models: a fixed bank of answers on 4 topics (no real LLM)")
        return {}

    def start_servers(self, trained: dict[str, Any]) -> None:
        servers = {
            "llm-v1": (self.ports.primary, "primary"),
            REPLICA: (self.ports.replica, "primary"),
            CANDIDATE: (self.ports.candidate, "candidate"),
        }
        for name, (port, variant) in servers.items():
            argv = [sys.executable, "-m", "shadowtrial.demo.text_server", "--port", str(port)]
            self.supervisor.start(name, [*argv, "--variant", variant])
        self.supervisor.start("proxy", [*self._shadowtrial("serve"), "--log-level", "warning"])

    def wait_ready(self) -> None:
        for port in (self.ports.primary, self.ports.replica, self.ports.candidate):
            health = f"{config.url(port)}/health"
            self.supervisor.wait_until(lambda h=health: http_ok(h), health, START_TIMEOUT_S)
        ready = f"{self.admin_url}/readyz"
        self.supervisor.wait_until(lambda: http_ok(ready), "the proxy", START_TIMEOUT_S)
        self.supervisor.wait_until(self._workers_healthy, "the workers", START_TIMEOUT_S * 2)
        self.console.print(
            f"started: primary llm-v1 :{self.ports.primary}, {REPLICA} :{self.ports.replica}"
            f" (noise floor), candidate {CANDIDATE} :{self.ports.candidate} (own key and model"
            f" name), proxy :{self.ports.proxy} (admin :{self.ports.admin}), 2 workers"
        )

    def send_traffic(self) -> TrafficResult:
        result = asyncio.run(send_chats(self.proxy_url + CHAT, self.options))
        self.console.print(
            f"sent {result.sent:,} chat requests in {result.seconds:.1f} s, {result.ok:,}"
            f" answered"
            + (f"; {result.failed:,} failed ({result.first_error})" if result.failed else "")
        )
        if result.ok == 0:
            raise ShadowtrialError(f"no chat request got an answer ({result.first_error})")
        return result

    def print_report(self, trained: dict[str, Any], result: Any) -> None:
        from shadowtrial.admin_client import AdminClient

        with AdminClient(self.admin_url, self.token) as client:
            report = client.report(CANDIDATE, "1h")
        (self.folder / f"report-{CANDIDATE}.json").write_text(
            json.dumps(report, indent=2), encoding="utf-8"
        )
        for line in report_lines(report):
            self.console.print(line)
        self.console.print(f"web page:    {self.admin_url}/ui/candidates/{CANDIDATE}#text")
        self.console.print(f"admin token: {self.token}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def report_lines(report: dict[str, Any]) -> list[str]:
    """The story in a few lines: agreement by meaning, the exact rate, the flagged topic."""
    text = report.get("text") or {}
    agreement = (report.get("agreement") or {}).get("rate")
    flagged = [s["value"] for s in report.get("slices") or [] if s.get("flagged")]
    verdict = (report.get("gate") or {}).get("verdict")
    return [
        f"agreement by meaning: {_pct(agreement)}   exactly equal: {_pct(text.get('exact_rate'))}"
        f"   median similarity: {(text.get('similarity') or {}).get('p50')}",
        f"flagged topics: {', '.join(flagged) or 'none'}   verdict: {verdict}",
    ]


async def send_chats(url: str, options: Any) -> TrafficResult:
    """Chat requests on random topics, at most 8 at a time (seeded: the same every run)."""
    rng = random.Random(options.seed)
    topics = sorted(BANK)
    plan = []
    for _ in range(options.requests):
        topic = rng.choice(topics)
        question = rng.choice(BANK[topic])[0]
        plan.append((topic, question))
    result = TrafficResult()
    gate = asyncio.Semaphore(8)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:

        async def one(topic: str, question: str) -> None:
            body = {
                "model": "small-v1",
                "metadata": {"topic": topic},
                "messages": [{"role": "user", "content": question}],
            }
            headers = {"authorization": "Bearer client-key-never-sent-to-the-candidate"}
            async with gate:
                result.sent += 1
                try:
                    answer = await client.post(url, json=body, headers=headers)
                    answer.raise_for_status()
                    result.ok += 1
                except httpx.HTTPError as exc:
                    result.failed += 1
                    result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(one(t, q) for t, q in plan))
    result.seconds = time.monotonic() - started
    return result
