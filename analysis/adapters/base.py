"""The canonical form every model answer is lifted into before two answers are compared.

Each wire protocol has its own adapter module (Diffy's "lifter"): it turns a request body
and a response body into a `ParsedOutput` of per-row `Prediction`s. Comparison, summaries
and statistics only ever see this form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

KIND_CLASSIFICATION = "classification"
KIND_REGRESSION = "regression"
KIND_TEXT = "text"


class UnparseableOutput(ValueError):
    """A body is not something the adapter understands (counted as `unparseable`)."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """One row of one model's answer, in canonical form. Unknown parts stay None."""

    label: str | None = None  # predicted class, as text
    probs: tuple[float, ...] | None = None  # class probabilities
    classes: tuple[str, ...] | None = None  # class names aligned with probs, when known
    score: float | None = None  # regression output (first element of a vector)
    vector: tuple[float, ...] | None = None  # full regression / embedding vector
    text: str | None = None  # generative answer
    confidence: float | None = None  # max probability (or first-token probability)
    margin: float | None = None  # top1 - top2 probability (binary: |2p - 1|)
    mean_logprob: float | None = None  # generative: mean token log-probability
    finish_reason: str | None = None  # generative: why the model stopped


@dataclass(frozen=True, slots=True)
class ContractField:
    """One element of an answer's shape: output name, datatype and per-row shape."""

    name: str
    datatype: str = ""
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class ParsedOutput:
    """A whole answer: its rows, what kind of model it looks like, and its contract."""

    protocol: str
    kind: str
    rows: tuple[Prediction, ...]
    contract: tuple[ContractField, ...] = field(default_factory=tuple)
    labels: tuple[str, ...] = ()  # class names the answer declares (for contract diffs)
    # True when shadowtrial produced this answer itself (an ONNX candidate): its protocol,
    # output names and datatypes are ours, not the model's, so they are no contract.
    synthetic: bool = False


class OutputAdapter(Protocol):
    """Lifts one protocol's answers into canonical predictions."""

    name: str

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Parse one answer; raise UnparseableOutput for anything not understood."""
        ...

    def request_rows(self, request_body: bytes) -> list[dict[str, object]]:
        """The request's rows as dicts (feature name -> value), for slicing per row."""
        ...
