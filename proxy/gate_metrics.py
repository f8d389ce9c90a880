"""The gate's evidence on /metrics: what a candidate does, not only the plumbing around it.

Progressive-delivery tools (Flagger, Argo Rollouts analysis templates) and existing
alerting read Prometheus, not the report API. `control.trials.TrialWatch` judges every
mirrored candidate once per `gate.check_interval_s` on the replica holding the
automation lease, and hands each verdict here:

    shadowtrial_candidate_verdict{candidate}          1 pass, 0 insufficient / not checked, -1 fail
    shadowtrial_candidate_agreement{candidate}        agreement on the gate's window
    shadowtrial_candidate_agreement_low / _high       its anytime-valid 95% bounds
    shadowtrial_candidate_gate_pairs{candidate}       pairs the verdict was judged on
    shadowtrial_candidate_gate_checked_timestamp_seconds{candidate}

Only the lease holder exports these series (query with `max by (candidate)` across
replicas); a replica that loses the lease, and a candidate no longer mirrored, drop theirs
so no stale verdict lingers (with `serve --workers N` they turn NaN). Candidate names are
registry names (validated there), so the label set is bounded by the registry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from proxy.metrics import multiprocess_mode

VERDICT_VALUES = {"pass": 1.0, "fail": -1.0}  # anything else (insufficient, not checked): 0


class GateGauges:
    """Per-candidate gate gauges on one metrics registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(
                name, doc, ["candidate"], multiprocess_mode="livemostrecent", registry=registry
            )

        self.verdict = gauge(
            "shadowtrial_candidate_verdict",
            "The gate's verdict on the candidate: 1 pass, 0 insufficient or not checked, -1 fail",
        )
        self.agreement = gauge(
            "shadowtrial_candidate_agreement", "Agreement with the primary on the gate's window"
        )
        self.low = gauge(
            "shadowtrial_candidate_agreement_low", "Anytime-valid 95% lower bound of agreement"
        )
        self.high = gauge(
            "shadowtrial_candidate_agreement_high", "Anytime-valid 95% upper bound of agreement"
        )
        self.pairs = gauge(
            "shadowtrial_candidate_gate_pairs", "Pairs the last verdict was judged on"
        )
        self.checked = gauge(
            "shadowtrial_candidate_gate_checked_timestamp_seconds",
            "When the gate last judged the candidate (Unix time)",
        )
        self._all = (self.verdict, self.agreement, self.low, self.high, self.pairs, self.checked)
        self.exported: set[str] = set()

    def judged(self, candidate: str, gate: dict[str, Any], now: float | None = None) -> None:
        """Export one verdict (a gate summary from control.decisions)."""
        self.verdict.labels(candidate).set(VERDICT_VALUES.get(gate.get("verdict", ""), 0.0))
        agreement = gate.get("agreement") or {}
        for metric, key in ((self.agreement, "rate"), (self.low, "cs_low"), (self.high, "cs_high")):
            value = agreement.get(key)
            if value is None:  # no compared answers yet: no sample rather than a made-up one
                _remove(metric, candidate)
            else:
                metric.labels(candidate).set(float(value))
        self.pairs.labels(candidate).set(float(gate.get("pairs") or 0))
        self.checked.labels(candidate).set(time.time() if now is None else now)
        self.exported.add(candidate)

    def keep_only(self, candidates: Iterable[str]) -> None:
        """Drop the series of every candidate not listed (ended, rejected, lease lost)."""
        keep = set(candidates)
        for gone in self.exported - keep:
            for metric in self._all:
                _remove(metric, gone)
        self.exported &= keep


def _remove(metric: Gauge, candidate: str) -> None:
    """Drop one series. prometheus-client cannot remove a series from the per-process
    files of `serve --workers N`: there a NaN, written later, is what "most recent" reads
    (and `max by` skips it)."""
    if multiprocess_mode():
        metric.labels(candidate).set(math.nan)
    else:
        metric.remove(candidate)


__all__ = ["VERDICT_VALUES", "GateGauges"]
