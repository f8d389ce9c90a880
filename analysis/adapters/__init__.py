"""Output adapters: lift each wire protocol's answers into canonical predictions.

`select_adapter(settings.outputs)` gives the adapter for `[outputs] protocol`; "auto"
detects the protocol per body. Every adapter's `parse` raises only `UnparseableOutput`,
and `request_rows` / `rows_from_json` never raise (rows that cannot be told are `[]`).
"""

from __future__ import annotations

from analysis.adapters.auto import AutoAdapter
from analysis.adapters.base import OutputAdapter, ParsedOutput, Prediction, UnparseableOutput
from analysis.adapters.jsonpath import JsonPathAdapter
from analysis.adapters.mlflow import MlflowAdapter
from analysis.adapters.oip_v2 import OipV2Adapter
from analysis.adapters.openai import OpenAIAdapter
from analysis.adapters.tfserving import TfServingAdapter
from common.settings import OutputSettings

ADAPTERS: dict[str, type[OutputAdapter]] = {
    "auto": AutoAdapter,
    "oip-v2": OipV2Adapter,
    "tfserving": TfServingAdapter,
    "mlflow": MlflowAdapter,
    "openai": OpenAIAdapter,
    "jsonpath": JsonPathAdapter,
}

__all__ = [
    "ADAPTERS",
    "OutputAdapter",
    "ParsedOutput",
    "Prediction",
    "UnparseableOutput",
    "select_adapter",
]


def select_adapter(outputs: OutputSettings) -> OutputAdapter:
    """The adapter for `[outputs] protocol` (raises ConfigError for bad jsonpath paths)."""
    return ADAPTERS[outputs.protocol](outputs)  # type: ignore[call-arg]
