"""Hostile text answers are counted as such in the report's text section, each kind on its
own (non-UTF-8, empty choices, interrupted streams, giant answers cut before embedding),
and never crash the worker or break the accounting."""

from __future__ import annotations

import redis

from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from common.settings import settings_from_mapping
from tests import pairs_factory as pf
from tests.text_pairs import chat_answer, chat_record

FINISHED = b'data: {"choices": [{"index": 0, "delta": {"content": "Paris."}}]}\n\ndata: [DONE]\n\n'
CUT = b'data: {"choices": [{"index": 0, "delta": {"content": "Par"}}]}\n\n'
ENDED = (
    b'data: {"choices": [{"index": 0, "delta": {"content": "Paris."}, "finish_reason": "stop"}]}'
)


def test_each_kind_of_hostile_answer_is_counted(redis_client: redis.Redis, prefix: str) -> None:
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "outputs": {"protocol": "openai", "text_agreement": "meaning", "text_max_chars": 1000},
        "candidates": [{"name": "llm", "url": "http://127.0.0.1:9"}],
    }
    settings = settings_from_mapping(raw, environ={})
    bad_utf8 = b'{"choices": [{"index": 0, "message": {"content": "\xff\xfe bad"}}]}'
    records = [
        chat_record("u", "t", "Paris.", bad_utf8),
        chat_record("e", "t", "Paris.", b'{"choices": []}'),
        chat_record("i", "t", "Paris.", CUT),  # no [DONE], no finish_reason
        chat_record("f", "t", "Paris.", FINISHED),
        chat_record("s", "t", "Paris.", ENDED),  # a finish reason is an end too
        chat_record("g", "t", "Paris.", "word " * 100_000),
        chat_record("ok", "t", "Paris.", "Paris."),
    ]
    both_empty = chat_record("ee", "t", "x", b'{"choices": []}')
    both_empty.primary_body = b'{"choices": []}'  # the primary's answer counts too
    records.append(both_empty)
    pf.write(redis_client, Keys(prefix).pairs("llm"), records)
    assert pf.drain(Worker(redis_client, settings)) == len(records)
    report = build_report(redis_client, Keys(prefix), settings, "llm", 3600, now=1_700_000_030)
    assert report["pairs"] == len(records)
    assert report["text"]["hostile"] == {
        "non_utf8": 1,
        "empty_choices": 3,
        "interrupted_stream": 1,
        "giant": 1,
    }
    assert report["unparseable"]["candidate"] == 1  # the non-UTF-8 one, still counted there


def test_the_section_exists_when_every_answer_was_hostile(
    redis_client: redis.Redis, prefix: str
) -> None:
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "outputs": {"protocol": "openai"},
        "candidates": [{"name": "llm", "url": "http://127.0.0.1:9"}],
    }
    settings = settings_from_mapping(raw, environ={})
    rec = chat_record("u", "t", "Paris.", b"\xff")
    rec.primary_body = chat_answer("Paris.")
    pf.write(redis_client, Keys(prefix).pairs("llm"), [rec])
    pf.drain(Worker(redis_client, settings))
    report = build_report(redis_client, Keys(prefix), settings, "llm", 3600, now=1_700_000_030)
    assert report["text"]["rows"] == 0 and report["text"]["hostile"]["non_utf8"] == 1


def test_the_page_shows_hostile_counts_tool_names_and_threshold(
    redis_client: redis.Redis, prefix: str, redis_url: str
) -> None:
    import time

    import httpx
    from servers import serve_app

    from tests.test_text_tools import _tool_answer
    from tests.ui_trial import entry, page_context, ui_app

    raw = {
        "redis": {"prefix": prefix, "url": redis_url},
        "worker": {"block_ms": 10},
        "outputs": {"protocol": "openai", "text_agreement": "meaning"},
        "candidates": [{"name": "llm", "url": "http://127.0.0.1:9"}],
    }
    settings = settings_from_mapping(raw, environ={})
    tools = chat_record("t", "t", "x", _tool_answer("refund"))
    tools.primary_body = _tool_answer("refund")
    records = [chat_record("i", "t", "Paris.", CUT), tools, chat_record("e", "t", "x", b"\xff")]
    for rec in records:
        rec.ts_ms = int(time.time() * 1000)
    pf.write(redis_client, Keys(prefix).pairs("llm"), records)
    pf.drain(Worker(redis_client, settings))
    with serve_app(ui_app(page_context(settings, redis_url, [entry("llm")]))) as base:
        page = httpx.get(f"{base}/ui/candidates/llm?window=1h", timeout=30).text
    assert "tool-call names match (1 rows with a call)" in page
    assert "threshold of meaning (configured)" in page
    assert "hostile answers" in page and "1 / 0 / 1 / 0" in page
