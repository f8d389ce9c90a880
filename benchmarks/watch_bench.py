"""The watch's error rates and cost, seeded (python benchmarks/watch_bench.py [--quick]).

- false flags (A/A): live rows drawn from the training law, against a 20,000-row profile,
  10 numeric and 2 categorical features; share of runs where any feature is flagged;
- trivia: a 0.02 SD mean shift seen over 200,000 rows (significant, too small to matter);
- repeated looks: the A/A case looked at every 25 requests (a dashboard refreshing);
- detection: one row per request, from a point on: a numeric feature moves 0.5 SD and a
  category training never saw takes 10% of traffic; requests until each is flagged;
- cost: microseconds per watched request (an OIP v2 body of 8 features) in the worker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from analysis.drift import compare_states
from analysis.watch_features import watch_bodies
from analysis.watch_state import EDGES, N_BINS, FeatureState, WatchState

CITIES = np.array(["paris", "lyon", "nice", "lille"])
P_CITIES = np.array([0.4, 0.3, 0.2, 0.1])


def _numeric(values: np.ndarray) -> FeatureState:
    bins = np.clip(np.searchsorted(EDGES, values, side="right") - 1, 0, N_BINS - 1)
    counts = np.bincount(bins, minlength=N_BINS)
    return FeatureState(
        numeric={int(i): int(counts[i]) for i in np.flatnonzero(counts)},
        present=len(values), low=float(values.min()), high=float(values.max()),
    )  # fmt: skip


def _categorical(values: np.ndarray) -> FeatureState:
    keys, counts = np.unique(values, return_counts=True)
    return FeatureState(categories=dict(zip(map(str, keys), map(int, counts), strict=True)),
                        present=len(values))  # fmt: skip


def draw(rng: np.random.Generator, n: int, shift: float = 0.0, new: float = 0.0) -> WatchState:
    """n rows: f0..f9 ~ N(50 + 10 j, 5) (f0 shifted by `shift` SD), c0 and c1 categorical."""
    state = WatchState(rows=n, requests=n)
    for j in range(10):
        values = rng.normal(50 + 10 * j + (5 * shift if j == 0 else 0.0), 5, n)
        state.features[f"f{j}"] = _numeric(values)
    for j in range(2):
        cities = rng.choice(CITIES, n, p=P_CITIES).astype(object)
        if j == 0 and new:
            cities[rng.random(n) < new] = "marseille"
        state.features[f"c{j}"] = _categorical(cities)
    return state


def false_flags(runs: int, sizes: tuple[int, ...], seed: int = 1) -> dict[int, float]:
    rng = np.random.default_rng(seed)
    reference = draw(rng, 20_000)
    return {
        n: sum(any(r["flagged"] for r in compare_states(reference, draw(rng, n)))
               for _ in range(runs)) / runs
        for n in sizes
    }  # fmt: skip


def trivia(runs: int, seed: int = 2) -> float:
    rng = np.random.default_rng(seed)
    reference = draw(rng, 200_000)
    flagged = 0
    for _ in range(runs):
        rows = compare_states(reference, draw(rng, 200_000, shift=0.02))
        flagged += any(r["flagged"] for r in rows if r["feature"] == "f0")
    return flagged / runs


def detection(runs: int, step: int = 25, limit: int = 2000, seed: int = 3) -> dict[str, float]:
    """Median requests (one row each) after the change until f0 and c0 are flagged."""
    rng = np.random.default_rng(seed)
    reference = draw(rng, 20_000)
    found: dict[str, list[int]] = {"f0": [], "c0": []}
    for _ in range(runs):
        seen: dict[str, int] = {}
        for n in range(step, limit + 1, step):
            rows = compare_states(reference, draw(rng, n, shift=0.5, new=0.1))
            for r in rows:
                if r["flagged"] and r["feature"] in found and r["feature"] not in seen:
                    seen[r["feature"]] = n
            if len(seen) == len(found):
                break
        for name in found:
            found[name].append(seen.get(name, limit + step))
    return {name: float(statistics.median(v)) for name, v in found.items()}


def repeated_looks(runs: int, step: int = 25, limit: int = 2000, seed: int = 5) -> float:
    """A/A, looked at every `step` requests up to `limit`: share of runs ever flagged.

    Each look is a fixed-sample test, so looking again and again at a growing window
    raises the false-flag rate above the single-look one (nothing here is anytime-valid).
    Fresh draws per look are a pessimistic stand-in for one growing window.
    """
    rng = np.random.default_rng(seed)
    reference = draw(rng, 20_000)
    ever = 0
    for _ in range(runs):
        ever += any(
            any(r["flagged"] for r in compare_states(reference, draw(rng, n)))
            for n in range(step, limit + 1, step)
        )
    return ever / runs


def cost(requests: int) -> float:
    rng = np.random.default_rng(4)
    bodies = [json.dumps({"inputs": [
        {"name": "x", "shape": [1, 7], "datatype": "FP32", "data": rng.normal(0, 1, 7).tolist()},
        {"name": "city", "shape": [1], "datatype": "BYTES", "data": [str(rng.choice(CITIES))]},
    ]}) for _ in range(requests)]  # fmt: skip
    start = time.perf_counter()
    watch_bodies(bodies, WatchState())
    return (time.perf_counter() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    runs = 20 if parser.parse_args().quick else 200
    print("false flags (any of 12 features), by rows:", false_flags(runs, (100, 1000, 10_000)))
    print("0.02 SD shift over 200,000 rows, flagged in:", trivia(max(runs // 10, 5)))
    print("requests until flagged (median):", detection(max(runs // 4, 5)))
    print("A/A looked at every 25 requests up to 2,000, ever flagged:",
          repeated_looks(max(runs // 10, 5)))  # fmt: skip
    print(f"worker cost: {cost(5000):.1f} us per watched request (8 features, OIP v2 JSON)")


if __name__ == "__main__":
    main()
