"""`[outputs] protocol = "auto"`: recognise each answer's protocol from its body.

Per body, in order: OIP v2 (`outputs` is a list of {name, data} tensors), OpenAI
(`choices`, or a `data:` event stream), MLflow (`predictions` for a `dataframe_split` /
`dataframe_records` request, or a bare list), TF-Serving / KServe v1 (`predictions`, or
columnar `outputs`). When nothing matches and `[outputs]` has label / proba / score paths,
those are tried last. Detection is per body, so a primary and a candidate may speak
different protocols; the comparison reports that as a contract difference.
"""

from __future__ import annotations

from analysis.adapters.base import ParsedOutput, UnparseableOutput, load_json
from analysis.adapters.jsonpath import JsonPathAdapter
from analysis.adapters.mlflow import MlflowAdapter
from analysis.adapters.oip_v2 import OipV2Adapter
from analysis.adapters.openai import OpenAIAdapter
from analysis.adapters.rows import RequestRows
from analysis.adapters.tfserving import TfServingAdapter
from common.settings import OutputSettings

_MLFLOW_REQUEST_MARKS = (b'"dataframe_split"', b'"dataframe_records"')


class AutoAdapter(RequestRows):
    """Detects the protocol of each answer and delegates to that protocol's adapter."""

    name = "auto"

    def __init__(self, outputs: OutputSettings) -> None:
        self.oip = OipV2Adapter(outputs)
        self.openai = OpenAIAdapter(outputs)
        self.mlflow = MlflowAdapter(outputs)
        self.tfserving = TfServingAdapter(outputs)
        has_paths = outputs.label or outputs.proba or outputs.score or outputs.text
        self.jsonpath = JsonPathAdapter(outputs) if has_paths else None

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Detect the answer's protocol and lift it."""
        if response_body[:1] != b"{" and response_body.lstrip()[:5] == b"data:":
            return self.openai.parse(request_body, response_body)
        doc = load_json(response_body, "response")
        fast = self.oip.fast.lift(doc)  # the usual OIP v2 answer: detected by lifting it
        if fast is not None:
            return fast
        adapter = detect(doc, request_body, self)
        if adapter is not None:
            return adapter.parse_json(doc)
        if self.jsonpath is not None:
            return self.jsonpath.parse_json(doc)
        kind = type(doc).__name__
        raise UnparseableOutput(f"auto: no known protocol in a {kind} answer{_keys(doc)}")


def _keys(doc: object) -> str:
    if not isinstance(doc, dict):
        return ""
    for key in ("error", "message", "detail"):
        if key in doc:
            return f" (error body: {str(doc[key])[:200]})"
    return f" with keys {sorted(map(str, doc))[:8]}"


def _is_tensor_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(o, dict) and "name" in o and "data" in o for o in value)
    )


def detect(
    doc: object, request_body: bytes, adapters: AutoAdapter
) -> OipV2Adapter | OpenAIAdapter | MlflowAdapter | TfServingAdapter | None:
    """The adapter whose protocol this decoded answer speaks, if any."""
    if isinstance(doc, list):
        return adapters.mlflow
    if not isinstance(doc, dict):
        return None
    if _is_tensor_list(doc.get("outputs")):
        return adapters.oip
    if isinstance(doc.get("choices"), list):
        return adapters.openai
    if "predictions" in doc:
        mlflow = any(mark in request_body for mark in _MLFLOW_REQUEST_MARKS)
        return adapters.mlflow if mlflow else adapters.tfserving
    if "outputs" in doc:
        return adapters.tfserving
    return None
