"""Text answers compared by meaning: the batch's differing texts embedded together.

With `outputs.text_agreement = "meaning"`, after a batch is evaluated every text row whose
two answers differ (after collapsing whitespace) gets the cosine similarity of their
embeddings (models.text_embedder), and agrees when it is at least `outputs.text_threshold`.
Identical texts agree with similarity 1 without being embedded. Answers are cut at
`outputs.text_max_chars` before embedding, so a giant answer costs what a long one does.
Everything downstream (agreement rate, slices, the gate, drill-down) reads `row.agree`, so
it all works on agreement by meaning.

Embedding happens here, in the worker, in batches; the proxy never embeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from analysis.compare import RowComparison
from analysis.decode import Item
from common.settings import OutputSettings


class MeaningJudge:
    """Re-judges a batch's text rows by embedding similarity (loaded once per worker)."""

    def __init__(self, outputs: OutputSettings, embedder: Any = None) -> None:
        self.threshold = outputs.text_threshold
        self.max_chars = outputs.text_max_chars
        if embedder is None:
            from models.text_embedder import TextEmbedder  # only when text_agreement = meaning

            embedder = TextEmbedder.load(outputs.text_model)
        self.embedder = embedder
        self.calibration: Any = None  # analysis.text_calibration.NoiseCalibration, if set

    def judge(self, items: Sequence[Item]) -> None:
        """Replace each text row of each evaluated item with its judgement by meaning."""
        todo: list[tuple[Any, int, RowComparison]] = []
        for item in items:
            ev = item.evidence
            if ev is None or ev.candidate_error or not ev.rows:
                continue
            rows = list(ev.rows)
            for i, row in enumerate(rows):
                if _is_text(row):
                    todo.append((rows, i, row))
            ev.rows = rows
        if not todo:
            return
        calibrated = self.calibration.threshold() if self.calibration is not None else None
        threshold = self.threshold if calibrated is None else calibrated
        marks = {"threshold": threshold, "calibrated": calibrated is not None}
        differing = [(rows, i, row) for rows, i, row in todo if not self._same(row)]
        for rows, i, row in todo:
            rows[i] = replace(row, agree=True, similarity=1.0, **marks)
        if differing:
            self._embed_and_judge(differing, threshold)

    def _same(self, row: RowComparison) -> bool:
        return _norm(row.primary.text) == _norm(row.candidate.text)

    def _embed_and_judge(
        self, differing: list[tuple[Any, int, RowComparison]], threshold: float
    ) -> None:
        texts: dict[str, int] = {}
        for _, _, row in differing:
            for text in (row.primary.text, row.candidate.text):
                texts.setdefault(text[: self.max_chars], len(texts))
        vectors = self.embedder.embed(list(texts))
        for rows, i, row in differing:
            a = vectors[texts[row.primary.text[: self.max_chars]]]
            b = vectors[texts[row.candidate.text[: self.max_chars]]]
            sim = round(float(np.clip(a @ b, -1.0, 1.0)), 4)
            cut = max(len(row.primary.text), len(row.candidate.text)) > self.max_chars
            rows[i] = replace(rows[i], agree=sim >= threshold, similarity=sim, text_cut=cut)


def _is_text(row: Any) -> bool:
    return (
        isinstance(row, RowComparison)
        and row.primary.text is not None
        and row.candidate.text is not None
        and row.primary.label is None
    )


def _norm(text: str) -> str:
    return " ".join(text.split())


__all__ = ["MeaningJudge"]
