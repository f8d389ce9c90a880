"""The demo's clients: held-out survey rows as OIP v2 requests, and late ground truth.

Each request is one row, one tensor per field, with an `X-Request-ID` (so a label can
name it later) and an `X-Tenant` header (which client application sent it). A share of
the requests gets its true label posted to the admin API's `POST /v1/feedback`, a couple
of seconds after the answer, as ground truth trickles in in real systems. A rich progress
bar shows requests, rate and labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import numpy as np
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from common.errors import ShadowtrialError
from shadowtrial.demo.data import CATEGORICAL, FEATURES, TENANT_SHARES, TENANTS, Dataset

LABEL_DELAY_S = 2.0
FEEDBACK_EVERY_S = 0.5
FEEDBACK_BATCH = 500
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Pace:
    """Open-loop pacing: request i leaves at `start + i / rate` (none when rate is 0)."""

    rate: float
    start: float

    async def wait_turn(self, index: int) -> None:
        if self.rate > 0:
            delay = self.start + index / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


@dataclass(frozen=True)
class Planned:
    """One request to send, and its ground truth if it will be labelled."""

    request_id: str
    tenant: str
    body: bytes
    label: str | None


@dataclass
class TrafficResult:
    """What the load generator did."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    labels: int = 0
    seconds: float = 0.0
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def request_body(row: dict[str, float | str], request_id: str) -> bytes:
    """One OIP v2 inference request: a [1, 1] tensor per feature."""
    inputs = [
        {
            "name": name,
            "shape": [1, 1],
            "datatype": "BYTES" if name in CATEGORICAL else "FP32",
            "data": [row[name]],
        }
        for name in FEATURES
    ]
    return orjson.dumps({"id": request_id, "inputs": inputs})


def plan(rows: Dataset, n: int, seed: int, label_share: float) -> list[Planned]:
    """`n` requests cycling through `rows` in order, tenants and labelled share seeded."""
    rng = np.random.default_rng(seed)
    tenants = rng.choice(len(TENANTS), size=n, p=TENANT_SHARES)
    labelled = rng.random(n) < label_share
    planned = []
    for i in range(n):
        j = i % len(rows)
        request_id = f"demo-{i:06d}"
        planned.append(
            Planned(
                request_id=request_id,
                tenant=TENANTS[int(tenants[i])],
                body=request_body(rows.row(j), request_id),
                label=str(rows.labels[j]) if labelled[i] else None,
            )
        )
    return planned


class _Labels:
    """Ground truth waiting for its delay to pass, then posted in batches."""

    def __init__(self, session: aiohttp.ClientSession, feedback_url: str, token: str) -> None:
        self.session = session
        self.url = feedback_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.waiting: deque[tuple[float, str, str]] = deque()
        self.posted = 0

    def add(self, request_id: str, label: str) -> None:
        self.waiting.append((time.monotonic() + LABEL_DELAY_S, request_id, label))

    async def post_due(self, everything: bool = False) -> None:
        """POST every label whose delay has passed (all of them when `everything`)."""
        now = time.monotonic()
        while self.waiting and (everything or self.waiting[0][0] <= now):
            batch = []
            while self.waiting and len(batch) < FEEDBACK_BATCH:
                if not everything and self.waiting[0][0] > now:
                    break
                _, request_id, label = self.waiting.popleft()
                batch.append({"request_id": request_id, "label": label})
            async with self.session.post(self.url, json=batch, headers=self.headers) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise ShadowtrialError(f"POST /v1/feedback answered {resp.status}: {text}")
            self.posted += len(batch)

    async def run(self, done: asyncio.Event) -> None:
        """Post due labels every FEEDBACK_EVERY_S until `done`; then post the rest."""
        while not done.is_set():
            await self.post_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), FEEDBACK_EVERY_S)
        await self.post_due(everything=True)


async def _client(
    queue: asyncio.Queue[tuple[int, Planned]],
    pace: Pace,
    session: aiohttp.ClientSession,
    url: str,
    labels: _Labels,
    result: TrafficResult,
    tick: Callable[[], None],
) -> None:
    while True:
        try:
            index, item = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        await pace.wait_turn(index)
        headers = {
            "Content-Type": "application/json",
            "X-Request-ID": item.request_id,
            "X-Tenant": item.tenant,
        }
        try:
            async with session.post(url, data=item.body, headers=headers) as resp:
                await resp.read()
                good = resp.status == 200
                problem = f"status {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            good, problem = False, f"{type(exc).__name__}: {exc}"
        result.sent += 1
        if good:
            result.ok += 1
            if item.label is not None:
                labels.add(item.request_id, item.label)
        else:
            result.failed += 1
            result.first_error = result.first_error or problem
        tick()


async def send(
    requests: list[Planned],
    proxy_url: str,
    feedback_url: str,
    token: str,
    console: Console,
    rate: float = 0.0,
    concurrency: int = 16,
) -> TrafficResult:
    """Send every request through the proxy (at `rate` per second, 0: as fast as the
    `concurrency` clients go) with a progress bar; post the labels."""
    result = TrafficResult()
    queue: asyncio.Queue[tuple[int, Planned]] = asyncio.Queue()
    for index, item in enumerate(requests):
        queue.put_nowait((index, item))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    progress = Progress(
        TextColumn("[bold]traffic"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:>5.0f} req/s"),
        TextColumn("{task.fields[labels]:>5,} labels posted"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    start = time.monotonic()
    pace = Pace(rate, start)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        labels = _Labels(session, feedback_url, token)
        with progress:
            task = progress.add_task("traffic", total=len(requests), rate=0.0, labels=0)

            def tick() -> None:
                elapsed = max(time.monotonic() - start, 1e-6)
                rate = result.sent / elapsed
                progress.update(task, completed=result.sent, rate=rate, labels=labels.posted)

            done = asyncio.Event()
            poster = asyncio.create_task(labels.run(done))
            clients = [
                _client(queue, pace, session, proxy_url, labels, result, tick)
                for _ in range(concurrency)
            ]
            try:
                await asyncio.gather(*clients)
            finally:
                done.set()
                await poster
            result.labels = labels.posted
            result.seconds = time.monotonic() - start
            tick()
    return result
