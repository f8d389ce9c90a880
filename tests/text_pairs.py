"""Chat-completion pair records for the text-by-meaning tests and the llm demo: topics,
a primary's answers, rewordings of them, and wrong answers."""

from __future__ import annotations

import orjson

from common.records import OUTCOME_OK, PairRecord

TOPICS: dict[str, list[tuple[str, str, str]]] = {
    # topic -> (primary answer, a rewording, a wrong answer)
    "geography": [
        ("Paris is the capital of France.", "The capital of France is Paris.",
         "Lyon is the capital of France."),
        ("The Nile is the longest river in Africa.", "Africa's longest river is the Nile.",
         "The Congo is the longest river in Africa."),
    ],
    "cooking": [
        ("Boil the pasta for ten minutes in salted water.",
         "Cook the pasta in salted boiling water for about ten minutes.",
         "Bake the pasta at high heat for an hour without water."),
        ("Let the bread dough rise for an hour before baking.",
         "Before baking, leave the dough to rise for one hour.",
         "Put the bread dough straight into the freezer."),
    ],
    "billing": [
        ("Your invoice is sent on the first day of each month.",
         "We send your invoice on the 1st of every month.",
         "Invoices are never sent; you must call support."),
        ("You can pay by card or bank transfer.",
         "Card payments and bank transfers are both accepted.",
         "Only cash is accepted at our office."),
    ],
}  # fmt: skip


def chat_answer(text: str) -> bytes:
    """An OpenAI chat.completion body with one choice."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    return orjson.dumps({"object": "chat.completion", "choices": [choice]})


def chat_record(
    request_id: str, topic: str, primary: str, candidate: bytes | str, name: str = "llm"
) -> PairRecord:
    """One chat pair; `candidate` is the answer text (or a raw body for hostile cases)."""
    request = {"model": "m", "topic": topic, "messages": [{"role": "user", "content": topic}]}
    body = candidate if isinstance(candidate, bytes) else chat_answer(candidate)
    return PairRecord(
        request_id=request_id,
        candidate=name,
        ts_ms=1_700_000_000_000,
        method="POST",
        path="/v1/chat/completions",
        headers={"content-type": "application/json"},
        request_body=orjson.dumps(request),
        primary_status=200,
        primary_ms=50.0,
        primary_body=chat_answer(primary),
        candidate_outcome=OUTCOME_OK,
        candidate_status=200,
        candidate_ms=60.0,
        candidate_body=body,
    )
