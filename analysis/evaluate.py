"""Pipeline stage 2, evaluate: each pair record into evidence.

Deferred ONNX candidates (`run = "worker"`) are run first on the batch's request bodies;
then both answers are parsed by the protocol adapter, compared row by row, and the
request's slice values read (and, with a training profile, the built-in skew slice of
analysis.skew); with `outputs.text_agreement = "meaning"` the batch's text
rows are then judged by embedding similarity (analysis.meaning). An adapter bug counts
the entry as bad, never stops the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.adapters import select_adapter
from analysis.adapters.base import ParsedOutput, UnparseableOutput
from analysis.compare import compare_outputs
from analysis.decode import Item
from analysis.jsonpath import compile_path
from analysis.meaning import MeaningJudge
from analysis.skew import SKEW_SLICE, SkewClassifier, classifier
from analysis.slices import SliceExtractor
from analysis.summaries import PairEvidence
from common.errors import CandidateError
from common.oip_binary import load_body
from common.records import (
    OUTCOME_DEFERRED,
    OUTCOME_ERROR,
    OUTCOME_HTTP_ERROR,
    OUTCOME_OK,
    OUTCOME_TIMEOUT,
    PairRecord,
)
from common.settings import Settings

log = logging.getLogger("shadowtrial.worker")

_TIMED_OUTCOMES = (OUTCOME_OK, OUTCOME_HTTP_ERROR, OUTCOME_TIMEOUT)


class Evaluator:
    """Turns one pair record into evidence: parse both answers, compare, slice."""

    def __init__(self, settings: Settings) -> None:
        self.adapter = select_adapter(settings.outputs)
        self.outputs = settings.outputs
        self.extractor = SliceExtractor(settings.slices)
        self.has_slices = bool(settings.slices)
        # The training profile's skew slice: the file of `[watch] profile` here; a worker
        # replaces this with analysis.skew.SkewSource (an uploaded profile, re-read).
        static = classifier(settings)
        self.skew_source: Callable[[], SkewClassifier | None] = lambda: static
        # Decode the request, and split it into rows, only when some slice reads them.
        paths = [
            compile_path(s.source) for s in settings.slices if not s.source.startswith("header:")
        ]
        self.needs_json = bool(paths)
        self.needs_rows = any(not p.has_wildcard for p in paths)

    def evaluate(self, item: Item, deferred: bool = False) -> None:
        """Fill `item.evidence` (and its diagnostics) from `item.record`."""
        rec = item.record
        assert rec is not None
        ev = item.evidence = PairEvidence(
            request_id=rec.request_id,
            ts_ms=rec.ts_ms,
            primary_ms=rec.primary_ms,
            candidate_ms=rec.candidate_ms if rec.candidate_outcome in _TIMED_OUTCOMES else None,
            deferred=deferred,
        )
        if not 200 <= rec.primary_status < 300:
            ev.primary_failure = "primary"
            return
        primary = self._parse(item, "primary", rec.primary_body)
        if primary is None:
            ev.primary_failure = "primary_unparseable"
            return
        ev.primary_rows = primary.rows
        ev.answer_flags += primary.flags
        skew = self.skew_source()
        if self.has_slices or skew is not None:
            ev.slice_rows = self._slices(rec, len(primary.rows), skew)
        if rec.candidate_outcome != OUTCOME_OK:
            ev.candidate_error = rec.candidate_outcome
            return
        if rec.candidate_body == rec.primary_body:
            candidate = primary  # the same bytes lift alike (a replica, an identical answer)
        else:
            parsed = self._parse(item, "candidate", rec.candidate_body)
            if parsed is None:
                ev.candidate_error = "unparseable"
                return
            candidate = parsed
        ev.answer_flags += candidate.flags  # per answer: an identical one counts twice
        comparison = compare_outputs(primary, candidate, self.outputs)
        item.contract = comparison.contract_diffs
        ev.contract_kinds = [d.kind for d in comparison.contract_diffs]
        if comparison.error:
            ev.candidate_error = "contract"
            item.contract = [*item.contract, _RowCount(comparison.error)]
        else:
            ev.rows = comparison.rows

    def _parse(self, item: Item, side: str, body: bytes) -> ParsedOutput | None:
        """One side's answer lifted, or None: the reason kept for the drill-down, counted."""
        assert item.record is not None and item.evidence is not None
        try:
            return self.adapter.parse(item.record.request_body, body)
        except UnparseableOutput as exc:
            item.unparseable = (side, str(exc))
            item.evidence.answer_flags += [exc.kind] if exc.kind else []
            return None

    def _slices(
        self, rec: PairRecord, n_rows: int, skew: SkewClassifier | None
    ) -> list[dict[str, str]]:
        request = None
        if (self.needs_json or skew is not None) and rec.request_body:
            try:
                request = load_body(rec.request_body)
            except ValueError:  # not JSON, nor binary tensors that fit: no row values
                request = None
        rows = (
            self.adapter.rows_from_json(request) if self.needs_rows and request is not None else []
        )
        values = self.extractor.row_values(rows, request, rec.headers, n_rows)
        if skew is not None:
            for row, label in zip(values, skew.labels(request, n_rows), strict=True):
                row[SKEW_SLICE] = label
        return values


