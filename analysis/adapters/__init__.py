"""Output adapters: lift each wire protocol's answers into canonical predictions.

`select_adapter(settings.outputs)` gives the adapter for `[outputs] protocol`; "auto"
detects the protocol per body. Whatever the protocol, the OIP v2 answers shadowtrial
writes for ONNX candidates (models.onnx_model) are understood too, so an explicit
`protocol = "tfserving"` still reads an ONNX candidate's answers. Every adapter's `parse`
raises only `UnparseableOutput`, and `request_rows` / `rows_from_json` never raise (rows
that cannot be told are `[]`).
"""

from __future__ import annotations

from analysis.adapters.auto import AutoAdapter
from analysis.adapters.base import OutputAdapter, ParsedOutput, Prediction, UnparseableOutput
from analysis.adapters.encoding import Decoding
from analysis.adapters.jsonpath import JsonPathAdapter
from analysis.adapters.mlflow import MlflowAdapter
from analysis.adapters.oip_v2 import OipV2Adapter
from analysis.adapters.openai import OpenAIAdapter
from analysis.adapters.rows import RequestRows
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


# Where an ONNX candidate's answer says it is ours (orjson writes it near the start).
_SYNTHETIC_MARK = b'"generator":"shadowtrial-onnx"'
_MARK_WITHIN = 512


class OnnxAware(RequestRows):
    """An explicit protocol's adapter that also reads ONNX candidates' OIP v2 answers."""

    def __init__(self, inner: OutputAdapter, outputs: OutputSettings) -> None:
        self.inner = inner
        self.name = inner.name
        self.oip = OipV2Adapter(outputs)

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Our own ONNX answers go to the OIP v2 adapter, everything else to the protocol's."""
        if _SYNTHETIC_MARK in response_body[:_MARK_WITHIN]:
            parsed = self.oip.parse(request_body, response_body)
            if parsed.synthetic:
                return parsed
        return self.inner.parse(request_body, response_body)


def select_adapter(outputs: OutputSettings) -> OutputAdapter:
    """The adapter for `[outputs] protocol` (raises ConfigError for bad jsonpath paths),
    decoding gzip / deflate answers first."""
    adapter = ADAPTERS[outputs.protocol](outputs)  # type: ignore[call-arg]
    if outputs.protocol not in ("auto", "oip-v2"):
        adapter = OnnxAware(adapter, outputs)
    return Decoding(adapter, outputs.max_decoded_bytes)
