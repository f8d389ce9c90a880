"""A dispatcher's own /metrics (`shadowtrial dispatch --metrics-port`).

    shadowtrial_dispatch_total{candidate, outcome}    dispatched / expired / trimmed / bad,
                                                      and `taken_over` (another dispatcher
                                                      finished it first: nothing written)
    shadowtrial_dispatch_candidate_latency_seconds{candidate}   a dispatched call's answer time
    shadowtrial_dispatch_in_flight                    candidate calls running in this process
    shadowtrial_dispatch_queue_depth{candidate}       requests waiting (every dispatcher the same)
    shadowtrial_dispatch_lag_seconds{candidate}       age of the oldest waiting request

A registry of its own, so tests and several dispatchers in one process never share series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from common.dispatch_queue import QueueState

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class DispatchMetrics:
    """The dispatcher's counters, gauges and latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.outcomes = Counter(
            "shadowtrial_dispatch_total", "Request records a dispatcher finished, by outcome",
            ["candidate", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "shadowtrial_dispatch_candidate_latency_seconds",
            "A dispatched candidate call's answer time", ["candidate"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "shadowtrial_dispatch_in_flight", "Candidate calls running in this dispatcher",
            registry=self.registry,
        )  # fmt: skip
        self.depth = Gauge(
            "shadowtrial_dispatch_queue_depth", "Request records waiting for a dispatcher",
            ["candidate"], registry=self.registry,
        )  # fmt: skip
        self.lag = Gauge(
            "shadowtrial_dispatch_lag_seconds", "Age of the oldest request record waiting",
            ["candidate"], registry=self.registry,
        )  # fmt: skip

    def finished(self, candidate: str, outcome: str) -> None:
        """Count one request record finished (or taken over) here."""
        self.outcomes.labels(candidate, outcome).inc()

    def answered(self, candidate: str, seconds: float) -> None:
        """Record one candidate answer time."""
        self.latency.labels(candidate).observe(seconds)

    def queue(self, candidate: str, state: QueueState) -> None:
        """Set a candidate's queue gauges from a fresh read."""
        self.depth.labels(candidate).set(state.depth)
        self.lag.labels(candidate).set(state.lag_s)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve /metrics on `port` from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)


__all__ = ["DispatchMetrics"]
