"""The demo's models, trained in seconds with scikit-learn and exported with skl2onnx.

- v1, the primary: logistic regression, trained with a class weight that favours the
  "affair" class (more recall, less accuracy). The model in production today.
- v2, the candidate: gradient-boosted trees of depth 2, without the class weight. On
  held-out rows it is more accurate than v1.
- The flawed v2 is the same v2 trained on an export of the new feature store, which
  spells the survey answer `religious = "not"` as `"none"`. Live requests still say
  "not". v2's OrdinalEncoder has never seen "not"; its `handle_unknown` setting turns
  it into -1, which the trees read as "more religious than strongly". Nothing errors,
  aggregate accuracy stays better than v1's, and every non-religious respondent (a
  sixth of the traffic) is scored as if they were devout: training/serving skew.

Every model is a scikit-learn Pipeline with one ONNX input per request field, so the
same file serves over HTTP (shadowtrial.examples.model_server) and runs inside the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shadowtrial.demo.data import CATEGORICAL, NUMERIC, OCCUPATIONS, RELIGIOUS, Dataset

V1_CLASS_WEIGHT = {"affair": 1.5, "none": 1.0}
SKEWED_ANSWER = ("not", "none")  # (what live requests send, what v2's training data said)


@dataclass(frozen=True)
class TrainedModel:
    """One exported model and how it scored on held-out rows."""

    name: str
    path: Path
    accuracy: float
    estimator: Any


def frame(data: Dataset) -> Any:
    """The rows as the pandas DataFrame the pipelines take (named columns)."""
    import pandas as pd

    return pd.DataFrame({k: data.columns[k] for k in (*NUMERIC, *CATEGORICAL)})


def _encoder(religious: tuple[str, ...]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OrdinalEncoder

    encoder = OrdinalEncoder(
        categories=[list(religious), list(OCCUPATIONS), list(OCCUPATIONS)],
        handle_unknown="use_encoded_value",
        unknown_value=-1,
    )
    return ColumnTransformer(
        [("numbers", "passthrough", list(NUMERIC)), ("answers", encoder, list(CATEGORICAL))]
    )


def v1_pipeline() -> Any:
    """Logistic regression with a class weight: the primary."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(max_iter=1000, class_weight=V1_CLASS_WEIGHT)
    return Pipeline(
        [("encode", _encoder(RELIGIOUS)), ("scale", StandardScaler()), ("model", model)]
    )


def v2_pipeline(seed: int, religious: tuple[str, ...] = RELIGIOUS) -> Any:
    """Gradient-boosted depth-2 trees: the candidate."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    model = GradientBoostingClassifier(
        n_estimators=200, max_depth=2, learning_rate=0.05, random_state=seed
    )
    return Pipeline([("encode", _encoder(religious)), ("model", model)])


def skewed(data: Dataset) -> Dataset:
    """The training rows as the new feature store exported them ("not" spelled "none")."""
    live, exported = SKEWED_ANSWER
    columns = dict(data.columns)
    columns["religious"] = np.where(columns["religious"] == live, exported, columns["religious"])
    return Dataset(columns, data.labels)


def train(train_rows: Dataset, variant: str, seed: int) -> Any:
    """A fitted pipeline: variant is v1, good (v2) or flawed (v2 with the skew)."""
    if variant == "v1":
        return v1_pipeline().fit(frame(train_rows), train_rows.labels)
    if variant == "good":
        return v2_pipeline(seed).fit(frame(train_rows), train_rows.labels)
    if variant == "flawed":
        skew = skewed(train_rows)
        religious = tuple(SKEWED_ANSWER[1] if r == SKEWED_ANSWER[0] else r for r in RELIGIOUS)
        return v2_pipeline(seed, religious).fit(frame(skew), skew.labels)
    raise ValueError(f"unknown model variant {variant!r}")


def export(estimator: Any, path: Path) -> Path:
    """Write the pipeline as ONNX with one input per request field (strings for answers)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(k, FloatTensorType([None, 1])) for k in NUMERIC]
    inputs += [(k, StringTensorType([None, 1])) for k in CATEGORICAL]
    onx = to_onnx(estimator, initial_types=inputs, options={"zipmap": False}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return path


def build(
    folder: Path, candidate: str, seed: int, train_rows: Dataset, held_out: Dataset
) -> dict[str, TrainedModel]:
    """Train and export v1 and the chosen v2 ("good" or "flawed") into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = frame(held_out)
    out = {}
    for name, variant in (("v1", "v1"), ("v2", candidate)):
        estimator = train(train_rows, variant, seed)
        accuracy = float(np.mean(estimator.predict(rows) == held_out.labels))
        out[name] = TrainedModel(
            name, export(estimator, folder / f"{name}.onnx"), accuracy, estimator
        )
    return out
