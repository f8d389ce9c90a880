"""The embedded Redis: started on a private socket, reused while it answers, never orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from common.store import EmbeddedRedis, redact_url, resolve_redis_url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_second_start_reuses_and_only_owner_stops(tmp_path: Path) -> None:
    first = EmbeddedRedis.start(tmp_path)
    try:
        second = EmbeddedRedis.start(tmp_path)
        assert first.owned and not second.owned and second.url == first.url
        with redis.Redis.from_url(second.url) as client:
            client.set("k", "v")
        second.stop()  # not the owner: the server keeps running
        with redis.Redis.from_url(first.url) as client:
            assert client.get("k") == b"v"
    finally:
        first.stop()
    assert first.process is not None and first.process.poll() is not None


def test_server_dies_with_its_owner_even_on_sigkill(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from common.store import EmbeddedRedis;"
        f"s = EmbeddedRedis.start(Path({str(tmp_path)!r})); print(s.process.pid, flush=True);"
        "time.sleep(60)"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    server_pid = int(owner.stdout.readline())
    assert _alive(server_pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(server_pid)


def test_configured_url_wins_and_passwords_are_hidden() -> None:
    url, server = resolve_redis_url("redis://:s3cret@127.0.0.1:6379/0")
    assert server is None and url.endswith("6379/0")
    assert "s3cret" not in redact_url(url)
    assert redact_url("rediss://user:pw@host:6380/1") == "rediss://user:***@host:6380/1"
