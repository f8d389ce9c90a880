"""Text by meaning: how fast the worker embeds (texts per second per core) and judges pairs.

    .venv/bin/python benchmarks/text_bench.py [--texts 512] [--threads 1]

Prints the numbers; RESULTS.md ("Text by meaning") records a run. Needs the `text` extra.
Texts are synthetic chat answers of 10-80 words (the length of a typical short answer);
every pair differs, so every pair is embedded (identical pairs cost nothing).
"""

from __future__ import annotations

import argparse
import random
import time

from analysis.adapters.base import Prediction
from analysis.compare import RowComparison
from analysis.decode import Item
from analysis.meaning import MeaningJudge
from analysis.summaries import PairEvidence
from common.settings import OutputSettings
from models.text_embedder import TextEmbedder

WORDS = (
    "the",
    "model",
    "returns",
    "a",
    "short",
    "summary",
    "of",
    "the",
    "input",
    "text",
    "and",
    "the",
    "answer",
    "is",
    "correct",
    "because",
    "prices",
    "rose",
    "in",
    "march",
    "while",
    "rain",
    "fell",
    "over",
    "paris",
    "and",
    "the",
    "invoice",
    "is",
    "sent",
    "monthly",
    "by",
    "mail",
)


def _texts(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 80))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(7)
    embedder = TextEmbedder.load(threads=args.threads)
    texts = _texts(args.texts, rng)
    embedder.embed(texts[:32])  # warm up
    start = time.perf_counter()
    embedder.embed(texts)
    per_s = args.texts / (time.perf_counter() - start)
    print(f"embed: {per_s:.0f} texts/s on {args.threads} thread(s)")
    judge = MeaningJudge(OutputSettings(text_agreement="meaning"), embedder)
    items = []
    for i in range(0, args.texts - 1, 2):
        row = RowComparison(False, Prediction(text=texts[i]), Prediction(text=texts[i + 1]))
        item = Item(id=str(i))
        item.evidence = PairEvidence(
            request_id=str(i), ts_ms=0, primary_ms=1.0, candidate_ms=1.0, rows=[row]
        )
        items.append(item)
    start = time.perf_counter()
    judge.judge(items)
    pairs_s = len(items) / (time.perf_counter() - start)
    print(f"judge: {pairs_s:.0f} differing pairs/s on {args.threads} thread(s)")


if __name__ == "__main__":
    main()
