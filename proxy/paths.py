"""Which request paths may be mirrored: normalised paths matched against path globs.

A candidate must only ever see inference calls: mirroring `POST /v1/payments/charge` or a
model-unload call runs its side effect twice. So:

- The default (`proxy.mirror_paths` unset) is the inference paths of the configured
  `[outputs] protocol` (`INFERENCE_PATHS`; `auto` and `jsonpath`: all of them).
- A path is matched after normalisation: percent-encoded unreserved characters decoded
  (`%41` is `A`, `%2E` is `.`), `.` and `..` segments resolved, repeated slashes folded.
  A path that still holds an encoded `/` or `\\`, or a control character, matches nothing:
  servers disagree on what it means.
- Globs: `*` and `?` stay within one segment (`*` never crosses `/`); `**` spans any
  number of segments (`["**"]` mirrors every path).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_OIP_V2 = ("/v2/models/*/infer", "/v2/models/*/versions/*/infer")
_TFSERVING = tuple(
    f"/v1/models/*{middle}:{verb}"
    for middle in ("", "/versions/*", "/labels/*")
    for verb in ("predict", "classify", "regress")
)
_MLFLOW = ("/invocations",)
_OPENAI = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_ALL = (*_OIP_V2, *_TFSERVING, *_MLFLOW, *_OPENAI)
INFERENCE_PATHS: dict[str, tuple[str, ...]] = {
    "oip-v2": _OIP_V2,
    "tfserving": _TFSERVING,
    "mlflow": _MLFLOW,
    "openai": _OPENAI,
    "auto": _ALL,
    "jsonpath": _ALL,
}

_UNRESERVED = re.compile(r"%(4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|3[0-9]|2[DE]|5F|7E)", re.I)
_AMBIGUOUS = re.compile(r"%(2F|5C)|[\x00-\x1f\x7f]", re.I)


def normalise(raw_path: str) -> str | None:
    """The path as the patterns see it; None when it is ambiguous (see the module doc)."""
    path = _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), raw_path)
    if _AMBIGUOUS.search(path) or not path.startswith("/"):
        return None
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + trailing


def _glob(pattern: str) -> str:
    """One glob as a regular expression (`**` any depth, `*` and `?` within a segment)."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    table = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return "".join(table.get(p, re.escape(p)) for p in parts)


def compile_patterns(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regular expression matching a normalised path when any pattern does."""
    return re.compile("|".join(f"(?:{_glob(p)})" for p in patterns) or "(?!)")


def default_paths(protocol: str) -> tuple[str, ...]:
    """The inference paths of an `[outputs] protocol`: the default `mirror_paths`."""
    return INFERENCE_PATHS.get(protocol, _ALL)
