"""A small synchronous client of the admin API, for the CLI (decisions, reports, lists).

Where it connects: `--admin http://host:port`, else the config's `proxy.admin_listen`
(a wildcard address becomes 127.0.0.1). The bearer token comes from the environment
variable named by `admin.token_env`; when that variable holds named tokens
(`alice=tok1,bob=tok2`, as the proxy accepts), `--as NAME` picks one (a single pair
needs no choice). Connection failures, timeouts and answers that are not JSON raise
`AdminError` (exit code 2); `Answer` carries any HTTP answer for the caller to judge.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from common.errors import AdminError
from common.settings import Settings
from control.auth import split_named

DEFAULT_TIMEOUT_S = 60.0  # a promote builds a report first
WILDCARDS = {"0.0.0.0", "::", "[::]", ""}


class AdminRefused(AdminError):
    """The admin API answered with an error status (the body says why)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(f"admin API answered {status}: {describe_error(body)}")


def describe_error(body: Any) -> str:
    """`error: detail` of an admin error body, whatever its shape."""
    if isinstance(body, dict) and "error" in body:
        detail = body.get("detail")
        return f"{body['error']}: {detail}" if detail else str(body["error"])
    return str(body)[:300]


@dataclass(frozen=True)
class Answer:
    """One HTTP answer of the admin API, its JSON body decoded."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status < 300

    def json_or_raise(self) -> Any:
        """The body, or AdminRefused for an error status."""
        if not self.ok:
            raise AdminRefused(self.status, self.body)
        return self.body


def admin_url_from_settings(settings: Settings) -> str:
    """http://host:port of the configured admin port, reachable from this machine."""
    host, _, port = settings.proxy.admin_listen.rpartition(":")
    host = "127.0.0.1" if host in WILDCARDS else host
    return f"http://{host}:{port}"


def pick_token(raw: str | None, actor: str | None = None) -> str | None:
    """The token to send from an environment value (see the module docstring)."""
    named = split_named(raw)
    if not named:
        return None
    if actor is not None:
        for name, value in named:
            if name == actor:
                return value
        raise AdminError(f"no token named {actor!r} in the token variable")
    if len(named) == 1:
        return named[0][1]
    names = ", ".join(name for name, _ in named)
    raise AdminError(f"the token variable holds several named tokens ({names}): choose with --as")


class AdminClient:
    """Calls to one admin port."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, admin_url: str | None = None, actor: str | None = None
    ) -> AdminClient:
        """A client of this config's admin port, with the token from its environment."""
        token = pick_token(os.environ.get(settings.admin.token_env), actor)
        return cls(admin_url or admin_url_from_settings(settings), token)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Answer:
        """One request; AdminError when there is no usable answer."""
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise AdminError(f"the admin API at {self.base_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach the admin API at {self.base_url}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            raise AdminError(
                f"{self.base_url}{path} answered {response.status_code} without JSON:"
                f" {response.text[:200]!r} (is this the admin port?)"
            ) from None
        return Answer(response.status_code, body)

    # -- reads (AdminRefused on an error status) --

    def candidates(self) -> dict[str, Any]:
        """{"routing": {...}, "candidates": [...]}."""
        return self.call("GET", "/v1/candidates").json_or_raise()

    def report(self, name: str, window: str = "1h") -> dict[str, Any]:
        """The report of one candidate over a window such as 15m, 1h, 2d or trial."""
        path = f"/v1/candidates/{name}/report"
        return self.call("GET", path, params={"window": window}).json_or_raise()

    def decisions(self, limit: int = 100) -> list[dict[str, Any]]:
        """The audit log, newest first."""
        return self.call("GET", "/v1/decisions", params={"limit": limit}).json_or_raise()[
            "decisions"
        ]

    def pairs(
        self, name: str, divergent: bool = False, slice: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Recent pairs of one candidate (drill-down), with copy-as-curl lines."""
        params: dict[str, Any] = {"divergent": str(divergent).lower(), "limit": limit}
        if slice:
            params["slice"] = slice
        answer = self.call("GET", f"/v1/candidates/{name}/pairs", params=params)
        return answer.json_or_raise()["pairs"]

    # -- decisions (the caller judges the answer) --

    def promote(self, name: str, force: bool = False) -> Answer:
        """POST /v1/candidates/NAME/promote[?force=true]."""
        params = {"force": "true"} if force else None
        return self.call("POST", f"/v1/candidates/{name}/promote", params=params)

    def canary(self, name: str, body: dict[str, Any], force: bool = False) -> Answer:
        """POST /v1/candidates/NAME/canary[?force=true] with {"weight": w} or a plan."""
        params = {"force": "true"} if force else None
        return self.call("POST", f"/v1/candidates/{name}/canary", params=params, json=body)

    def reject(self, name: str) -> Answer:
        """POST /v1/candidates/NAME/reject."""
        return self.call("POST", f"/v1/candidates/{name}/reject")

    def rollback(self) -> Answer:
        """POST /v1/rollback."""
        return self.call("POST", "/v1/rollback")


# -- shared by the commands that talk to the admin API -----------------------------------


def add_admin_options(parser: argparse.ArgumentParser) -> None:
    """--admin URL and --as NAME (plus -c/--config for the token variable and address)."""
    from shadowtrial.commands import add_config_option

    add_config_option(parser)
    parser.add_argument(
        "--admin",
        metavar="URL",
        default=None,
        help="admin API base URL (default: http://<proxy.admin_listen> from the config)",
    )
    parser.add_argument(
        "--as",
        dest="actor",
        metavar="NAME",
        default=None,
        help="which named token to send when the token variable holds several",
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def client_from_args(args: argparse.Namespace) -> AdminClient:
    """The client the parsed options describe (ConfigError / AdminError on bad input)."""
    from shadowtrial.commands import load_config

    settings = load_config(args)
    if args.admin is not None and not args.admin.startswith(("http://", "https://")):
        raise AdminError(f"--admin expects an http:// or https:// URL, got {args.admin!r}")
    return AdminClient.from_settings(settings, args.admin, args.actor)
