"""`outputs.text_calibrate = true`: the worker judges meaning with the noise floor's
suggested threshold once a rewording secondary provides one, else with `text_threshold`;
the report's `text.threshold` says which judged the rows."""

from __future__ import annotations

import redis

from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from common.settings import settings_from_mapping
from tests import pairs_factory as pf
from tests.text_pairs import TOPICS, chat_record

NOW = 1_700_000_030.0


def test_the_noise_floor_threshold_is_used_once_there(
    redis_client: redis.Redis, prefix: str
) -> None:
    raw = {
        "redis": {"prefix": prefix},
        "worker": {"block_ms": 10},
        "outputs": {"protocol": "openai", "text_agreement": "meaning", "text_calibrate": True,
                    "text_threshold": 0.99},
        "candidates": [
            {"name": "llm", "url": "http://127.0.0.1:9"},
            {"name": "replica", "url": "http://127.0.0.1:9", "role": "secondary"},
        ],
    }  # fmt: skip
    settings = settings_from_mapping(raw, environ={})
    keys = Keys(prefix)
    clock = [NOW]
    worker = Worker(redis_client, settings, clock=lambda: clock[0])
    replica = [
        chat_record(f"r{topic}{k}{i}", topic, p, r, name="replica")
        for topic, answers in TOPICS.items()
        for k, (p, r, _) in enumerate(answers)
        for i in range(5)
    ]
    pf.write(redis_client, keys.pairs("replica"), replica)
    pf.drain(worker)  # no noise floor yet: the configured 0.99 judged these rows
    report = build_report(redis_client, keys, settings, "replica", 3600, now=NOW)
    assert report["text"]["threshold"] == {"used": 0.99, "source": "configured",
                                           "calibrated_rate": 0.0}  # fmt: skip
    suggested = report["text"]["noise_floor"]["suggested_threshold"]
    assert 0.5 < suggested < 0.9
    clock[0] += 61  # the worker re-reads the noise floor at most once a minute
    rewordings = [
        chat_record(f"{topic}{k}", topic, p, r)
        for topic, answers in TOPICS.items()
        for k, (p, r, _) in enumerate(answers)
    ]
    pf.write(redis_client, keys.pairs("llm"), rewordings)
    pf.drain(worker)
    report = build_report(redis_client, keys, settings, "llm", 3600, now=NOW)
    assert report["text"]["threshold"] == {"used": suggested, "source": "noise_floor",
                                           "calibrated_rate": 1.0}  # fmt: skip
    assert report["agreement"]["rate"] == 1.0  # each rewording is above the noise floor's p5
