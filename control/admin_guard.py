"""The admin port's front door: which Host names it answers, and how often an address may
present a wrong token.

Reads on the admin port are open by default (`admin.open_reads`) and `/pairs` shows request
bodies, so a web page elsewhere must not reach it through the operator's browser: with DNS
rebinding, `evil.example` resolves to 127.0.0.1 and the browser sends `Host: evil.example`.
`HostAllowList` answers 421 to any Host name not in `admin.allowed_hosts`; literal IP
addresses always pass (a rebinding page cannot make the browser send one for its own
origin), so probes, Prometheus and `curl 127.0.0.1:9901` need no configuration.

`FailureLimit` counts failed token checks per client address in a sliding minute; past
`admin.auth_failures_per_minute` the address gets 429 for every guarded request, right
token or not, until its oldest failure is a minute old, so guessing a token costs a
minute per few tries. It lives in each process (replicas and `--workers` each count
their own); the memory it holds is bounded by MAX_ADDRESSES.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.responses import JSONResponse

WINDOW_S = 60.0
MAX_ADDRESSES = 10_000  # addresses remembered; the least recently failing is forgotten

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
Refused = Callable[[str], None]  # called with the reason of each refusal (a metric label)


def _ignore(reason: str) -> None:
    return None


def host_name(header: str) -> str:
    """The name of a Host header value, without port or IPv6 brackets, lower case."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rpartition(":")[0] if text.count(":") == 1 else text


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return False
    return True


def host_allowed(header: str | None, patterns: Sequence[str]) -> bool:
    """True for no Host header, a literal IP, or a name matching one of `patterns`."""
    if header is None:
        return True
    name = host_name(header).rstrip(".")
    if _is_address(name):
        return True
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in patterns)


class HostAllowList:
    """ASGI middleware: 421 for a Host name the admin port does not answer to."""

    def __init__(
        self, app: ASGIApp, patterns: Sequence[str], on_refused: Refused = _ignore
    ) -> None:
        self.app = app
        self.patterns = tuple(patterns)
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not host_allowed(_host(scope), self.patterns):
            self.on_refused("host")
            refusal = JSONResponse(
                {
                    "error": "host not allowed",
                    "detail": "this admin port answers the names in admin.allowed_hosts"
                    " and literal IP addresses",
                },
                status_code=421,
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _host(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"host":
            return value.decode("latin-1")
    return None


class FailureLimit:
    """Failed token checks per address in the last minute, bounded in memory."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again (0: it may now)."""
        times = self._recent(address)
        if times is None or len(times) < self.per_minute:
            return 0.0
        return max(0.0, times[0] + WINDOW_S - self.clock())

    def failed(self, address: str) -> None:
        """Count one failed token check of `address`."""
        times = self._recent(address)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.per_minute)
            if len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)
        times.append(self.clock())
        self._failures.move_to_end(address)

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = self.clock() - WINDOW_S
        while times and times[0] <= horizon:
            times.popleft()
        return times


def client_address(scope: Scope) -> str:
    """The peer's address as the socket sees it (X-Forwarded-For is never trusted here)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def too_many_failures(retry_after_s: float) -> JSONResponse:
    """The 429 an address gets while it is over the failed-token limit."""
    seconds = max(1, int(retry_after_s + 0.999))
    return JSONResponse(
        {
            "error": "too many failed token checks",
            "detail": f"this address presented wrong tokens too often; retry in {seconds} s",
        },
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )
