"""Secrets in bodies, query strings and header names, replaced before a pair leaves the proxy.

The one redaction of the project: capture applies `BodyRedactor.record` to every pair
record just before it is queued for Redis, so the request body, both answers and the
query string reach Redis (and everything that reads pairs from it: the worker,
drill-down samples, replay from a stream, logs) with secrets replaced by "[redacted]";
the admin API's drill-down runs the same code again over what it shows (pairs stored by
older versions). The model servers still receive the request exactly as the client sent
it.

What is a secret:
- JSON object keys (any depth, any case, compared on the decoded key, so `"s\\u0073n"`
  is `ssn`): `proxy.redact_fields` plus DEFAULT_FIELDS (credential names that are never
  model inputs). A body that is not valid JSON but spells one of them as a quoted
  string (escapes decoded) is not kept at all (UNPARSEABLE); one too deeply nested to be
  re-encoded after redaction neither (TOO_DEEP). Walks are iterative: any depth orjson
  parses (1,024) is fine.
- URL-encoded names (query strings, `application/x-www-form-urlencoded` bodies, and
  multipart/form-data part names): those names, and any name matching SECRET_NAME
  (token, password, api key, session, ...), compared after percent-decoding.
- Header names: `proxy.redact_headers` and SECRET_NAME (proxy.capture.HeaderCapture).
- A gzip body is inflated (at most MAX_INFLATED bytes, else not kept), redacted by the
  rules above and compressed again when something was replaced. Other encodings
  (deflate, br) are stored as they came.

JSON keys are not matched by SECRET_NAME: they are model inputs (`max_tokens`), and a
stored request must still replay.

Cost: per captured body one bytes-regex search; only a body that may hold a secret is
parsed and re-encoded.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

import orjson

from common.records import PairRecord
from common.settings import Settings

REDACTED = "[redacted]"
# What is stored for a body that is not valid JSON but spells a secret field as a
# quoted string: its secret cannot be found reliably, so none of it is kept.
UNPARSEABLE = b"[redacted: not valid JSON, and it names a redacted field]"
# A JSON body that held a secret but is nested deeper than orjson re-encodes (254).
TOO_DEEP = b"[redacted: nested too deeply to re-encode after redaction]"
_REDACTED_QUERY_VALUE = "%5Bredacted%5D"
MAX_FORM_FIELDS = 1000  # fields of one form body examined (each costs a microsecond or two)
FORM_TOO_LARGE = b"[redacted: a form body of 1000 fields or more is not kept]"
_MAX_KEY = 256  # longer "names" are data (a base64 blob before its padding), not keys
_FORM_START = re.compile(rb"[^=&\s]{0,256}[=&]")  # a short key (maybe empty), then = or &
# Names whose values are secrets wherever they are URL-encoded or a header name.
SECRET_NAME = re.compile(
    r"(auth|cookie|token|secret|passw|api[-_]?key|apikey|signature|credential|session)",
    re.IGNORECASE,
)
# JSON keys redacted whatever is configured: credentials, never model inputs.
DEFAULT_FIELDS = frozenset(
    {
        "password", "passwd", "secret", "client_secret", "api_key", "apikey", "api_token",
        "access_token", "refresh_token", "id_token", "auth_token", "authorization",
        "private_key",
    }
)  # fmt: skip
_QUOTED_KEY = re.compile(rb'"((?:[^"\\]|\\.){1,256})"\s*:', re.DOTALL)
_PART_NAME = re.compile(rb'^content-disposition:[^\r\n]*?\bname="([^"\r\n]*)"', re.I | re.M)
_BOUNDARY = re.compile(rb"--([!-~]{1,70})\r?\n")
_JSON_START = re.compile(rb"\s*[\[{]")
_GZIP_MAGIC = b"\x1f\x8b"
MAX_INFLATED = 4 * 1024 * 1024  # a gzip body inflating beyond this is not kept
INFLATED_TOO_LARGE = b"[redacted: gzip over 4 MiB inflated, or with trailing bytes: not kept]"


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def secret_name(name: str, names: Iterable[str] = ()) -> bool:
    """True for a URL-encoded or header name that holds a secret (SECRET_NAME or `names`)."""
    return bool(SECRET_NAME.search(name)) or _norm(name) in {_norm(n) for n in names}


def _by_first_byte(names: Iterable[bytes]) -> bytes:
    """An alternation of `names` grouped by their first byte (`a(?:pi_key|ccess_token)|..`):
    the same matches as the flat `api_key|access_token|..`, 3x faster on the benchmark's
    bodies (re tries one branch per byte that follows a quote, not every name)."""
    groups: dict[bytes, list[bytes]] = {}
    for name in sorted(set(names)):
        groups.setdefault(name[:1], []).append(name[1:])
    return b"|".join(
        re.escape(first) + b"(?:" + b"|".join(re.escape(rest) for rest in rests) + b")"
        for first, rests in groups.items()
    )


def _inflate(data: bytes) -> bytes | None:
    """Every gzip member of `data` inflated; None beyond MAX_INFLATED bytes or when bytes
    that are no gzip member follow (they could hold anything: the body is not kept)."""
    parts: list[bytes] = []
    room = MAX_INFLATED
    while data:
        if not data.startswith(_GZIP_MAGIC) or room <= 0:
            return None
        inflater = zlib.decompressobj(wbits=31)
        parts.append(inflater.decompress(data, room))
        if inflater.unconsumed_tail:
            return None
        room -= len(parts[-1])
        data = inflater.unused_data
    return b"".join(parts)


class BodyRedactor:
    """Replaces the values of secret JSON fields, form fields and query parameters."""

    def __init__(self, fields: Iterable[str] = ()) -> None:
        self.configured = frozenset(_norm(f) for f in fields if f.strip())
        self.names = self.configured | DEFAULT_FIELDS
        # A cheap test that a JSON body may hold one of the names as a key. Escapes
        # (\u0070, \/) can spell a name in ways the pattern cannot see: such bodies are
        # parsed. Bytes patterns fold only ASCII case, so non-ASCII names always parse.
        spellings = {n for name in self.names for n in (name, name.replace("_", "-"))}
        names = _by_first_byte(n.encode("utf-8") for n in spellings)
        # Searched in the lower-cased body: 4x faster than one IGNORECASE pattern that
        # also looks for the escapes (those are two plain substring searches).
        self._names_lower = (
            re.compile(rb'"(?:' + names + rb')"').search
            if all(n.isascii() for n in self.names)
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyRedactor:
        """A redactor for `proxy.redact_fields` (and the defaults)."""
        return cls(settings.proxy.redact_fields)

    def record(self, record: PairRecord) -> None:
        """Redact a pair record in place: the three bodies and the query string."""
        record.request_body = self.body(record.request_body)
        record.primary_body = self.body(record.primary_body)
        record.candidate_body = self.body(record.candidate_body)
        if record.query:
            record.query = self.query(record.query)

    def body(self, data: bytes) -> bytes:
        """The body with every secret value replaced (the same bytes when there is none)."""
        if data.startswith(_GZIP_MAGIC):
            return self._gzip(data)
        return self._plain(data)

    def _gzip(self, data: bytes) -> bytes:
        """A gzip body (an answer to a client's Accept-Encoding, a compressed request):
        inflated within MAX_INFLATED bytes, redacted, compressed again if it changed."""
        try:
            plain = _inflate(data)
        except zlib.error:
            return self._plain(data)  # not gzip after all
        if plain is None:
            return INFLATED_TOO_LARGE
        redacted = self._plain(plain)
        return data if redacted is plain else gzip.compress(redacted, mtime=0)

    def _plain(self, data: bytes) -> bytes:
        if not data:
            return data
        if _JSON_START.match(data):
            return self._json(data)
        boundary = _BOUNDARY.match(data)
        if boundary:
            data = self._multipart(data, b"--" + boundary.group(1))
        elif b"=" in data:
            data = self._form(data)
        if not self._may_name_a_field(data):
            return data
        return UNPARSEABLE if self._names_a_field(data) else data

    def _may_name_a_field(self, data: bytes) -> bool:
        """Cheap: False when `data` cannot hold a secret name as a JSON string."""
        if self._names_lower is None or b"\\u" in data or b"\\/" in data:
            return True
        return self._names_lower(data.lower()) is not None

    def _json(self, data: bytes) -> bytes:
        if not self._may_name_a_field(data):
            return data
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:  # broken, or deeper than orjson's 1,024 levels
            return UNPARSEABLE if self._names_a_field(data) else data
        if not isinstance(doc, dict | list) or not self._redact_in_place(doc):
            return data
        try:
            return orjson.dumps(doc)
        except orjson.JSONEncodeError:  # orjson writes at most 254 levels
            return TOO_DEEP

    def _secret_key(self, key: str) -> bool:
        return _norm(key) in self.names

    def _redact_in_place(self, doc: dict[str, Any] | list[Any]) -> bool:
        """Replace secret values anywhere in `doc` (iteratively: no depth limit)."""
        changed = False
        stack: list[Any] = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if self._secret_key(key):
                        node[key] = REDACTED
                        changed = True
                    elif isinstance(value, dict | list):
                        stack.append(value)
            else:
                stack.extend(v for v in node if isinstance(v, dict | list))
        return changed

    def _names_a_field(self, data: bytes) -> bool:
        """True when a quoted key (`"...":`) in `data` is a secret name, escapes decoded."""
        for match in _QUOTED_KEY.finditer(data):
            raw = match.group(1)
            try:
                text = orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
            except (orjson.JSONDecodeError, UnicodeDecodeError):
                text = raw.decode("utf-8", "replace")
            if isinstance(text, str) and self._secret_key(text):
                return True
        return False

    def _url_secret(self, name: str) -> bool:
        return bool(SECRET_NAME.search(name)) or self._secret_key(name)

    def _multipart(self, data: bytes, delimiter: bytes) -> bytes:
        """multipart/form-data: the content of every part named as a secret replaced."""
        parts = data.split(delimiter)
        changed = False
        for i, part in enumerate(parts):
            head, blank, content = part.partition(b"\r\n\r\n")
            named = _PART_NAME.search(head) if blank else None
            if named and self._url_secret(named.group(1).decode("utf-8", "replace")):
                tail = b"\r\n" if content.endswith(b"\r\n") else b""
                parts[i] = head + blank + REDACTED.encode() + tail
                changed = True
        return delimiter.join(parts) if changed else data

    def _form(self, data: bytes) -> bytes:
        """A body shaped like `key=value&...` (ASCII, a short key first): its secret fields
        redacted. Bounded work: a form of MAX_FORM_FIELDS fields or more is not kept."""
        if not _FORM_START.match(data):
            return data
        if data.count(b"&") >= MAX_FORM_FIELDS:
            return FORM_TOO_LARGE
        try:
            text = data.decode("ascii")  # URL-encoded bodies are ASCII
        except UnicodeDecodeError:
            return data
        redacted = self.query(text)
        return data if redacted is text else redacted.encode()

    def query(self, query: str) -> str:
        """The query string (or form body) with secret parameters' values replaced; the
        other parameters keep their exact spelling."""
        parts = query.split("&")
        changed = False
        for i, part in enumerate(parts):
            name = part.partition("=")[0]
            if name and len(name) <= _MAX_KEY and self._url_secret(unquote_plus(name)):
                parts[i] = f"{name}={_REDACTED_QUERY_VALUE}"
                changed = True
        return "&".join(parts) if changed else query
