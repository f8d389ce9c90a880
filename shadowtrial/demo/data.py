"""The demo's data: Fair's extramarital-affairs survey, shipped inside statsmodels.

6,366 real answers from a 1974 Redbook survey (Fair, Journal of Political Economy, 1978).
The CSV file is read straight from the installed statsmodels package (no download, and
no import of statsmodels itself, which takes seconds). Categorical answers become the
words a client application would send (`religious = "not"`), so they make readable
slices. The target is whether the respondent reported any affair.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ShadowtrialError

NUMERIC = ("rate_marriage", "age", "yrs_married", "children", "educ")
CATEGORICAL = ("religious", "occupation", "occupation_husb")
FEATURES = NUMERIC + CATEGORICAL
# Codebook of the survey, most religious first (the order every model's encoder uses).
RELIGIOUS = ("strongly", "fairly", "mildly", "not")
_RELIGIOUS_BY_CODE = {1: "not", 2: "mildly", 3: "fairly", 4: "strongly"}
OCCUPATIONS = ("student", "unskilled", "white-collar", "skilled", "managerial", "professional")
CLASSES = ("affair", "none")
TENANTS = ("acme", "globex", "initech", "umbrella")
TENANT_SHARES = (0.4, 0.3, 0.2, 0.1)


@dataclass(frozen=True)
class Dataset:
    """Rows as columns (numbers as float, categories as words) and the label per row."""

    columns: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Dataset:
        """The rows at `index`, in that order."""
        return Dataset({k: v[index] for k, v in self.columns.items()}, self.labels[index])

    def row(self, i: int) -> dict[str, float | str]:
        """One row as {feature: value} with plain Python values."""
        return {
            k: (str(v[i]) if k in CATEGORICAL else float(v[i])) for k, v in self.columns.items()
        }


def fair_csv() -> Path:
    """Where statsmodels keeps fair.csv; ShadowtrialError when statsmodels is absent."""
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or spec.origin is None:
        raise ShadowtrialError(
            "the demo reads a dataset bundled with statsmodels: pip install 'shadowtrial[demo]'"
        )
    path = Path(spec.origin).parent / "datasets" / "fair" / "fair.csv"
    if not path.is_file():
        raise ShadowtrialError(f"statsmodels is installed but {path} is missing")
    return path


def load_fair(path: Path | None = None) -> Dataset:
    """Every row of the survey, categorical codes turned into words."""
    with (path or fair_csv()).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    number = {k: np.array([float(r[k]) for r in rows]) for k in (*NUMERIC, *CATEGORICAL)}
    columns: dict[str, np.ndarray] = {k: number[k] for k in NUMERIC}
    columns["religious"] = np.array([_RELIGIOUS_BY_CODE[int(c)] for c in number["religious"]])
    for name in ("occupation", "occupation_husb"):
        columns[name] = np.array([OCCUPATIONS[int(c) - 1] for c in number[name]])
    affairs = np.array([float(r["affairs"] or 0) for r in rows])
    return Dataset(columns, np.where(affairs > 0, CLASSES[0], CLASSES[1]))


def split(data: Dataset, seed: int) -> tuple[Dataset, Dataset]:
    """(training half, held-out half): the models learn on one, traffic replays the other."""
    order = np.random.default_rng(seed).permutation(len(data))
    half = len(data) // 2
    return data.take(order[:half]), data.take(order[half:])
