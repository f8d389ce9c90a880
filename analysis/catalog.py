"""The failure catalog: pairs the trial found, as replay lines with the expected answer.

`shadowtrial export NAME --divergent --slice F=V -o cases.jsonl` reads candidate NAME's
pair records, judges each exactly as the worker does (analysis.evaluate), keeps those
that match every filter, and writes one JSONL line per pair in the format
`shadowtrial replay` reads (shadowtrial.commands.replay): the request as it was sent and
the primary's answer as `primary_body`, the answer the next candidate is expected to
give. `catalog` in each line says why it was kept. `--flips` keeps labelled negative
flips (primary right, candidate wrong), remembered by the label join (join.lua
join_flip) with their labels in `catalog.labels`. Replaying the file with `--check`
then judges the next candidate on exactly these cases (`check_pair`).

Bodies are written as text when they are UTF-8, else as `body_base64` /
`primary_body_base64` (binary tensors), so every request replays byte for byte. Redacted
headers are left out (the replay would send the placeholder).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from analysis.decode import Item
from analysis.evaluate import Evaluation
from analysis.summaries import SEP, PairEvidence, slice_items
from common.records import PairRecord
from common.settings import Settings

REDACTED = "[redacted]"  # what proxy.capture stores for a secret header
HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding"})


@dataclass(frozen=True)
class Filters:
    """What to keep: divergent pairs, pairs with a row in slice F=V, labelled negative flips.

    `flips` maps request id -> the labels of its rows the primary got right and the
    candidate wrong (`flip_labels`); None: not filtering on flips."""

    divergent: bool = False
    slice: tuple[str, str] | None = None
    flips: Mapping[str, list[str]] | None = None

    def keep(self, ev: PairEvidence) -> list[str]:
        """Why this pair is kept (empty: it is not). A failed primary is never a case."""
        if ev.primary_failure is not None:
            return []
        why = []
        if self.divergent:
            if all(ev.row_agreement()):
                return []
            why.append("divergent")
        if self.slice is not None:
            if not in_slice(ev, *self.slice):
                return []
            why.append(f"slice {self.slice[0]}={self.slice[1]}")
        if self.flips is not None:
            if ev.request_id not in self.flips:
                return []
            why.append("negative flip")
        return why or ["all"]


def flip_labels(entries: Iterable[bytes | str]) -> dict[str, list[str]]:
    """Request id -> labels of its negative flips, from the `Keys.flips` list (join key
    SEP label; a batch row's join key is id SEP row, analysis.feedback.join_key)."""
    flips: dict[str, list[str]] = {}
    for entry in entries:
        text = entry.decode("utf-8", "replace") if isinstance(entry, bytes) else entry
        *key, label = text.split(SEP)
        if key:
            flips.setdefault(key[0], []).append(label)
    return flips


def parse_slice(text: str) -> tuple[str, str]:
    """`F=V` as (F, V); ValueError when there is no '=' or no feature."""
    feature, sep, value = text.partition("=")
    if not sep or not feature:
        raise ValueError(f"--slice expects FEATURE=VALUE, got {text!r}")
    return feature, value


def in_slice(ev: PairEvidence, feature: str, value: str) -> bool:
    """Whether any row of the pair has `feature` = `value` (output-derived ones too)."""
    return any(
        (feature, value) in slice_items(ev, i, row, _identity)
        for i, row in enumerate(ev.primary_rows)
    )


def _identity(_feature: str, value: str) -> str:
    return value


def _body(key: str, raw: bytes) -> dict[str, str]:
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{key}_base64": base64.b64encode(raw).decode("ascii")}


def line(
    rec: PairRecord, ev: PairEvidence, why: list[str], labels: list[str] | None = None
) -> dict[str, Any]:
    """One replay line: the request, the expected (primary) answer, why it is a case, and
    the ground truth of its negative flips when it is one (`catalog.labels`)."""
    headers = {
        k: v for k, v in rec.headers.items() if v != REDACTED and k.lower() not in HOP_BY_HOP
    }
    agreement = ev.row_agreement()
    return {
        "request_id": rec.request_id,
        "method": rec.method,
        "path": (rec.path or "/") + (f"?{rec.query}" if rec.query else ""),
        "headers": headers,
        **_body("body", rec.request_body),
        **_body("primary_body", rec.primary_body),
        "primary_status": rec.primary_status,
        "primary_ms": rec.primary_ms,
        "primary_content_type": rec.primary_content_type,
        "catalog": {
            "candidate": rec.candidate,
            "why": why,
            "rows": len(agreement),
            "disagreeing": agreement.count(False),
            "candidate_outcome": ev.candidate_error or "ok",
            **({"labels": labels} if labels else {}),
        },
    }


@dataclass
class ExportTally:
    """Pairs read, kept, and the undecodable or unevaluable ones skipped (counted)."""

    read: int = 0
    kept: int = 0
    bad: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def select(
    settings: Settings,
    candidate: str,
    entries: Iterable[tuple[Any, Any]],
    filters: Filters,
    tally: ExportTally,
    batch: int = 200,
) -> Iterator[dict[str, Any]]:
    """The catalog lines of the stream entries (id, fields), judged in batches."""
    from analysis.decode import decode

    evaluation = Evaluation(settings)
    chunk: list[Item] = []
    for entry_id, fields in entries:
        chunk.append(decode(entry_id, fields))
        if len(chunk) >= batch:
            yield from _judge(evaluation, candidate, chunk, filters, tally)
            chunk = []
    yield from _judge(evaluation, candidate, chunk, filters, tally)


def _judge(
    evaluation: Evaluation, candidate: str, items: list[Item], filters: Filters, tally: ExportTally
) -> Iterator[dict[str, Any]]:
    evaluation.run(candidate, items)
    for item in items:
        tally.read += 1
        if item.record is None or item.evidence is None:
            tally.bad += 1
            continue
        why = filters.keep(item.evidence)
        if why:
            labels = (filters.flips or {}).get(item.evidence.request_id)
            tally.kept += 1
            for reason in why:
                tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
            yield line(item.record, item.evidence, why, labels)


def filters_for(
    client: Any, keys: Any, candidate: str, divergent: bool, where: str | None, flips: bool
) -> Filters:
    """The filters of one export (`--slice F=V` parsed, `--flips` read from Redis);
    ValueError names a bad slice. Shared by `shadowtrial export` and the admin route."""
    flip_map = flip_labels(client.lrange(keys.flips(candidate), 0, -1)) if flips else None
    return Filters(divergent, parse_slice(where) if where else None, flip_map)


def stream_entries(client: Any, stream: str, chunk: int = 500) -> Iterator[tuple[Any, Any]]:
    """A pair stream's entries, oldest first, read `chunk` at a time."""
    start = "-"
    while entries := client.xrange(stream, min=start, max="+", count=chunk):
        yield from entries
        start = "(" + entries[-1][0].decode()


def export_lines(
    client: Any, keys: Any, settings: Settings, candidate: str, filters: Filters,
    tally: ExportTally, limit: int | None = None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """At most `limit` catalog lines of the candidate's kept pairs matching `filters`."""
    lines = select(
        settings, candidate, stream_entries(client, keys.pairs(candidate)), filters, tally
    )
    for count, case in enumerate(lines):
        if limit is not None and count >= limit:
            return
        yield case


@dataclass
class CheckTally:
    """A replayed catalog judged: the cases, and the ids of those still failing."""

    cases: int = 0
    failing: list[str] = field(default_factory=list)
    rows: int = 0
    disagreeing: int = 0


def checker(settings: Settings, candidate: str) -> tuple[Callable[[PairRecord], None], CheckTally]:
    """A callback judging each replayed pair against its expected answer, and its tally.

    A case fails when any row disagrees with the expected answer or the candidate did
    not answer (timeout, error, unparseable): the same test the report applies."""
    evaluation = Evaluation(settings)
    tally = CheckTally()

    def check_pair(rec: PairRecord) -> None:
        item = Item(rec.request_id, record=rec)
        evaluation.run(candidate, [item])
        tally.cases += 1
        ev = item.evidence
        agreement = ev.row_agreement() if ev is not None else [False]
        tally.rows += len(agreement)
        tally.disagreeing += agreement.count(False)
        if ev is None or ev.primary_failure is not None or not all(agreement):
            tally.failing.append(rec.request_id)

    return check_pair, tally


__all__ = [
    "CheckTally",
    "ExportTally",
    "Filters",
    "checker",
    "export_lines",
    "filters_for",
    "flip_labels",
    "line",
    "parse_slice",
    "select",
    "stream_entries",
]
