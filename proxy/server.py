"""Ports, processes and signals for `shadowtrial serve`.

One process (`--workers 1`): the data port (proxy.dataport, the native httptools server;
or uvicorn with `[proxy] data_port = "uvicorn"`) and the admin port (uvicorn) share one
uvloop event loop and one ProxyApp. Once the app is built, the startup heap is frozen
(`gc.freeze()`): the collector then never walks it again while serving.

N processes (`--workers N`): the parent starts N spawned workers; each binds both ports
itself with SO_REUSEPORT, so the kernel spreads connections evenly over them (a shared
accept queue lets one worker take most long-lived keep-alive connections). Metrics use
prometheus-client's multiprocess mode in a temporary folder the parent creates and
removes, so /metrics on any worker reports the sum over all of them (see proxy.metrics).

Both ports bound a request head (431 past proxy.max_header_bytes, 408 past
proxy.header_timeout_ms) and its body's time (408 past proxy.body_timeout_ms): the native
data port itself, uvicorn through proxy.http_limits.

SIGTERM / SIGINT: stop accepting, finish in-flight requests, let mirrors end, flush
capture, exit 0. Every step is bounded (proxy.tasks), a repeated signal changes nothing
(uvicorn's force_exit would skip flushing capture), and a watchdog thread ends a process
still alive past the sum of the bounds (exit 1). The parent forwards the signal to its
workers and then stops the embedded Redis it started, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

import uvicorn

from common import logs
from common.errors import ShadowtrialError
from common.settings import Settings, split_hostport
from common.store import EmbeddedRedis, resolve_redis_url
from common.urls import mask_url
from control.auth import check_token_length
from proxy.http_limits import guarded_http
from proxy.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from proxy.app import ProxyApp

log = logging.getLogger("shadowtrial.serve")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
GRACE_EXTRA_S = 5.0
WATCHDOG_EXTRA_S = 5.0


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (two servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """One line per event on stderr (common.logs); uvicorn's start/stop chatter only at
    warnings."""
    logs.configure(level, fmt)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def bind(hostport: str, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6)."""
    host, port = split_hostport(hostport)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ShadowtrialError(f"cannot listen on {hostport}: {exc.strerror or exc}") from None
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _configs(
    app: object, admin: object, grace_s: float, settings: Settings
) -> tuple[uvicorn.Config, uvicorn.Config]:
    proxy = settings.proxy
    refused = getattr(getattr(app, "metrics", None), "refused", None)
    limits = (proxy.max_header_bytes, proxy.header_timeout_ms / 1000, proxy.body_timeout_ms / 1000)
    common = {
        "http": guarded_http(*limits, on_refuse=refused),
        "log_config": None,
        "access_log": False,
        "backlog": 4096,
        "proxy_headers": False,  # X-Forwarded-* are forwarded as sent, never trusted here
    }
    data = uvicorn.Config(
        app,
        lifespan="on",
        server_header=False,  # the primary's Server and Date headers pass through
        date_header=False,
        timeout_keep_alive=65,
        timeout_graceful_shutdown=grace_s,
        **common,
    )
    admin_cfg = uvicorn.Config(admin, lifespan="off", timeout_graceful_shutdown=2, **common)
    return data, admin_cfg


async def serve_process(
    settings: Settings, redis_url: str, reuse_port: bool, parent: int | None = None
) -> None:
    """Run both ports of one process until SIGTERM/SIGINT (or process `parent` exits)."""
    from proxy.app import create_app

    data_sock = bind(settings.proxy.listen, reuse_port)
    admin_sock = bind(settings.proxy.admin_listen, reuse_port)
    app = create_app(settings, redis_url)
    gc.collect()
    gc.freeze()  # the startup heap (modules, settings, app) is never collected again
    grace_s = settings.proxy.primary_timeout_ms / 1000 + GRACE_EXTRA_S
    data_cfg, admin_cfg = _configs(app, app.admin, grace_s, settings)
    data, admin = _Server(data_cfg), _Server(admin_cfg)
    stopping = asyncio.Event()

    def stop() -> None:
        if stopping.is_set():  # asked again: already stopping, every step is bounded
            return
        log.info("stopping: finishing in-flight requests, flushing capture")
        stopping.set()
        data.should_exit = admin.should_exit = True
        _watchdog(grace_s + app.shutdown_budget_s + WATCHDOG_EXTRA_S)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    watch = loop.create_task(_watch_parent(parent, stop)) if parent is not None else None
    admin_task = loop.create_task(admin.serve(sockets=[admin_sock]))
    if reuse_port:
        log.info("worker %d serving", os.getpid())
    if settings.proxy.data_port == "native":
        await _serve_native(app, data_sock, stopping, grace_s)
    else:
        await data.serve(sockets=[data_sock])
    admin.should_exit = True
    await admin_task
    if watch is not None:
        watch.cancel()


