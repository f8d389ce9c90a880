"""Real `shadowtrial worker` processes for tests: config file, start, poll helpers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import redis

from common.keys import WORKER_GROUP, Keys

REPO = Path(__file__).resolve().parent.parent


def write_config(folder: Path, redis_url: str, prefix: str, **worker: object) -> Path:
    """A TOML config for candidate v2 with the given [worker] settings."""
    lines = ["[redis]", f'url = "{redis_url}"', f'prefix = "{prefix}"', "", "[worker]"]
    lines += [f"{k} = {v}" for k, v in worker.items()]
    lines += ["", "[[candidates]]", 'name = "v2"', 'url = "http://127.0.0.1:9"', ""]
    lines += ["[[slices]]", 'name = "country"', "from = '$.inputs[1].data[*]'", ""]
    path = folder / "shadowtrial.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_worker(config: Path, consumer: str) -> subprocess.Popen[bytes]:
    """`python -m shadowtrial worker -c CONFIG --id CONSUMER`; its log goes to CONSUMER.log."""
    args = [sys.executable, "-m", "shadowtrial", "worker", "-c", str(config), "--id", consumer]
    with open(config.parent / f"{consumer}.log", "wb") as log:
        return subprocess.Popen(
            [*args, "--log-level", "warning"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


def log_of(config: Path, consumer: str) -> str:
    """The tail of a worker's log."""
    return (config.parent / f"{consumer}.log").read_text(errors="replace")[-3000:]


def check(config: Path) -> int:
    """Exit code of `shadowtrial worker --check`."""
    args = [sys.executable, "-m", "shadowtrial", "worker", "-c", str(config), "--check"]
    return subprocess.run(args, cwd=REPO, capture_output=True, timeout=30).returncode


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, procs: dict | None = None
) -> None:
    """Poll until `condition()` holds; fail at once if a worker exits on its own."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        for name, proc in (procs or {}).items():
            if proc.poll() is not None and proc.returncode != -9:
                raise AssertionError(f"worker {name} exited with {proc.returncode}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def applied_by(client: redis.Redis, keys: Keys, consumer: str) -> int:
    """Entries a worker says it has applied (its health key), 0 when it has none."""
    raw = client.get(keys.worker_health(consumer))
    return int(orjson.loads(raw)["applied"]) if raw else 0


def summarised_pairs(client: redis.Redis, keys: Keys, candidate: str = "v2") -> int:
    """Pair records counted in every bucket of the candidate."""
    total = 0
    for member in client.zrange(keys.bucket_index(candidate), 0, -1):
        text = member.decode()
        start = int(text.lstrip("h"))
        key = keys.rollup(candidate, start) if text[0] == "h" else keys.bucket(candidate, start)
        total += int(client.hget(key, "records") or 0)
    return total


def consumed(client: redis.Redis, keys: Keys, candidate: str = "v2") -> bool:
    """Every entry of the stream delivered to the group and acknowledged."""
    stream = keys.pairs(candidate)
    groups = client.xinfo_groups(stream)
    if not groups:
        return False
    last = client.xrevrange(stream, count=1)
    last_id = last[0][0] if last else b"0-0"
    group = next(g for g in groups if g["name"] in (WORKER_GROUP, WORKER_GROUP.encode()))
    return group["pending"] == 0 and group["last-delivered-id"] == last_id
