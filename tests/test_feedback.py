"""Ground-truth labels join pairs by request id in either order, each counted once."""

from __future__ import annotations

import pytest
import redis

from analysis.feedback import record_feedback
from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from common.records import OUTCOME_TIMEOUT
from common.settings import WorkerSettings
from tests import pairs_factory as pf

SETOSA = [0.9, 0.06, 0.04]
VERSICOLOR = [0.1, 0.8, 0.1]
NOW = pf.TS0 / 1000 + 30


def _pairs() -> list:
    """r0..r3: both say setosa; r4, r5: candidate says versicolor; r6: candidate timed out."""
    records = [pf.record(f"r{i}", [SETOSA], [SETOSA]) for i in range(4)]
    records += [pf.record(f"r{i}", [SETOSA], [VERSICOLOR]) for i in (4, 5)]
    records.append(pf.record("r6", [SETOSA], None, outcome=OUTCOME_TIMEOUT))
    return records


# truth per request: a = both right, b = primary only, c = candidate only, d = both wrong
TRUTH = {"r0": "setosa", "r1": "setosa", "r2": "virginica", "r3": "setosa", "r4": "versicolor",
         "r5": "setosa", "r6": "setosa"}  # fmt: skip
EXPECTED = {"n": 7, "a": 3, "b": 2, "c": 1, "d": 1}  # r6: the timeout is wrong


def _labels(redis_client: redis.Redis, prefix: str) -> dict:
    report = build_report(redis_client, Keys(prefix), pf.settings(prefix), "v2", 3600, now=NOW)
    return report["labels"]


def _check(labels: dict) -> None:
    assert labels["n"] == EXPECTED["n"]
    assert labels["primary_accuracy"] == pytest.approx((EXPECTED["a"] + EXPECTED["b"]) / 7)
    assert labels["candidate_accuracy"] == pytest.approx((EXPECTED["a"] + EXPECTED["c"]) / 7)
    assert labels["negative_flips"] == EXPECTED["b"] and labels["positive_flips"] == EXPECTED["c"]
    assert labels["mcnemar_p"] == pytest.approx(1.0)  # exact binomial on min(2, 1) of 3


def test_labels_after_the_pairs(redis_client: redis.Redis, prefix: str) -> None:
    pf.write(redis_client, Keys(prefix).pairs("v2"), _pairs())
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    answers = [
        record_feedback(redis_client, Keys(prefix), rid, label) for rid, label in TRUTH.items()
    ]
    assert all(a == {"v2": "joined"} for a in answers)
    _check(_labels(redis_client, prefix))


def test_labels_before_the_pairs(redis_client: redis.Redis, prefix: str) -> None:
    worker = Worker(redis_client, pf.settings(prefix))
    worker.discover()  # the configured candidate is known before any pair
    answers = [
        record_feedback(redis_client, Keys(prefix), rid, label) for rid, label in TRUTH.items()
    ]
    assert all(a == {"v2": "pending"} for a in answers)
    pf.write(redis_client, Keys(prefix).pairs("v2"), _pairs())
    pf.drain(worker)
    _check(_labels(redis_client, prefix))


def test_a_label_is_counted_once_whatever_is_repeated(
    redis_client: redis.Redis, prefix: str
) -> None:
    pf.write(redis_client, Keys(prefix).pairs("v2"), _pairs()[:1])
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    assert record_feedback(redis_client, Keys(prefix), "r0", "setosa") == {"v2": "joined"}
    assert record_feedback(redis_client, Keys(prefix), "r0", "setosa") == {"v2": "pending"}
    assert _labels(redis_client, prefix)["n"] == 1


def test_integer_labels_match_class_names_written_as_text(
    redis_client: redis.Redis, prefix: str
) -> None:
    rec = pf.record("r0", [SETOSA], [SETOSA])
    rec.primary_body = rec.candidate_body = (
        b'{"outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [1]}]}'
    )
    pf.write(redis_client, Keys(prefix).pairs("v2"), [rec])
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    record_feedback(redis_client, Keys(prefix), "r0", 1)
    labels = _labels(redis_client, prefix)
    assert labels["n"] == 1 and labels["primary_accuracy"] == 1.0


