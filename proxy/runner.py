"""The candidate runner contract, shared by every runner and by the mirror.

The mirror (proxy/mirror.py) hands every runner the same `MirrorRequest` and gets back a
`CandidateResult`. A runner never raises for a failing model: every failure becomes an
outcome from common.records (`ok`, `http_error`, `timeout`, `error`, `deferred`), because
the mirror path turns failures into counters and pair records, never into exceptions.
The runners themselves are in proxy.candidates (HTTP, deferred) and proxy.onnx_runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(slots=True)
class MirrorRequest:
    """One client request as the primary received it; shared read-only by all runners.

    `path` is the raw, still percent-encoded path and `query` the raw query string without
    its `?`. `headers` are the headers forwarded to the primary (hop-by-hop removed,
    X-Request-ID / X-Forwarded-* already set), as (name, value) text pairs. Runners must
    not mutate any of it.
    """

    request_id: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def content_type(self) -> str:
        """The request's Content-Type ('' when absent)."""
        return next((v for n, v in self.headers if n.lower() == "content-type"), "")


@dataclass(slots=True)
class CandidateResult:
    """What one candidate made of a request.

    outcome: one of common.records.OUTCOMES. status: HTTP status (0 when there was no HTTP
    answer). body: the answer's bytes (at most max_capture_bytes). elapsed_ms: from the
    start of `run` to the end of the answer, less `connect_ms`, the time spent opening a
    new connection for it (0.0 on a pooled one): the exchange is the candidate's latency,
    the handshake is the proxy's. error: a short human-readable reason when the outcome
    is not `ok`.
    """

    outcome: str
    status: int = 0
    body: bytes = b""
    content_type: str = ""
    elapsed_ms: float = 0.0
    error: str = ""
    connect_ms: float = 0.0


@runtime_checkable
class CandidateRunner(Protocol):
    """A model on trial. Implementations must be cheap to call and must not raise.

    - `name`: the candidate's configured name (the stream it records into).
    - `role`: "candidate", or "secondary" for a replica of the primary (noise floor).
    - `run(request)`: answer one mirrored request; any failure is returned as an outcome
      (`timeout` past the candidate's timeout_ms, `error` for anything else). Called
      concurrently from many tasks on the proxy's event loop; must not block the loop.
    - `close()`: release connections, threads and models; called once at shutdown.
    """

    name: str
    role: str

    async def run(self, request: MirrorRequest) -> CandidateResult: ...

    async def close(self) -> None: ...


def empty_result(outcome: str, error: str = "") -> CandidateResult:
    """A result with no answer (used when a runner itself misbehaves)."""
    return CandidateResult(outcome, error=error)


__all__ = ["CandidateResult", "CandidateRunner", "MirrorRequest", "empty_result"]
