"""Pipeline stage 1, decode: stream entries into `Item`s.

An entry is a pair record, a bad record (kept, counted as `bad`), or an id the stream no
longer holds (`trimmed`: XCLAIM found it gone). Nothing here raises for hostile bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from analysis.summaries import PairEvidence
from common.records import PairRecord, RecordError

log = logging.getLogger("shadowtrial.worker")


@dataclass(slots=True)
class Item:
    """One stream entry of a batch: a pair understood, a bad record, or a trimmed id."""

    id: str
    trimmed: bool = False  # the stream no longer holds it (trimmed before it was applied)
    record: PairRecord | None = None
    evidence: PairEvidence | None = None
    unparseable: tuple[str, str] | None = None  # (side, reason)
    contract: list[Any] = field(default_factory=list)  # ContractDiff

    @property
    def ts_ms(self) -> int:
        """Arrival time: the record's, else the stream id's milliseconds."""
        return self.record.ts_ms if self.record else int(self.id.partition("-")[0])


def decode(entry_id: Any, fields: Any) -> Item:
    """One stream entry (fields None: trimmed) as an Item."""
    item = Item(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
    item.trimmed = fields is None
    if fields:
        try:
            item.record = PairRecord.from_fields(fields)
        except RecordError as exc:
            log.warning("entry %s is not a pair record: %s", item.id, exc)
    return item


__all__ = ["Item", "decode"]
