"""`run = "proxy"` ONNX candidates: the model runs in-process, beside the hot path.

`OnnxCandidate` implements proxy.candidates.CandidateRunner. The model runs on a
ThreadPoolExecutor of `threads` workers (onnxruntime releases the GIL while it computes),
so the event loop never blocks. Requests wait in a queue of at most `queue` entries; when
it is full a new request is shed at once (outcome `shed`, the same name the mirror uses
for its own limit; it is counted, not recorded) rather than queueing without bound.

Micro-batching comes for free: a request that arrives when a worker is idle runs alone at
once; requests that arrive while every worker is busy are taken together, split evenly
across the workers that free up, and answered by one `session.run` per batch
(models.onnx_model.OnnxModel.predict_bodies), which amortises the per-call overhead
under load without adding a wait when the load is light.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import time
from collections import deque

from common.errors import CandidateError
from common.records import OUTCOME_ERROR, OUTCOME_OK, OUTCOME_TIMEOUT
from common.settings import CandidateSettings
from models.onnx_model import OnnxModel
from proxy.metrics import MIRROR_SHED
from proxy.runner import CandidateResult, MirrorRequest

log = logging.getLogger("shadowtrial.onnx")

OUTCOME_SHED = MIRROR_SHED  # "shed": the candidate's queue was full; count, do not record
MAX_BATCH = 64  # requests per session.run; bounds one batch's latency under a burst
CONTENT_TYPE = "application/json"

Answer = bytes | CandidateError
_Waiter = tuple[bytes, asyncio.Future[Answer]]


class OnnxCandidate:
    """An ONNX model on trial, run on a bounded thread pool inside the proxy."""

    def __init__(self, settings: CandidateSettings, model: OnnxModel | None = None) -> None:
        self.name = settings.name
        self.role = settings.role
        self.model = model if model is not None else OnnxModel.load(settings)
        self.threads = settings.threads
        self.queue_limit = settings.queue
        self.max_batch = MAX_BATCH
        self._timeout_s = settings.timeout_ms / 1000
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix=f"onnx-{settings.name}"
        )
        self._pending: deque[_Waiter] = deque()
        self._busy = 0  # batches running on the pool
        self._closed = False

    @property
    def queued(self) -> int:
        """Requests waiting for a worker (not yet running)."""
        return len(self._pending)

    async def run(self, request: MirrorRequest) -> CandidateResult:
        """Answer one mirrored request; never raises for a failing model."""
        start = time.perf_counter()
        if self._closed:
            return _result(OUTCOME_ERROR, start, error="candidate closed")
        if len(self._pending) >= self.queue_limit:
            return _result(OUTCOME_SHED, start, error=f"onnx queue full ({self.queue_limit})")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._pending.append((request.body, waiter))
        self._dispatch(loop)
        try:
            answer = await asyncio.wait_for(waiter, self._timeout_s)
        except TimeoutError:
            # wait_for cancelled the waiter: the dispatcher skips it if it has not run yet.
            error = f"no answer within {round(self._timeout_s * 1000)} ms"
            return _result(OUTCOME_TIMEOUT, start, error=error)
        if isinstance(answer, CandidateError):
            return _result(OUTCOME_ERROR, start, error=answer.detail[:500])
        return _result(OUTCOME_OK, start, status=200, body=answer)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand queued requests to idle workers, split evenly; runs on the event loop."""
        while self._pending and self._busy < self.threads:
            idle = self.threads - self._busy
            size = min(self.max_batch, math.ceil(len(self._pending) / idle))
            batch = [self._pending.popleft() for _ in range(min(size, len(self._pending)))]
            batch = [(body, w) for body, w in batch if not w.done()]
            if not batch:
                continue
            self._busy += 1
            future = self._pool.submit(self.model.predict_bodies, [body for body, _ in batch])
            future.add_done_callback(functools.partial(self._from_thread, loop, batch))

    def _from_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiter],
        future: concurrent.futures.Future[list[Answer]],
    ) -> None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._finish, loop, batch, future)

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiter],
        future: concurrent.futures.Future[list[Answer]],
    ) -> None:
        self._busy -= 1
        answers = _answers(future, len(batch))
        for (_, waiter), answer in zip(batch, answers, strict=True):
            if not waiter.done():
                waiter.set_result(answer)
        if not self._closed:
            self._dispatch(loop)

    async def close(self) -> None:
        """Stop taking requests, fail the queued ones, and release the threads."""
        self._closed = True
        while self._pending:
            _, waiter = self._pending.popleft()
            if not waiter.done():
                waiter.set_result(CandidateError(OUTCOME_ERROR, "candidate closed"))
        self._pool.shutdown(wait=False, cancel_futures=True)


def _answers(future: concurrent.futures.Future[list[Answer]], n: int) -> list[Answer]:
    if future.cancelled():
        return [CandidateError(OUTCOME_ERROR, "candidate closed")] * n
    exc = future.exception()
    if exc is not None:  # a bug in the model plumbing: every request of the batch failed
        log.warning("onnx batch failed: %r", exc)
        return [CandidateError(OUTCOME_ERROR, f"{type(exc).__name__}: {exc}"[:500])] * n
    return future.result()


def _result(
    outcome: str, start: float, status: int = 0, body: bytes = b"", error: str = ""
) -> CandidateResult:
    elapsed = (time.perf_counter() - start) * 1000
    content_type = CONTENT_TYPE if body else ""
    return CandidateResult(outcome, status, body, content_type, elapsed, error)