async def _serve_native(
    app: ProxyApp, sock: socket.socket, stopping: asyncio.Event, grace_s: float
) -> None:
    """The native data port until `stopping`: start the app, serve, drain, shut down."""
    await app.startup()
    port = app.data_port()
    try:
        await port.start(sock)
        await stopping.wait()
    finally:
        await port.stop(grace_s)
        await app.shutdown()


def _watchdog(limit_s: float) -> None:
    """The last resort behind every bounded shutdown step: a process still alive
    `limit_s` after the stop signal exits anyway (a thread, so a blocked loop cannot
    hold it up)."""

    def expire() -> None:
        log.error("shutdown did not finish within %.0f s; exiting now", limit_s)
        logging.shutdown()
        os._exit(EXIT_FAILED)

    timer = threading.Timer(limit_s, expire)
    timer.daemon = True
    timer.start()


async def _watch_parent(parent: int, stop: Callable[[], None]) -> None:
    """A worker whose parent died (SIGKILL) stops by itself instead of lingering.

    `parent` comes from the supervisor: read here, it could already be init's pid.
    """
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("parent process %d is gone; stopping", parent)
    stop()


def _run_loop(
    settings: Settings, redis_url: str, reuse_port: bool, parent: int | None = None
) -> None:
    import uvloop

    uvloop.run(serve_process(settings, redis_url, reuse_port, parent))


def _log_listening(settings: Settings, workers: int) -> None:
    proxy = settings.proxy
    log.info(
        "data port http://%s -> primary %s; admin http://%s; %d candidate(s); %d worker(s)",
        proxy.listen,
        mask_url(proxy.primary),
        proxy.admin_listen,
        len(settings.candidates),
        workers,
    )


def serve(settings: Settings, workers: int | None = None) -> int:
    """`shadowtrial serve`: resolve Redis, run the proxy, return the exit code."""
    workers = workers or settings.proxy.workers
    check_token_length(settings.admin.token_env, settings.admin.min_token_length)
    redis_url, embedded = resolve_redis_url(settings.redis.url)
    try:
        _log_listening(settings, workers)
        if workers == 1:
            _run_loop(settings, redis_url, reuse_port=False)
            return EXIT_OK
        return _supervise(settings, redis_url, workers)
    finally:
        _stop_embedded(embedded)


def _stop_embedded(embedded: EmbeddedRedis | None) -> None:
    if embedded is not None and embedded.owned:
        embedded.stop()
        log.info("stopped the embedded Redis")


def _worker_main(
    settings: Settings, redis_url: str, level: str, parent: int, fmt: str = "text"
) -> None:
    """Entry point of one spawned worker process."""
    configure_logging(level, fmt)
    try:
        _run_loop(settings, redis_url, reuse_port=True, parent=parent)
    except ShadowtrialError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _supervise(settings: Settings, redis_url: str, workers: int) -> int:
    """Start N workers, forward stop signals, wait, clean up the metrics folder."""
    own_dir = not os.environ.get(MULTIPROC_ENV)
    metrics_dir = tempfile.mkdtemp(prefix="shadowtrial-metrics-") if own_dir else None
    if metrics_dir:
        os.environ[MULTIPROC_ENV] = metrics_dir
    level = logging.getLevelName(logging.getLogger().level)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(settings, redis_url, level, os.getpid(), logs.current_format()),
            name=f"worker-{i}",
        )
        for i in range(workers)
    ]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(procs, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for proc in procs:
            proc.start()
        code = _wait(procs, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signal_all(procs, signal.SIGTERM)
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
    return code


def _wait(procs: list[BaseProcess], stopping: Callable[[], bool]) -> int:
    """Block until every worker has exited; a worker dying on its own stops the rest."""
    from prometheus_client import multiprocess

    alive = list(procs)
    code = EXIT_OK
    while alive:
        for proc in list(alive):
            proc.join(timeout=0.2)
            if proc.exitcode is None:
                continue
            alive.remove(proc)
            multiprocess.mark_process_dead(proc.pid)
            if not stopping() and code == EXIT_OK:
                log.error("%s exited with code %s; stopping", proc.name, proc.exitcode)
                code = EXIT_CONFIG if proc.exitcode == EXIT_CONFIG else EXIT_FAILED
                _signal_all(alive, signal.SIGTERM)
    return code


def _signal_all(procs: list[BaseProcess], sig: int) -> None:
    for proc in procs:
        if proc.pid is not None and proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
