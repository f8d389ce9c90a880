"""Secrets in JSON bodies and query strings, replaced before a pair record leaves the proxy.

`proxy.redact_fields` names JSON object keys (at any depth, compared case-insensitively)
whose values are secrets. Capture applies `BodyRedactor.record` to every pair record just
before it is queued for Redis, so the request body, both answers and the query string
reach Redis (and everything that reads pairs from it: the worker, drill-down samples,
replay from a stream, logs) with those values replaced by "[redacted]". The model servers
still receive the request exactly as the client sent it.

Cost: nothing unless fields are configured. Then, per captured body, one bytes-regex
search for `"<name>":` (or a JSON escape that could spell a name); only a body that
matches is parsed and re-encoded. A body that is not JSON is stored as it is, unless it
spells one of the names in quotes (broken JSON holding a secret): then none of it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

import orjson

from common.records import PairRecord
from common.settings import Settings

REDACTED = "[redacted]"
# What is stored for a body that is not valid JSON but spells a configured field as a
# key: its secret cannot be found reliably, so none of it is kept.
UNPARSEABLE = b"[redacted: not valid JSON, and it names a redacted field]"
_REDACTED_QUERY_VALUE = "%5Bredacted%5D"


class BodyRedactor:
    """Replaces the values of configured JSON fields and query parameters."""

    def __init__(self, fields: Iterable[str]) -> None:
        self.names = frozenset(f.strip().lower() for f in fields if f.strip())
        if not self.names:
            raise ValueError("BodyRedactor needs at least one field name")
        # A cheap test that a body may hold one of the names as a key. Escapes (\u0070,
        # \/) can spell a name in ways the pattern cannot see: such bodies are parsed.
        # Bytes patterns fold only ASCII case, so non-ASCII names always parse.
        names = b"|".join(re.escape(n.encode("utf-8")) for n in sorted(self.names))
        self._maybe = (
            re.compile(rb'"(?:' + names + rb')"\s*:|\\[u/]', re.IGNORECASE).search
            if all(n.isascii() for n in self.names)
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyRedactor | None:
        """A redactor for `proxy.redact_fields`, or None when none are configured."""
        fields = [f for f in settings.proxy.redact_fields if f.strip()]
        return cls(fields) if fields else None

    def record(self, record: PairRecord) -> None:
        """Redact a pair record in place: the three bodies and the query string."""
        record.request_body = self.body(record.request_body)
        record.primary_body = self.body(record.primary_body)
        record.candidate_body = self.body(record.candidate_body)
        if record.query:
            record.query = self.query(record.query)

    def body(self, data: bytes) -> bytes:
        """The body with every configured field's value replaced (unchanged bytes when
        nothing was replaced, or when it is not a JSON object or array)."""
        if not data or (self._maybe is not None and self._maybe(data) is None):
            return data
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return UNPARSEABLE if self._names_a_field(data) else data
        if not isinstance(doc, dict | list):
            return data
        redacted, changed = self._walk(doc)
        return orjson.dumps(redacted) if changed else data

    def _names_a_field(self, data: bytes) -> bool:
        text = data.decode("utf-8", "replace").lower()
        return any(f'"{name}"' in text for name in self.names)

    def _walk(self, value: Any) -> tuple[Any, bool]:
        if isinstance(value, dict):
            changed = False
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key.lower() in self.names:
                    out[key] = REDACTED
                    changed = True
                else:
                    out[key], sub = self._walk(item)
                    changed = changed or sub
            return out, changed
        if isinstance(value, list):
            items = [self._walk(item) for item in value]
            return [item for item, _ in items], any(sub for _, sub in items)
        return value, False

    def query(self, query: str) -> str:
        """The query string with configured parameters' values replaced; the other
        parameters keep their exact spelling."""
        parts = query.split("&")
        changed = False
        for i, part in enumerate(parts):
            name = part.partition("=")[0]
            if unquote_plus(name).strip().lower() in self.names:
                parts[i] = f"{name}={_REDACTED_QUERY_VALUE}"
                changed = True
        return "&".join(parts) if changed else query
