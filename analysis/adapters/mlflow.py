"""MLflow scoring server: `dataframe_split` / `dataframe_records` / `instances` / `inputs` in,
`{"predictions": ...}` out (scalars, lists, or DataFrame records as dicts).

MLflow 1.x answered with a bare JSON list; that is accepted too. The per-row lifting is the
same as TF-Serving's (see analysis.adapters.tfserving.lift_predictions).
"""

from __future__ import annotations

from analysis.adapters.base import ParsedOutput, UnparseableOutput, load_json
from analysis.adapters.rows import RequestRows
from analysis.adapters.tfserving import lift_predictions
from common.settings import OutputSettings


class MlflowAdapter(RequestRows):
    """The MLflow pyfunc scoring protocol."""

    name = "mlflow"

    def __init__(self, outputs: OutputSettings) -> None:
        self.classes = outputs.classes or None

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Lift an MLflow answer."""
        return self.parse_json(load_json(response_body, "response"))

    def parse_json(self, doc: object) -> ParsedOutput:
        """Lift an already decoded answer."""
        if isinstance(doc, list):
            return lift_predictions(doc, self.classes, self.name)
        if isinstance(doc, dict) and "predictions" in doc:
            return lift_predictions(doc["predictions"], self.classes, self.name)
        detail = ""
        if isinstance(doc, dict) and "error_code" in doc:
            detail = f" (error body: {str(doc.get('message', doc['error_code']))[:200]})"
        raise UnparseableOutput(f"mlflow: no `predictions` field{detail}")
