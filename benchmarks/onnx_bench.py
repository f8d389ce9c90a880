"""What an ONNX candidate costs the primary's latency, in each `run` mode, on this machine.

Builds a random forest (scikit-learn, load_breast_cancer) converted with skl2onnx, starts
the proxy harness's nginx stub as the primary (a fixed OIP v2 answer), a Redis, and one
`shadowtrial serve` per configuration (--workers 1 and 2, each with no candidate, `run = "proxy"`
with threads 1 and 2, `run = "worker"` with one `shadowtrial worker` beside it), all
together. It measures each proxy's no-candidate maximum with wrk, then sends open-loop
fixed-rate load (proxybench.openloop) at percentages of it, interleaved, and writes the
primary's p50/p99, the mirrors shed, the CPU per process group and whether the worker
kept up into benchmarks/RESULTS.md (between the onnx_bench markers). Every process it
starts is stopped by PID on exit, Ctrl-C included. See benchmarks/README.md.

    python benchmarks/onnx_bench.py            # full run (about 6 minutes)
    python benchmarks/onnx_bench.py --quick    # smoke run (about 2 minutes)
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import redis
from proxybench import onnx_report, render, tools
from proxybench.bench import STUB, Bench, log, shadowtrial_command
from proxybench.onnx_plan import (
    MAX_CONNS,
    OFF,
    WORKER,
    OnnxPlan,
    config_name,
    mode_threads,
    plan_from_args,
    split_config,
)
from proxybench.onnx_report import OnnxOutcome, behind_seconds, mirror_counters, mirror_shares
from proxybench.results import HarnessError, Row, interleaved, median, replace_section
from run_proxy_bench import PhaseClock, commit, make_work_dir

from common.keys import WORKER_GROUP, Keys

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "onnx_bench"
CANDIDATE = "onnx"
ROW = 7  # the dataset row every request carries


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    """The ONNX file, the request body that feeds it and the primary's fixed answer."""

    path: Path
    body: Path
    answer: Path
    description: str


