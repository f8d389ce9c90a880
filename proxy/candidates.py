"""Candidate runners: the models on trial, behind one small Protocol.

The contract (`MirrorRequest` in, `CandidateResult` out, never an exception) is in
proxy.runner.

Runners:
- `HttpCandidate`: the same method, path, query, headers (hop-by-hop removed) and body,
  sent to the candidate's base URL (proxy.http1), under the candidate's own timeout.
  The client's credentials (Authorization, Cookie, API keys and tokens) are not sent
  unless the candidate sets `forward_credentials = true`, and every mirrored request
  carries `X-Shadowtrial-Shadow: 1` so a candidate can skip side effects. A candidate's
  own `headers`, `drop_headers` and `body_set` apply after that (proxy.candidate_request).
- `DeferredCandidate`: `onnx = ...` with `run = "worker"`. Returns `deferred` at once
  without doing any work; the comparison worker runs the model later from the record.
- `DispatchedCandidate`: `url = ...` with `run = "dispatcher"`. Returns `dispatched` at
  once: the proxy queues the request and the primary's answer for a dispatcher
  (proxy.dispatch), which calls the candidate. A request whose body or query holds a
  secret (proxy.redact) is called here instead, as `run = "proxy"` would: secrets never
  wait in Redis.
- `proxy.onnx_runner.OnnxCandidate(settings)`: `onnx = ...` with `run = "proxy"`; runs the
  model in-process (a separate module, loaded only when such a candidate is configured).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.credentials import is_credential
from common.errors import ModelLoadError
from common.records import (
    OUTCOME_DEFERRED,
    OUTCOME_DISPATCHED,
    OUTCOME_ERROR,
    OUTCOME_HTTP_ERROR,
    OUTCOME_OK,
    OUTCOME_TIMEOUT,
)
from common.settings import CandidateSettings, Settings
from proxy.candidate_request import RequestShape, request_shape
from proxy.http1 import Http1Client, ProtocolError
from proxy.redact import BodyRedactor
from proxy.runner import CandidateResult, CandidateRunner, MirrorRequest

SHADOW_HEADER = ("x-shadowtrial-shadow", "1")
_KEEP, _CREDENTIAL, _SHADOW = 1, 2, 3
_KINDS: dict[str, int] = {}  # header name -> kind; on the mirror path, so cached (bounded)


def _kind(name: str) -> int:
    if len(_KINDS) >= 4096:
        _KINDS.clear()
    kind = _SHADOW if name.lower() == SHADOW_HEADER[0] else _KEEP
    if kind == _KEEP and is_credential(name):
        kind = _CREDENTIAL
    _KINDS[name] = kind
    return kind


def candidate_headers(
    headers: list[tuple[str, str]], forward_credentials: bool
) -> list[tuple[str, str]]:
    """The headers a candidate gets: the client's, minus credentials unless asked for,
    plus the shadow marker (a client's own marker header is replaced, not repeated)."""
    drop = _SHADOW if forward_credentials else _CREDENTIAL
    kinds = _KINDS
    kept = [(n, v) for n, v in headers if (kinds.get(n) or _kind(n)) < drop]
    kept.append(SHADOW_HEADER)
    return kept


@dataclass
class HttpCandidate:
    """A candidate reached over HTTP at `url`, through a keep-alive pool of its own.

    A separate pool keeps a hanging candidate from ever taking connections the primary
    needs; the lean client (proxy.http1) keeps a mirror about as cheap as it can be.
    """

    name: str
    url: str
    timeout_ms: int
    role: str = "candidate"
    max_body: int = 1_048_576
    pool_size: int = 256
    forward_credentials: bool = False
    shape: RequestShape = field(default_factory=RequestShape)
    _client: Http1Client | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._timeout_s = self.timeout_ms / 1000
        self._client = Http1Client(self.url, self.max_body, self.pool_size)

    async def run(self, request: MirrorRequest) -> CandidateResult:
        """Send the request; classify whatever happens into an outcome."""
        assert self._client is not None
        target = f"{request.path}?{request.query}" if request.query else request.path
        headers = self.shape.headers(candidate_headers(request.headers, self.forward_credentials))
        body = self.shape.body(request.body, headers)
        start = time.perf_counter()
        try:
            answer = await self._client.request(
                request.method, target, headers, body, self._timeout_s
            )
        except TimeoutError:
            return _failed(OUTCOME_TIMEOUT, f"no answer within {self.timeout_ms} ms", start)
        except (OSError, ProtocolError, ValueError) as exc:
            return _failed(OUTCOME_ERROR, f"{type(exc).__name__}: {exc}"[:500], start)
        connect = answer.connect_ms
        elapsed = (time.perf_counter() - start) * 1000 - connect
        status = answer.status
        outcome, error = (
            (OUTCOME_OK, "") if 200 <= status < 300 else (OUTCOME_HTTP_ERROR, f"HTTP {status}")
        )
        return CandidateResult(
            outcome, status, answer.body, answer.content_type, elapsed, error, connect
        )

    async def close(self) -> None:
        """Close the idle connections."""
        if self._client is not None:
            await self._client.close()


@dataclass
class DeferredCandidate:
    """An ONNX candidate run later by the worker: nothing to do on the hot path."""

    name: str
    role: str = "candidate"

    async def run(self, request: MirrorRequest) -> CandidateResult:
        """Record the request now; the worker fills in the candidate's answer."""
        return CandidateResult(OUTCOME_DEFERRED)

    async def close(self) -> None:
        """Nothing to release."""


@dataclass
class DispatchedCandidate:
    """An HTTP candidate called by a dispatcher process: nothing to do on the hot path.

    `inner` calls it here for the requests that must not wait in Redis (a secret in the
    body or query string, as the redactor sees it); their pairs say `mode = "proxy"`.
    """

    inner: HttpCandidate
    redactor: BodyRedactor = field(default_factory=BodyRedactor)
    run_mode: str = "dispatcher"

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self.role = self.inner.role
        self.url = self.inner.url
        self.timeout_ms = self.inner.timeout_ms

    async def run(self, request: MirrorRequest) -> CandidateResult:
        """`dispatched` (the proxy queues the request), or the candidate's answer now."""
        redactor = self.redactor
        if redactor.body(request.body) is not request.body or (
            request.query and redactor.query(request.query) != request.query
        ):
            return await self.inner.run(request)
        return CandidateResult(OUTCOME_DISPATCHED)

    async def close(self) -> None:
        """Close the connections of the requests called here."""
        await self.inner.close()


def _failed(outcome: str, error: str, start: float) -> CandidateResult:
    return CandidateResult(outcome, elapsed_ms=(time.perf_counter() - start) * 1000, error=error)


def build_runner(
    cand: CandidateSettings,
    max_body: int,
    pool_size: int,
    redact_fields: tuple[str, ...] = (),
) -> CandidateRunner:
    """The runner for one configured candidate; ModelLoadError when it cannot be built."""
    if cand.url is not None:
        http = HttpCandidate(
            name=cand.name,
            url=cand.url,
            timeout_ms=cand.timeout_ms,
            role=cand.role,
            max_body=max_body,
            pool_size=pool_size,
            forward_credentials=cand.forward_credentials,
            shape=request_shape(cand),
        )
        if cand.run == "dispatcher":
            return DispatchedCandidate(http, BodyRedactor(redact_fields))
        return http
    if cand.run == "worker":
        _check_loadable(cand)
        return DeferredCandidate(name=cand.name, role=cand.role)
    try:
        from proxy.onnx_runner import OnnxCandidate
    except ImportError as exc:
        raise ModelLoadError(f"onnx candidates need proxy.onnx_runner ({exc})") from None
    return OnnxCandidate(cand)


def _check_loadable(cand: CandidateSettings) -> None:
    """Fail at start, not in the worker hours later, when a worker-run model is unusable."""
    from models.onnx_model import OnnxModel  # onnxruntime only when an ONNX model is configured

    OnnxModel.load(cand)  # raises ModelLoadError naming the file and the problem


def build_runners(settings: Settings) -> list[CandidateRunner]:
    """One runner per configured candidate, in config order."""
    proxy = settings.proxy
    return [
        build_runner(cand, proxy.max_capture_bytes, proxy.mirror_concurrency, proxy.redact_fields)
        for cand in settings.candidates
    ]


__all__ = [
    "DeferredCandidate",
    "DispatchedCandidate",
    "HttpCandidate",
    "build_runner",
    "build_runners",
]