@dataclass(frozen=True, slots=True)
class _RowCount:
    """A row-count mismatch shown among contract examples (counted as a candidate error)."""

    detail: str
    kind: str = "row_count"


class DeferredRunner:
    """Runs `run = "worker"` ONNX candidates on a batch's request bodies, vectorised."""

    RETRY_LOAD_S = 60.0

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._models: dict[str, Any] = {}
        self._load_errors: dict[str, tuple[float, CandidateError]] = {}

    def run(self, candidate: str, records: Sequence[PairRecord]) -> None:
        """Fill in the candidate's answer and latency share of every deferred record."""
        if not records:
            return
        started = time.perf_counter()
        try:
            answers = self._model(candidate).predict_bodies([r.request_body for r in records])
        except CandidateError as exc:
            answers = [exc] * len(records)
        share_ms = (time.perf_counter() - started) * 1000.0 / len(records)
        for rec, answer in zip(records, answers, strict=True):
            rec.candidate_ms = share_ms
            if isinstance(answer, CandidateError):
                rec.candidate_outcome, rec.candidate_error = answer.outcome, answer.detail
            else:
                rec.candidate_outcome, rec.candidate_status, rec.candidate_body = (
                    OUTCOME_OK,
                    200,
                    answer,
                )

    def _model(self, candidate: str) -> Any:
        model = self._models.get(candidate)
        if model is not None:
            return model
        failed = self._load_errors.get(candidate)
        if failed and self.clock() - failed[0] < self.RETRY_LOAD_S:
            raise failed[1]
        cand = self.settings.candidate(candidate)
        if cand is None or cand.onnx is None:
            raise CandidateError(
                OUTCOME_ERROR, "no ONNX model configured for this worker-run candidate"
            )
        from models.onnx_model import OnnxModel  # onnxruntime only where it is needed

        try:
            model = self._models[candidate] = OnnxModel.load(cand)
        except CandidateError as exc:
            self._load_errors[candidate] = (self.clock(), exc)
            log.error("cannot load the ONNX model of %s: %s", candidate, exc)
            raise
        return model


class Evaluation:
    """The stage: deferred candidates run, then every record of a batch evaluated."""

    def __init__(self, settings: Settings) -> None:
        self.evaluator = Evaluator(settings)
        self.deferred = DeferredRunner(settings)
        self.meaning: MeaningJudge | None = None
        if settings.outputs.text_agreement == "meaning":
            self.meaning = MeaningJudge(settings.outputs)  # ModelLoadError at start

    def run(self, candidate: str, items: Sequence[Item]) -> None:
        """Fill each item's evidence; an item that cannot be evaluated becomes bad."""
        records = [i for i in items if i.record is not None]
        deferred = [i for i in records if i.record.candidate_outcome == OUTCOME_DEFERRED]
        self.deferred.run(candidate, [i.record for i in deferred])
        deferred_ids = {i.id for i in deferred}
        for item in records:
            try:
                self.evaluator.evaluate(item, deferred=item.id in deferred_ids)
            except Exception:  # an adapter bug must not stop the evidence: count it as bad
                log.exception("cannot evaluate entry %s of %s", item.id, candidate)
                item.record, item.evidence = None, None
        if self.meaning is not None:
            self.meaning.judge(records)


__all__ = ["DeferredRunner", "Evaluation", "Evaluator"]