def test_waiting_predictions_are_bounded(redis_client: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    settings = pf.settings(prefix, label_join_max=3, batch=2)
    pf.write(
        redis_client, keys.pairs("v2"), [pf.record(f"r{i}", [SETOSA], [SETOSA]) for i in range(10)]
    )
    pf.drain(Worker(redis_client, settings))
    base = keys.label_join("v2", "preds").encode()
    generations = [k for k in redis_client.scan_iter(match=base + b":*") if not k.endswith(b":gen")]
    # a generation rotates once it holds label_join_max (3) entries; only two are kept
    assert sorted(generations) == [base + b":1", base + b":2"]
    assert sum(redis_client.hlen(k) for k in generations) == 6
    join = WorkerSettings(label_join_max=3)
    assert record_feedback(redis_client, keys, "r0", "setosa", worker=join) == {"v2": "pending"}
    assert record_feedback(redis_client, keys, "r9", "setosa", worker=join) == {"v2": "joined"}
    assert _labels(redis_client, prefix)["n"] == 1


def test_feedback_refuses_labels_that_are_no_class() -> None:
    with pytest.raises(ValueError, match="label"):
        record_feedback(None, Keys("x"), "r0", {"not": "a label"})  # type: ignore[arg-type]


def test_a_label_after_rollup_counts_in_the_hour(redis_client: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    pf.write(redis_client, keys.pairs("v2"), _pairs())
    worker = Worker(redis_client, pf.settings(prefix), clock=lambda: pf.TS0 / 1000 + 10 * 3600)
    pf.drain(worker)
    assert worker.roll_up() == 1
    for rid, label in TRUTH.items():
        assert record_feedback(redis_client, keys, rid, label) == {"v2": "joined"}
    _check(_labels(redis_client, prefix))


def test_rows_of_a_batched_request_are_labelled_one_by_one(
    redis_client: redis.Redis, prefix: str
) -> None:
    """{"request_id", "row", "label"}: each row of a 3-row pair joins its own label; row 0
    is the request id alone, as for a single-row request."""
    primary = [SETOSA, SETOSA, VERSICOLOR]
    candidate = [SETOSA, VERSICOLOR, VERSICOLOR]
    pf.write(redis_client, Keys(prefix).pairs("v2"), [pf.record("b0", primary, candidate)])
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    keys = Keys(prefix)
    assert record_feedback(redis_client, keys, "b0", "setosa") == {"v2": "joined"}
    assert record_feedback(redis_client, keys, "b0", "setosa", row=1) == {"v2": "joined"}
    assert record_feedback(redis_client, keys, "b0", "versicolor", row=2) == {"v2": "joined"}
    assert record_feedback(redis_client, keys, "b0", "setosa", row=3) == {"v2": "pending"}
    labels = _labels(redis_client, prefix)
    assert labels["n"] == 3 and labels["negative_flips"] == 1  # row 1: only the primary
    assert labels["primary_accuracy"] == pytest.approx(1.0)


def test_rows_beyond_label_join_rows_do_not_wait(redis_client: redis.Redis, prefix: str) -> None:
    settings = pf.settings(prefix, label_join_rows=1)
    pf.write(redis_client, Keys(prefix).pairs("v2"), [pf.record("b1", [SETOSA] * 3, [SETOSA] * 3)])
    pf.drain(Worker(redis_client, settings))
    keys = Keys(prefix)
    assert record_feedback(redis_client, keys, "b1", "setosa") == {"v2": "joined"}
    assert record_feedback(redis_client, keys, "b1", "setosa", row=1) == {"v2": "pending"}


@pytest.mark.parametrize(
    ("primary", "candidate", "confidences", "scores"),
    [
        ("cat", "dog", (0.9, 0.4), (None, None)),
        ("a\x1fb", None, (float("nan"), 1.5), (float("inf"), -2.0)),
        ("", "", (None, -0.1), (3.0, float("nan"))),
    ],
)
def test_join_text_is_join_value_with_its_scores(
    primary: str, candidate: str | None, confidences: tuple, scores: tuple
) -> None:
    from analysis.feedback import join_text, join_value, join_value_scores

    expected = join_value_scores(join_value(60, primary, candidate, confidences), scores)
    assert join_text(60, primary, candidate, confidences, scores) == expected
