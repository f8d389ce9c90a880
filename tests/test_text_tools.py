"""Tool / function-call name agreement for OpenAI answers, streamed or not: the adapter
keeps the called names, the worker counts the rows whose names match, the report rates it."""

from __future__ import annotations

import orjson
import redis

from analysis.adapters import select_adapter
from analysis.adapters.openai import MAX_CALLS
from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from common.settings import OutputSettings, settings_from_mapping
from tests import pairs_factory as pf
from tests.text_pairs import chat_record

ADAPTER = select_adapter(OutputSettings(protocol="openai"))


def _tool_answer(*names: str, legacy: str | None = None) -> bytes:
    fn = [{"name": n, "arguments": '{"q": 1}'} for n in names]
    calls = [{"id": f"call_{i}", "type": "function", "function": f} for i, f in enumerate(fn)]
    message: dict[str, object] = {"role": "assistant", "content": None}
    if calls:
        message["tool_calls"] = calls
    if legacy:
        message["function_call"] = {"name": legacy, "arguments": "{}"}
    return orjson.dumps({"choices": [{"index": 0, "message": message}]})


def _stream(*chunks: dict[str, object]) -> bytes:
    lines = [b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": c}]}) for c in chunks]
    return b"\n\n".join([*lines, b"data: [DONE]"]) + b"\n\n"


def test_tool_and_legacy_function_names_are_kept() -> None:
    (row,) = ADAPTER.parse(b"", _tool_answer("lookup_order", "refund")).rows
    assert row.tools == ("lookup_order", "refund")
    (row,) = ADAPTER.parse(b"", _tool_answer(legacy="get_weather")).rows
    assert row.tools == ("get_weather",) and "get_weather" in (row.text or "")
    (row,) = ADAPTER.parse(b"", b'{"choices": [{"message": {"content": "hi"}}]}').rows
    assert row.tools == ()


def test_streamed_tool_calls_are_reassembled_by_index() -> None:
    body = _stream(
        {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "lookup", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"id": '}}]},
        {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "refund", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "7}"}}]},
        {"function_call": {"name": "legacy_fn"}},
        {"function_call": {"arguments": "{}"}},
    )
    (row,) = ADAPTER.parse(b"", body).rows
    assert row.tools == ("lookup", "refund", "legacy_fn")
    assert '["lookup","{\\"id\\": 7}"]' in (row.text or "")


def test_hostile_tool_calls_are_bounded() -> None:
    chunks = [{"tool_calls": [{"index": i, "function": {"name": "x" * 10_000}}]}
              for i in range(-3, 5000)]  # fmt: skip
    (row,) = ADAPTER.parse(b"", _stream(*chunks)).rows
    assert len(row.tools) == MAX_CALLS and all(len(n) == 200 for n in row.tools)
    odd = b'{"choices": [{"message": {"tool_calls": [1, {"function": {"name": ["a"]}}]}}]}'
    (row,) = ADAPTER.parse(b"", odd).rows
    assert row.tools == ("", "['a']")


def test_the_report_rates_tool_name_agreement(redis_client: redis.Redis, prefix: str) -> None:
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "outputs": {"protocol": "openai"},
        "candidates": [{"name": "llm", "url": "http://127.0.0.1:9"}],
    }
    settings = settings_from_mapping(raw, environ={})
    same = _tool_answer("refund", "lookup")
    streamed_same = _stream(
        {"tool_calls": [{"index": 0, "function": {"name": "lookup", "arguments": "{}"}}]},
        {"tool_calls": [{"index": 1, "function": {"name": "refund", "arguments": "{}"}}]},
    )
    records = [
        chat_record("a", "t", "x", same),  # the primary answers text, the candidate calls
        chat_record("b", "t", "x", "plain text"),  # no tool on either side: not counted
    ]
    for i, candidate in enumerate([same, streamed_same, _tool_answer("delete_account")]):
        rec = chat_record(f"t{i}", "t", "x", candidate)
        rec.primary_body = _tool_answer("lookup", "refund")
        records.append(rec)
    pf.write(redis_client, Keys(prefix).pairs("llm"), records)
    assert pf.drain(Worker(redis_client, settings)) == 5
    report = build_report(redis_client, Keys(prefix), settings, "llm", 3600, now=1_700_000_030)
    # 4 rows where a tool was called; the names match in 2 (order does not matter)
    assert report["text"]["tool_calls"] == {"rows": 4, "name_agreement": 0.5}
