"""A `jsonpath` text field (`[outputs] text = "$.path"`): the adapter lifts a text answer,
and the worker compares it by meaning like an OpenAI answer."""

from __future__ import annotations

import orjson
import redis

from analysis.adapters import select_adapter
from analysis.adapters.base import KIND_TEXT
from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from common.settings import OutputSettings, settings_from_mapping
from tests import pairs_factory as pf
from tests.text_pairs import TOPICS, chat_record


def _answer(summary: object) -> bytes:
    return orjson.dumps({"output": {"summary": summary, "model": "x"}})


def test_a_text_path_lifts_text_rows() -> None:
    adapter = select_adapter(OutputSettings(protocol="jsonpath", text="$.output.summary"))
    out = adapter.parse(b"", _answer("Paris is the capital."))
    assert out.kind == KIND_TEXT and out.rows[0].text == "Paris is the capital."
    assert out.rows[0].label is None
    listed = adapter.parse(b"", orjson.dumps({"output": {"summary": ["a", {"b": 1}, 7]}}))
    assert [r.text for r in listed.rows] == ["a", '{"b":1}', "7"]
    auto = select_adapter(OutputSettings(text="$.output.summary"))  # protocol = auto
    assert auto.parse(b"", _answer("hi")).rows[0].text == "hi"


def test_jsonpath_text_is_compared_by_meaning(redis_client: redis.Redis, prefix: str) -> None:
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "outputs": {"protocol": "jsonpath", "text": "$.output.summary",
                    "text_agreement": "meaning"},
        "candidates": [{"name": "llm", "url": "http://127.0.0.1:9"}],
    }  # fmt: skip
    settings = settings_from_mapping(raw, environ={})
    records = []
    for topic, answers in TOPICS.items():
        for j, (primary, reworded, _) in enumerate(answers):
            rec = chat_record(f"{topic}{j}", topic, "", b"")
            rec.primary_body, rec.candidate_body = _answer(primary), _answer(reworded)
            records.append(rec)
    pf.write(redis_client, Keys(prefix).pairs("llm"), records)
    assert pf.drain(Worker(redis_client, settings)) == len(records)
    report = build_report(redis_client, Keys(prefix), settings, "llm", 3600, now=1_700_000_030)
    assert report["text"]["rows"] == len(records) and report["text"]["exact_rate"] == 0.0
    assert report["agreement"]["rate"] >= 0.8  # rewordings agree by meaning, not exactly
