"""The pair record: what the proxy writes to a candidate's stream, what workers read.

A stream entry has four fields so that bodies stay raw bytes (binary-safe, never
re-encoded on the hot path): `m` holds the orjson-encoded metadata, `q` the request body,
`p` the primary's body and `c` the candidate's body. `m.v` is the schema version; a
reader refuses versions it does not know instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from common.errors import DecodeError

SCHEMA_VERSION = 1

# Candidate outcomes recorded in a pair. Everything but "ok" is the error class ERR in
# the flip matrix: a failing candidate is evidence, never dropped.
OUTCOME_OK = "ok"
OUTCOME_HTTP_ERROR = "http_error"  # the candidate answered with a non-2xx status
OUTCOME_TIMEOUT = "timeout"
OUTCOME_ERROR = "error"  # connection refused or reset, bad response, model error
OUTCOME_DEFERRED = "deferred"  # run = "worker": the worker runs the model later
# A request record waiting for a dispatcher (requests stream only, never in a pair stream).
OUTCOME_DISPATCHED = "dispatched"
# Who called the candidate: the serving process, or a dispatcher (proxy.dispatch).
MODE_PROXY = "proxy"
MODE_DISPATCHER = "dispatcher"
# served_by of a pair: the primary answered the client (the shadow), else the candidate's
# name (a canary request; the primary was asked in the background, the roles reversed).
PRIMARY_SERVED = "primary"
OUTCOMES = (OUTCOME_OK, OUTCOME_HTTP_ERROR, OUTCOME_TIMEOUT, OUTCOME_ERROR, OUTCOME_DEFERRED)


class RecordError(DecodeError):
    """A stream entry is not a pair record this version understands."""


@dataclass
class PairRecord:
    """One request answered by the primary and (maybe later) by one candidate."""

    request_id: str
    candidate: str
    ts_ms: int  # arrival time, epoch milliseconds
    method: str = "POST"
    path: str = "/"
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # captured subset, redacted
    request_body: bytes = b""
    primary_status: int = 0
    primary_ms: float = 0.0
    primary_body: bytes = b""
    primary_content_type: str = ""
    candidate_outcome: str = OUTCOME_OK
    candidate_status: int = 0
    candidate_ms: float = 0.0
    candidate_body: bytes = b""
    candidate_content_type: str = ""
    candidate_error: str = ""
    role: str = "candidate"  # or "secondary": a replica of the primary (noise floor)
    served_by: str = PRIMARY_SERVED  # who answered the client; both sides keep their meaning
    mode: str = MODE_PROXY  # who called the candidate (run = "dispatcher": a dispatcher)

    _BODIES = ("request_body", "primary_body", "candidate_body")

    def to_fields(self) -> dict[bytes, bytes]:
        """Encode as stream entry fields (the form XADD takes)."""
        # Built by hand: dataclasses.asdict deep-copies and cost ~6% of the proxy's CPU.
        meta = {name: getattr(self, name) for name in _META_FIELDS}
        if self.mode != MODE_PROXY:  # proxy-mode records stay exactly as they were
            meta["mode"] = self.mode
        meta["v"] = SCHEMA_VERSION
        return {
            b"m": orjson.dumps(meta),
            b"q": self.request_body,
            b"p": self.primary_body,
            b"c": self.candidate_body,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes] | dict[str, Any]) -> PairRecord:
        """Decode a stream entry; raise RecordError on anything unexpected."""
        fast = _from_usual_fields(cls, fields)
        if fast is not None:
            return fast
        get = _field_getter(fields)
        try:
            meta = orjson.loads(get("m"))
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"metadata is not JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.pop("v", None) != SCHEMA_VERSION:
            raise RecordError(f"unknown pair record version (expected {SCHEMA_VERSION})")
        _check_types(meta)
        try:
            return cls(
                **meta,
                request_body=get("q"),
                primary_body=get("p"),
                candidate_body=get("c"),
            )
        except TypeError as exc:
            raise RecordError(f"pair record fields do not match the schema: {exc}") from None


_META_FIELDS = tuple(
    f.name for f in fields(PairRecord) if f.name not in (*PairRecord._BODIES, "mode")
)
_ANNOTATED = {"str": (str,), "int": (int,), "float": (int, float), "dict[str, str]": (dict,)}
_META_TYPES = {
    f.name: _ANNOTATED[str(f.type)] for f in fields(PairRecord) if f.name in (*_META_FIELDS, "mode")
}


# The metadata as `to_fields` writes it: every field, in order, then `v`. The worker
# decodes one per pair, so a record of exactly this form skips the general checks.
_USUAL_KEYS = (*_META_FIELDS, "v")
_EXACT = {"str": str, "int": int, "float": float, "dict[str, str]": dict}
_USUAL_TYPES = (*(_EXACT[str(f.type)] for f in fields(PairRecord) if f.name in _META_FIELDS), int)


def _from_usual_fields(cls: type[PairRecord], fields: Any) -> PairRecord | None:
    """The record, when the entry is exactly what a proxy writes (bytes fields; metadata
    with every field in order, of its exact type, and this schema version); else None and
    the general path decides (and explains). Types are compared exactly: a bool is no int,
    and an int where a float is due (JSON writes 4.0 as 4 at will) takes the general path.
    """
    if type(fields) is not dict:
        return None
    m, q, p, c = fields.get(b"m"), fields.get(b"q"), fields.get(b"p"), fields.get(b"c")
    if type(m) is not bytes or type(q) is not bytes or type(p) is not bytes or type(c) is not bytes:
        return None
    try:
        meta = orjson.loads(m)
    except orjson.JSONDecodeError:
        return None
    if type(meta) is not dict or meta.get("v") != SCHEMA_VERSION:
        return None
    if tuple(meta) != _USUAL_KEYS or tuple(map(type, meta.values())) != _USUAL_TYPES:
        return None
    for value in meta["headers"].values():
        if type(value) is not str:  # keys of a JSON object are always text
            return None
    del meta["v"]
    meta["request_body"], meta["primary_body"], meta["candidate_body"] = q, p, c
    record = cls.__new__(cls)
    record.__dict__ = meta  # the fields the constructor would set, none else
    return record


def _check_types(meta: dict[str, Any]) -> None:
    """RecordError for a field of the wrong type: a worker must count such an entry as bad,
    not fail on it later (an entry that stops every worker would stop the evidence)."""
    for name, value in meta.items():
        expected = _META_TYPES.get(name)
        if expected is None:
            continue  # unknown names fail in the constructor, with its message
        if not isinstance(value, expected) or isinstance(value, bool):
            raise RecordError(f"pair record field {name} is a {type(value).__name__}")
        if expected[0] is dict and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise RecordError(f"pair record field {name} must map text to text")


def _field_getter(fields: dict[Any, Any]) -> Callable[[str], bytes]:
    def get(name: str) -> bytes:
        value = fields.get(name.encode(), fields.get(name, b""))
        return value.encode() if isinstance(value, str) else value

    return get
