"""Every shutdown finishes in bounded time (issue 12 bug 6): `serve` once ignored SIGTERM
for 13 minutes because RegistrySync.stop() awaited, without a timeout, a task that had
swallowed its cancellation. Here on the real RegistrySync and real `serve` processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from proxy_upstreams import Primary
from reliability_harness import serve, write_config
from servers import serve_app

from common.settings import settings_from_mapping
from control.sync import STOP_TIMEOUT_S, RegistrySync
from proxy.routing import RoutingTable


async def _swallowing_hook() -> None:
    """A hook that turns its cancellation into a normal return, as some libraries do
    (a CancelledError caught as a connection error, a timeout expiring at the same
    instant as the cancel): the loop that awaited it then goes round again."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(30)


async def _stop_a_sync_that_swallows(redis_url: str, prefix: str) -> float | None:
    settings = settings_from_mapping(
        {"redis": {"prefix": prefix}, "admin": {"sync_ms": 10}}, environ={}
    )
    sync = RegistrySync(settings, redis_url, RoutingTable.from_settings(settings, []), [])
    await sync.start()
    sync.on_tick.append(_swallowing_hook)
    await asyncio.sleep(0.1)  # the reconcile loop is inside the hook now
    started = time.monotonic()
    stopping = asyncio.ensure_future(sync.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3 * STOP_TIMEOUT_S + 5)
    return time.monotonic() - started if done else None


def test_registry_stop_ends_even_when_a_task_swallows_its_cancellation(
    redis_url: str, prefix: str
) -> None:
    # A loop of our own, closed without cancelling what is left: before the fix the
    # stuck task would hang asyncio.run's final cleanup too.
    loop = asyncio.new_event_loop()
    try:
        took = loop.run_until_complete(_stop_a_sync_that_swallows(redis_url, prefix))
    finally:
        loop.close()
    print(f"registry stop with a swallowed cancellation: {took} s")
    assert took is not None, "RegistrySync.stop() never returned"
    assert took < STOP_TIMEOUT_S + 1


@pytest.mark.slow
def test_repeated_sigterms_stop_serve_within_the_drain_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    """Eight `serve` processes syncing the registry every 10 ms with a candidate, stopped
    at different moments, some with a second SIGTERM: each exits 0 within its bound."""
    primary = Primary()
    with serve_app(primary) as primary_url, serve_app(Primary()) as candidate_url:
        took = []
        for round_ in range(8):
            config = write_config(
                tmp_path / f"s{round_}.toml",
                primary_url,
                redis_url,
                f"sd{uuid.uuid4().hex[:10]}",
                [{"name": "c", "url": candidate_url}],
                sections={"admin": {"sync_ms": 10}},
                primary_timeout_ms=2000,
            )
            with serve(config) as served:
                time.sleep(0.05 * round_)
                started = time.monotonic()
                served.process.send_signal(signal.SIGTERM)
                if round_ % 2:
                    time.sleep(0.05)
                    served.process.send_signal(signal.SIGTERM)
                code = _wait(served.process, 20)
                took.append(time.monotonic() - started)
                log = served.log_text()
            assert code == 0, log[-3000:]
            assert "Traceback" not in log, log[-3000:]
    print("serve stopped after " + ", ".join(f"{t:.2f}" for t in took) + " s")
    # bound: primary_timeout (2 s) + 5 s of grace, plus the bounded shutdown steps
    assert max(took) < 10, took


def test_repeated_sigterms_stop_every_worker_process(redis_url: str, tmp_path: Path) -> None:
    """`serve --workers 2`: the parent forwards every SIGTERM to its workers; two in a row
    still end in one clean exit."""
    with serve_app(Primary()) as primary_url:
        config = write_config(
            tmp_path / "w2.toml", primary_url, redis_url, f"sd{uuid.uuid4().hex[:10]}",
            sections={"admin": {"sync_ms": 10}},
        )  # fmt: skip
        with serve(config, "--workers", "2") as served:
            started = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            served.process.send_signal(signal.SIGTERM)
            code = _wait(served.process, 30)
            took = time.monotonic() - started
            log = served.log_text()
    print(f"serve --workers 2, two SIGTERMs: exited after {took:.2f} s")
    assert code == 0, log[-3000:]
    assert took < 10, took
    assert "Traceback" not in log, log[-3000:]


def test_repeated_sigterms_let_an_in_flight_request_finish(redis_url: str, tmp_path: Path) -> None:
    """SIGTERM three times while a request waits 2.5 s for the primary: the client still
    gets its answer, and the process exits 0 right after it, within the drain timeout."""
    with serve_app(Primary()) as primary_url:
        config = write_config(
            tmp_path / "slow.toml", primary_url, redis_url, f"sd{uuid.uuid4().hex[:10]}",
            primary_timeout_ms=3000,
        )  # fmt: skip
        with serve(config) as served:
            answers: list[int] = []
            slow = threading.Thread(
                target=_get, args=(served.url + "/slow/2500", answers), daemon=True
            )
            slow.start()
            time.sleep(0.5)  # the request is at the primary
            started = time.monotonic()
            for _ in range(3):
                served.process.send_signal(signal.SIGTERM)
                time.sleep(0.2)
            code = _wait(served.process, 20)
            took = time.monotonic() - started
            slow.join(timeout=5)
            log = served.log_text()
    print(f"three SIGTERMs with a request in flight: exited after {took:.2f} s")
    assert code == 0, log[-3000:]
    assert answers == [200]
    assert took < 3 + 5, took  # primary_timeout + the grace of GRACE_EXTRA_S
    assert "Traceback" not in log, log[-3000:]


def _get(url: str, answers: list[int]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        answers.append(httpx.get(url, timeout=30).status_code)


def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
