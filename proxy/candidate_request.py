"""A candidate's own request: its headers, the headers it must not get, its body fields.

A candidate LLM behind another provider or another model name is tried on the same
traffic by giving it its own `Authorization` (from an environment variable, resolved once
when the runner is built, so the secret is only in this process's memory), removing
headers it must not see, and setting top-level fields of a JSON object body (`model`).
The primary's request and the recorded pair are never changed: only what is sent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from common.errors import ModelLoadError
from common.settings import CandidateSettings


@dataclass(frozen=True)
class RequestShape:
    """What one candidate changes in each mirrored request (nothing by default)."""

    set_headers: tuple[tuple[str, str], ...] = ()
    drop: frozenset[str] = frozenset()
    body_set: tuple[tuple[str, Any], ...] = ()

    @property
    def empty(self) -> bool:
        """True when requests go out as the client sent them (the hot path's shortcut)."""
        return not (self.set_headers or self.drop or self.body_set)

    def headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers minus the dropped and replaced names, plus the candidate's own."""
        if self.empty:
            return headers
        gone = self.drop | {n.lower() for n, _ in self.set_headers}
        kept = [(n, v) for n, v in headers if n.lower() not in gone]
        return kept + list(self.set_headers)

    def body(self, body: bytes, headers: list[tuple[str, str]]) -> bytes:
        """The body with `body_set` applied when it is a plain JSON object, else unchanged.

        A compressed or non-JSON body is sent as it came: the candidate sees what the
        primary saw rather than a body the proxy could not read.
        """
        if not self.body_set or _encoded(headers):
            return body
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(doc, dict):
            return body
        doc.update(self.body_set)
        return orjson.dumps(doc)


def _encoded(headers: list[tuple[str, str]]) -> bool:
    return any(n.lower() == "content-encoding" and v.strip() for n, v in headers)


def request_shape(
    cand: CandidateSettings, environ: Mapping[str, str] | None = None
) -> RequestShape:
    """The candidate's shape with `env:` values read now; ModelLoadError names a missing
    variable (never a value), so a misconfigured candidate fails at start."""
    environ = os.environ if environ is None else environ
    resolved = []
    for name, value in cand.headers:
        if value.startswith("env:"):
            variable = value[4:]
            if not environ.get(variable):
                raise ModelLoadError(
                    f"candidate {cand.name}: header {name} reads ${variable}, which is not set"
                )
            value = environ[variable].strip()
            if any(c in value for c in "\r\n\0"):
                raise ModelLoadError(f"candidate {cand.name}: ${variable} spans several lines")
        resolved.append((name, value))
    return RequestShape(tuple(resolved), frozenset(cand.drop_headers), cand.body_set)


__all__ = ["RequestShape", "request_shape"]