def build_model(directory: Path, trees: int) -> BenchModel:
    """Train the candidate (a random forest) and the primary (logistic regression) on
    load_breast_cancer; write the candidate as ONNX and one row as an OIP v2 request."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=trees, random_state=0, n_jobs=1).fit(x, y)
    onx = to_onnx(forest, x[:1].astype("float32"), options={"zipmap": False}, target_opset=17)
    path = directory / f"rf{trees}_breast_cancer.onnx"
    path.write_bytes(onx.SerializeToString())
    row = x[ROW]
    request = {
        "id": "bench-0001",
        "inputs": [{"name": "X", "shape": [1, len(row)], "datatype": "FP32", "data": list(row)}],
    }
    primary = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    proba = [round(float(p), 6) for p in primary.predict_proba(x[ROW : ROW + 1])[0]]
    answer = {
        "model_name": "primary",
        "model_version": "1",
        "id": "bench-0001",
        "outputs": [
            {"name": "label", "shape": [1], "datatype": "INT64", "data": [int(proba[1] > 0.5)]},
            {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": proba},
        ],
    }
    body, reply = directory / "oip_request.json", directory / "oip_answer.json"
    body.write_text(json.dumps(request, separators=(",", ":")), encoding="utf-8")
    reply.write_text(json.dumps(answer, separators=(",", ":")), encoding="utf-8")
    depth = max(t.get_depth() for t in forest.estimators_)
    text = (
        f"scikit-learn RandomForestClassifier ({trees} trees, max depth {depth}) on "
        f"load_breast_cancer (30 features), skl2onnx, ZipMap off, "
        f"{path.stat().st_size / 1024:.0f} KiB"
    )
    return BenchModel(path, body, reply, text)


# -- servers and runs -------------------------------------------------------------------


class OnnxBench(Bench):
    """The proxy harness's Bench with ONNX-candidate instances and comparison workers."""

    def __init__(
        self, plan: OnnxPlan, work: Path, paths: dict[str, str], model: BenchModel
    ) -> None:
        super().__init__(plan, work, paths)  # Bench reads only fields OnnxPlan also has
        self.oplan = plan
        self.model = model
        self.body = model.body
        self.client: redis.Redis | None = None

    def start(self) -> None:
        """Redis, the stub, every serve instance, one worker per run=worker instance."""
        self._start_redis()
        self._start_stub()
        for config in self.oplan.configs():
            self._start_instance(config)
        for config in self.oplan.configs():
            self._wait_ready(config)
        self.client = redis.Redis.from_url(self.redis_url)
        for config in self.oplan.worker_configs():
            self._start_worker(config)
        self.smoke()

    def _start_stub(self) -> None:
        for key in ("primary", "candidate"):
            self.ports[key] = self._port()
        answer = render.nginx_literal(self.model.answer.read_bytes())
        values = {
            "PRIMARY_PORT": self.ports["primary"],
            "CANDIDATE_PORT": self.ports["candidate"],
            "PRIMARY_BODY": answer,
            "CANDIDATE_BODY": answer,
            "USER_DIRECTIVE": render.user_directive(),
            "RUN_DIR": self.work / "run",
            "LOG_DIR": self.work / "logs",
        }
        conf = render.render_file(
            render.CONF_DIR / "nginx_stub.conf.in", self.work / "nginx_stub.conf", values
        )
        err = str(self.work / "logs" / "nginx_stub.startup.err")
        cmd = [self.tools["nginx"], "-p", str(self.work / "run"), "-e", err, "-c", str(conf)]
        self.procs.start(STUB, cmd)
        self._wait_port(STUB, self.ports["primary"])

    def _start_instance(self, config: str) -> None:
        self.ports[config], self.admin[config] = self._port(), self._port()
        values = {
            "LISTEN_PORT": self.ports[config],
            "ADMIN_PORT": self.admin[config],
            "PRIMARY_PORT": self.ports["primary"],
            "MIRROR_CONCURRENCY": self.oplan.mirror_concurrency,
            "REDIS_URL": self.redis_url,
            "REDIS_PREFIX": self.prefix_of(config),
            "MAX_PAIRS": 100_000,
        }
        mode, workers = split_config(config)
        toml = render.shadowtrial_config(values, None) + self._candidate_block(mode)
        path = self.work / f"{config}.toml"
        path.write_text(toml, encoding="utf-8")
        cmd = [*shadowtrial_command(), "serve", "-c", str(path), "--workers", str(workers)]
        self.procs.start(config, cmd, self._serve_env())

    def _candidate_block(self, mode: str) -> str:
        if mode == OFF:
            return ""
        threads = mode_threads(mode)
        lines = [
            "",
            "[[candidates]]",
            f'name = "{CANDIDATE}"',
            f'onnx = "{self.model.path}"',
            'input = "oip-v2"',
            f'run = "{"worker" if threads is None else "proxy"}"',
            "sample = 1.0",
            f"queue = {self.oplan.queue}",
        ]
        if threads is not None:  # run = "worker": the worker's session keeps the default
            lines.append(f"threads = {threads}")
        return "\n".join(lines) + "\n"

    def prefix_of(self, config: str) -> str:
        """One key prefix per instance, so each worker reads only its own instance's pairs."""
        return f"{self.prefix}-{config}"

    def stream(self, config: str) -> str:
        """The candidate's pair stream of one instance."""
        return Keys(self.prefix_of(config)).pairs(CANDIDATE)

    def _start_worker(self, config: str) -> None:
        cmd = [*shadowtrial_command(), "worker", "-c", str(self.work / f"{config}.toml")]
        cmd += ["--id", f"bench-{config}", "--log-level", "warning"]
        self.procs.start(worker_name(config), cmd, self._serve_env())

        def joined() -> bool:
            if self.procs.exited(worker_name(config)) is not None:
                tail = self.procs.log_tail(worker_name(config))
                raise HarnessError(f"the worker of {config} exited at start:\n{tail}")
            try:
                return any(
                    g["name"] in (WORKER_GROUP, WORKER_GROUP.encode())
                    for g in self.redis().xinfo_groups(self.stream(config))
                )
            except redis.ResponseError:  # no stream yet
                return False

        tools.wait_until(joined, f"the worker of {config} (its consumer group)", 60.0)

    def redis(self) -> redis.Redis:
        """The harness's own Redis client (set once Redis is up)."""
        if self.client is None:
            raise HarnessError("Redis is not started")
        return self.client

    def smoke(self) -> None:
        """One request per configuration: status 200 and the primary's exact bytes back."""
        expected = self.model.answer.read_bytes().strip()
        for config in self.oplan.configs():
            status, body = tools.http(self.url(config), self.body.read_bytes())
            if status != 200 or body.strip() != expected:
                raise HarnessError(f"smoke request to {config} got {status}: {body[:300]!r}")
        log("smoke: every configuration answers 200 with the primary's bytes")

    # -- phases ------------------------------------------------------------------------------

    def max_rates(self) -> dict[int, float]:
        """Each --workers value's no-candidate maximum (wrk, c=32), median of the repeats."""
        configs = [config_name(OFF, w) for w in self.oplan.workers]
        found: dict[str, list[float]] = {c: [] for c in configs}
        for rep, _, config in interleaved(configs, (MAX_CONNS,), self.oplan.max_reps):
            row = self.wrk(config, MAX_CONNS, self.oplan.max_duration)
            found[config].append(row["rps"])
            log(f"max rep{rep} {config:12s} {row['rps']:8.0f} req/s other={row['other_cpu']:.0f}%")
            time.sleep(self.oplan.gap)
        return {split_config(c)[1]: median(v) for c, v in found.items()}

    def warm_up(self) -> None:
        """A short wrk run per configuration (sessions, pools, page faults), then check that
        every candidate answers: ok and no errors in the proxy, evidence from the workers."""
        for config in self.oplan.configs():
            self.wrk(config, 8, self.oplan.warmup)
        for config in self.oplan.configs():
            self.check_candidate(config)
        log("warm-up: every ONNX candidate answered without errors")

    def check_candidate(self, config: str) -> None:
        """Fail loudly when a candidate errs: the table would measure an error path."""
        mode, _ = split_config(config)
        if mode == OFF:
            return
        if mode != WORKER:
            counts = mirror_counters(self.scrape(config), CANDIDATE)
            if counts.get("ok", 0) == 0 or counts.get("error", 0) > 0:
                raise HarnessError(f"the ONNX candidate of {config} did not answer: {counts}")
        if config in self.oplan.worker_configs():
            if math.isnan(self.wait_drained(config, 60.0)):
                raise HarnessError(f"the worker of {config} did not catch up after the warm-up")
            self.check_evidence(config, deferred=mode == WORKER)

    def check_evidence(self, config: str, deferred: bool) -> None:
        """The worker compared rows (and ran the model when `deferred`), without errors."""
        from analysis.summaries import merge_raw

        keys = Keys(self.prefix_of(config))
        client = self.redis()
        starts = client.zrange(keys.bucket_index(CANDIDATE), 0, -1)
        names = [f"{keys.bucket_base(CANDIDATE)}{s.decode()}" for s in starts]
        merged = merge_raw(client.hgetall(n) for n in names)
        errors = {k: v for k, v in merged.items() if k.startswith("err:")}
        if not merged.get("rows") or errors or (deferred and not merged.get("deferred")):
            raise HarnessError(f"the worker of {config} did not compare cleanly: {merged}")

    def scrape(self, config: str) -> str:
        """The instance's /metrics text (summed over its workers)."""
        return tools.http(f"http://127.0.0.1:{self.admin[config]}/metrics")[1].decode()

    def fixed_rates(self, max_rps: dict[int, float]) -> list[Row]:
        """Open-loop runs at every level, every configuration interleaved, `reps` times."""
        rows = []
        configs = self.oplan.configs()
        for rep, level, config in interleaved(configs, self.oplan.levels, self.oplan.reps):
            mode, workers = split_config(config)
            row = self.one_rate(config, level / 100 * max_rps[workers])
            row.update(config=config, mode=mode, workers=workers, level=level, c=level, rep=rep)
            rows.append(row)
            log(
                f"rate rep{rep} {config:12s} {level:3d}% {row['rate']:6.0f} req/s "
                f"p50={row['p50_ms']:.2f} p99={row['p99_ms']:.2f} ms "
                f"shed={row.get('shed_pct', math.nan):.1f}% sut={row['sut_cpu']:.0f}% "
                f"worker={row['worker_cpu']:.0f}% other={row['other_cpu']:.0f}% "
                f"late={row['lag_p99_ms']:.1f} ms behind={row.get('behind_s', math.nan):.1f} s"
            )
            time.sleep(self.oplan.gap)
        return rows

    def one_rate(self, config: str, rate: float) -> Row:
        """One open-loop run plus the mirror outcomes, the worker's CPU and its lag."""
        mode, _ = split_config(config)
        has_candidate = mode != OFF
        before = mirror_counters(self.scrape(config), CANDIDATE) if has_candidate else {}
        worker = worker_name(config) if config in self.oplan.worker_configs() else None
        cpu0, t0 = (self.procs.cpu(worker) if worker else 0.0), time.monotonic()
        row = self.openloop(config, rate)
        wall = time.monotonic() - t0
        row["worker_cpu"] = 100 * (self.procs.cpu(worker) - cpu0) / wall if worker else 0.0
        if has_candidate:
            row.update(mirror_shares(before, mirror_counters(self.scrape(config), CANDIDATE)))
        if worker:
            row["behind_s"] = self.behind(config)
            row["drain_s"] = self.wait_drained(config, self.oplan.drain_s)
            if self.procs.exited(worker) is not None:
                raise HarnessError(f"{worker} stopped:\n{self.procs.log_tail(worker)}")
        return row

    def behind(self, config: str) -> float:
        """Seconds between the stream's newest entry and the newest one a worker took."""
        client, stream = self.redis(), self.stream(config)
        last = client.xinfo_stream(stream)["last-generated-id"]
        group = next(
            g
            for g in client.xinfo_groups(stream)
            if g["name"] in (WORKER_GROUP, WORKER_GROUP.encode())
        )
        return behind_seconds(last, group["last-delivered-id"])

    def wait_drained(self, config: str, timeout_s: float) -> float:
        """Seconds until the worker has taken and acknowledged every entry; NaN if it did not
        within `timeout_s` (its backlog would then leak into the next run)."""
        t0 = time.monotonic()
        try:
            tools.wait_until(lambda: self._drained(config), f"{config}'s worker", timeout_s)
        except HarnessError:
            return math.nan
        return time.monotonic() - t0

    def _drained(self, config: str) -> bool:
        client, stream = self.redis(), self.stream(config)
        last = client.xinfo_stream(stream)["last-generated-id"]
        for group in client.xinfo_groups(stream):
            if group["name"] in (WORKER_GROUP, WORKER_GROUP.encode()):
                return group["last-delivered-id"] == last and int(group["pending"]) == 0
        return False

    def close(self) -> None:
        """Close our Redis client, then stop everything as the harness does."""
        if self.client is not None:
            self.client.close()
        super().close()


