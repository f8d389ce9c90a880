"""Realistic pair records for worker tests: OIP-v2 bodies as MLServer writes them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
import redis

from analysis.worker import Worker
from common.records import OUTCOME_OK, PairRecord
from common.settings import Settings, settings_from_mapping

CLASSES = ("setosa", "versicolor", "virginica")
TS0 = 1_700_000_000_000  # a fixed arrival time (ms), start of a minute bucket


def oip_request(country: str, rows: int = 1, tenant: str = "acme") -> bytes:
    """An OIP-v2 request with a country per row (parameters carry the tenant)."""
    return orjson.dumps(
        {
            "parameters": {"tenant": tenant},
            "inputs": [
                {
                    "name": "features",
                    "shape": [rows, 2],
                    "datatype": "FP32",
                    "data": [5.1, 3.5] * rows,
                },
                {
                    "name": "country",
                    "shape": [rows, 1],
                    "datatype": "BYTES",
                    "data": [country] * rows,
                },
            ],
        }
    )


def oip_answer(
    probs: Sequence[Sequence[float]], classes: Sequence[str] = CLASSES, name: str = "predict_proba"
) -> bytes:
    """An OIP-v2 answer: a label tensor and a probability tensor, one row per input row."""
    labels = [classes[max(range(len(p)), key=p.__getitem__)] for p in probs]
    return orjson.dumps(
        {
            "model_name": "iris",
            "outputs": [
                {"name": "predict", "shape": [len(probs), 1], "datatype": "BYTES", "data": labels},
                {
                    "name": name,
                    "shape": [len(probs), len(classes)],
                    "datatype": "FP64",
                    "data": [x for p in probs for x in p],
                },
            ],
        }
    )


def record(
    request_id: str,
    primary: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]] | None,
    *,
    country: str = "FR",
    name: str = "v2",
    ts_ms: int = TS0,
    outcome: str = OUTCOME_OK,
    primary_ms: float = 10.0,
    candidate_ms: float = 12.0,
    role: str = "candidate",
    candidate_body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> PairRecord:
    """One pair record; `candidate` None with a non-ok outcome is a failed candidate."""
    rows = len(primary)
    if candidate_body is None:
        candidate_body = oip_answer(candidate) if candidate is not None else b""
    return PairRecord(
        request_id=request_id,
        candidate=name,
        ts_ms=ts_ms,
        method="POST",
        path="/v2/models/iris/infer",
        headers=headers or {"content-type": "application/json", "x-tenant": "acme"},
        request_body=oip_request(country, rows),
        primary_status=200,
        primary_ms=primary_ms,
        primary_body=oip_answer(primary),
        candidate_outcome=outcome,
        candidate_status=200 if outcome == OUTCOME_OK else 0,
        candidate_ms=candidate_ms,
        candidate_body=candidate_body,
        role=role,
    )


def write(
    client: redis.Redis, stream: str, records: Iterable[PairRecord], chunk: int = 2000
) -> int:
    """XADD records with a pipeline; returns how many were written."""
    pipe = client.pipeline(transaction=False)
    n = 0
    for rec in records:
        pipe.xadd(stream, rec.to_fields())
        n += 1
        if n % chunk == 0:
            pipe.execute()
    pipe.execute()
    return n


def settings(prefix: str, **worker: object) -> Settings:
    """Settings for worker tests: candidate v2, slices country (per row) and tenant (header)."""
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10, **worker},
        "candidates": [{"name": "v2", "url": "http://127.0.0.1:9"}],
        "slices": [
            {"name": "country", "from": "$.inputs[1].data[*]"},
            {"name": "tenant", "from": "header:x-tenant"},
        ],
    }
    return settings_from_mapping(raw, environ={})


def drain(worker: Worker) -> int:
    """Apply everything new in the worker's streams; returns the entries applied."""
    worker.discover()
    total = 0
    while done := worker.read_new(block=False):
        total += done
    return total
