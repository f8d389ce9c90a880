"""Bearer tokens for the admin API: who may decide, and under which name it is audited.

The environment variable named by `admin.token_env` holds either one token
(`SHADOWTRIAL_ADMIN_TOKEN=s3cret`, audited as actor "admin") or named tokens
(`SHADOWTRIAL_ADMIN_TOKEN=alice=tok1,bob=tok2`, audited as "alice" / "bob"). A value is
read as named tokens only when every comma-separated part is `name=token` with a plain
name and a token that does not start with "=", so a single base64 token with its "="
padding stays one token.

Checking a presented token costs the same whatever it is: both sides are hashed (equal
lengths, so nothing leaks through the length) and compared with `hmac.compare_digest`
against every configured token, without stopping at the first match.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from common.errors import ConfigError
from control.admin_guard import FailureLimit, Refused, client_address, too_many_failures

DEFAULT_ACTOR = "admin"
_ACTOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

# The comparison used for every token check (a module attribute so tests can see it).
compare = hmac.compare_digest


@dataclass(frozen=True)
class Token:
    """One configured token: the actor it names and the SHA-256 digest of its value."""

    actor: str
    digest: bytes


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def split_named(raw: str | None) -> list[tuple[str, str]]:
    """[(actor, token)] of an environment value: named tokens, or one token as "admin"."""
    text = (raw or "").strip()
    if not text:
        return []
    named = [part.strip().partition("=") for part in text.split(",")]
    if all(_ACTOR_RE.match(name) and sep and value and not value.startswith("=")
           for name, sep, value in named):  # fmt: skip
        return [(name, value.strip()) for name, _, value in named]
    return [(DEFAULT_ACTOR, text)]


def parse_tokens(raw: str | None) -> tuple[Token, ...]:
    """The tokens in an environment value (empty when unset or blank)."""
    return tuple(Token(actor, _digest(value)) for actor, value in split_named(raw))


def tokens_from_env(token_env: str, environ: Mapping[str, str] | None = None) -> tuple[Token, ...]:
    """The tokens configured right now (read at call time, like AdminSettings.token())."""
    environ = os.environ if environ is None else environ
    return parse_tokens(environ.get(token_env))


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(presented: str | None, tokens: tuple[Token, ...]) -> str | None:
    """The actor whose token was presented, or None. Compares against every token."""
    if presented is None:
        return None
    digest = _digest(presented)
    actor = None
    for token in tokens:
        if compare(digest, token.digest) and actor is None:
            actor = token.actor
    return actor


def check_token_length(
    token_env: str, min_length: int, environ: Mapping[str, str] | None = None
) -> None:
    """ConfigError (naming the variable and the actor, never the token) when a configured
    token is shorter than `min_length`: `serve` refuses to start with a guessable token."""
    environ = os.environ if environ is None else environ
    for actor, value in split_named(environ.get(token_env)):
        if len(value) < min_length:
            whose = "the admin token" if actor == DEFAULT_ACTOR else f"{actor}'s admin token"
            problem = (
                f"{whose} is shorter than admin.min_token_length ({min_length} characters);"
                " generate one with: openssl rand -hex 32"
            )
            raise ConfigError(token_env, "", problem, secret=True)


def how_to_configure(token_env: str) -> str:
    """The sentence telling an operator how to enable decisions."""
    return (
        f"no admin token is configured: set the environment variable {token_env} for the proxy"
        f" (one token, or name=token pairs separated by commas so the audit log names who"
        f" decided) and restart it; [admin] token_env chooses another variable"
    )


# -- the ASGI guard ---------------------------------------------------------------------

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_GUARDED = ("/v1/", "/ui")  # reads that need a token when admin.open_reads = false

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class RequireToken:
    """ASGI middleware: a bearer token on every write (and on reads when they are closed).

    The actor the token names is put in `scope["state"]["actor"]` for the audit log.
    No token configured: writes answer 503 with how to set one, never 401, so an operator
    sees at once what is missing. With a `limit` (control.admin_guard.FailureLimit), an
    address over its failed-token budget gets 429 before its token is even looked at;
    `on_refused` is told each refusal's reason (the admin_refused metric).
    """

    def __init__(
        self,
        app: ASGIApp,
        token_env: str,
        open_reads: bool,
        limit: FailureLimit | None = None,
        on_refused: Refused | None = None,
    ) -> None:
        self.app = app
        self.token_env = token_env
        self.open_reads = open_reads
        self.limit = limit
        self.on_refused = on_refused or (lambda reason: None)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self._guarded(scope):
            refusal = self._limited(scope) or self._check(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _guarded(self, scope: Scope) -> bool:
        if scope["method"] in WRITE_METHODS:
            return True
        return not self.open_reads and scope["path"].startswith(READ_GUARDED)

    def _limited(self, scope: Scope) -> JSONResponse | None:
        """429 while the client's address is over the failed-token limit."""
        wait = self.limit.retry_after(client_address(scope)) if self.limit else 0.0
        if wait <= 0:
            return None
        self.on_refused("auth_limited")
        return too_many_failures(wait)

    def _failed(self, scope: Scope) -> None:
        self.on_refused("unauthorized")
        if self.limit is not None:
            self.limit.failed(client_address(scope))

    def _check(self, scope: Scope) -> JSONResponse | None:
        tokens = tokens_from_env(self.token_env)
        if not tokens:
            return JSONResponse(
                {"error": "admin token not configured", "detail": how_to_configure(self.token_env)},
                status_code=503,
            )
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        actor = authenticate(bearer(header), tokens)
        if actor is None:
            detail = (
                "send Authorization: Bearer <token>"
                if header is None
                else "the bearer token is not one of the configured admin tokens"
            )
            self._failed(scope)
            return JSONResponse(
                {"error": "unauthorized", "detail": detail},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="shadowtrial"'},
            )
        scope.setdefault("state", {})["actor"] = actor
        return None