def worker_name(config: str) -> str:
    """The process name of a configuration's `shadowtrial worker`."""
    return f"{config}.worker"


# -- the command -------------------------------------------------------------------------


def measure(plan: OnnxPlan, work: Path, paths: dict[str, str], model: BenchModel) -> OnnxOutcome:
    """Run every phase with all servers up; they stop when this returns or raises."""
    clock = PhaseClock()
    with OnnxBench(plan, work, paths, model) as bench:
        bench.start()
        clock.lap("servers up")
        max_rps = bench.max_rates()
        if any(math.isnan(r) or r <= 0 for r in max_rps.values()):
            raise HarnessError(f"a no-candidate proxy measured no throughput: {max_rps}")
        clock.lap("maximum")
        bench.warm_up()
        clock.lap("warm-up")
        rows = bench.fixed_rates(max_rps)
        clock.lap("fixed rates")
        bench.collect()
    clock.lap("stop")
    log(f"phases: {clock}")
    return OnnxOutcome(plan, max_rps, rows)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def write_results(text: str) -> None:
    """Replace our section of RESULTS.md, keeping the rest of the file as it is."""
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else None
    tmp = RESULTS.with_suffix(".md.onnx.tmp")
    tmp.write_text(replace_section(old, text, SECTION), encoding="utf-8")
    os.replace(tmp, RESULTS)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the model, measure, write; exit 1 on a harness failure."""
    plan = plan_from_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    log(f"estimated wall time: {plan.estimate() / 60:.1f} min")
    started, load_before = time.monotonic(), load_average()
    try:
        paths = tools.ensure_tools()
        work = make_work_dir()
        log(f"work folder (model, configs, logs, raw results): {work}")
        model = build_model(work, plan.trees)
        log(f"model: {model.description}")
        outcome = measure(plan, work, paths, model)
    except HarnessError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every server this run started has been stopped")
        return 130
    import onnxruntime

    outcome.load = (load_before, load_average())
    outcome.meta = tools.tool_versions(paths) | {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit(),
        "took": f"{(time.monotonic() - started) / 60:.1f} min",
        "onnxruntime": onnxruntime.__version__,
        "model": model.description,
    }
    text = onnx_report.render(outcome)
    (work / "onnx_results.md").write_text(text + "\n", encoding="utf-8")
    with (work / "onnx_runs.jsonl").open("w", encoding="utf-8") as fh:
        for row in outcome.rows:
            fh.write(json.dumps(row) + "\n")
    if plan.write:
        write_results(text)
        log(f"wrote the {SECTION} section of {RESULTS}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
