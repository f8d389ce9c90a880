"""A training profile: each feature as the model saw it in training, from a data file.

`shadowtrial profile DATA.csv|.jsonl|.parquet -o profile.json` writes a `WatchState` of
the training rows (range, categories, histogram, missing counts), the reference the watch
compares live traffic with to find training/serving skew. CSV cells are text: an empty
cell is missing, a cell that parses as a finite or non-finite float is a number, anything
else a category. JSONL holds one JSON object (a row) per line; a line that is not one is
counted as unreadable. Parquet needs pandas with pyarrow (`pip install shadowtrial[parquet]`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from analysis.watch_state import DEFAULT_MAX_FEATURES, WatchState
from common.errors import ShadowtrialError

PROFILE_MAX_CATEGORIES = 1000  # a profile keeps more categories than a live window


class ProfileError(ShadowtrialError):
    """A data file or profile that cannot be read (`shadowtrial profile` / `watch`: exit 2)."""


def _cell(text: str) -> object:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _csv_rows(path: Path) -> Iterator[dict[str, object] | None]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        for row in csv.DictReader(handle):
            yield {str(k): _cell(v or "") for k, v in row.items() if k is not None}


def _jsonl_rows(path: Path) -> Iterator[dict[str, object] | None]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except (ValueError, RecursionError):
                doc = None
            yield doc if isinstance(doc, dict) else None


def _parquet_rows(path: Path) -> Iterator[dict[str, object] | None]:
    try:
        import pandas as pd

        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise ProfileError(f"reading {path.name} needs pyarrow: {exc}") from exc
    for record in frame.to_dict(orient="records"):
        yield {str(k): (v.item() if hasattr(v, "item") else v) for k, v in record.items()}


READERS = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".ndjson": _jsonl_rows,
           ".parquet": _parquet_rows}  # fmt: skip


def build_profile(
    path: Path,
    max_features: int = DEFAULT_MAX_FEATURES,
    max_categories: int = PROFILE_MAX_CATEGORIES,
) -> WatchState:
    """Every row of the data file counted into one state (ProfileError: unknown format)."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ProfileError(f"{path.name}: expected one of {', '.join(sorted(READERS))}")
    if not path.is_file():
        raise ProfileError(f"{path}: no such file")
    state = WatchState(max_features=max_features, max_categories=max_categories)
    try:
        _count(reader(path), state)
    except (OSError, csv.Error, ValueError) as exc:
        raise ProfileError(f"{path.name}: cannot be read ({exc})") from exc
    state.kinds = {name: state.features[name].kind() for name in state.features}
    return state


def _count(rows: Iterator[dict[str, object] | None], state: WatchState) -> None:
    for row in rows:
        state.requests += 1
        if row is None:
            state.unreadable += 1
        else:
            state.add_row(row)


def load_profile(path: Path) -> WatchState:
    """A profile written by `shadowtrial profile` (ProfileError when it is not one)."""
    try:
        return WatchState.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ProfileError(f"{path}: not a shadowtrial profile ({exc})") from exc
