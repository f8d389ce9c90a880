"""`shadowtrial export NAME --flips`: labelled negative flips (the primary right, the
candidate wrong) as catalog lines, whichever of label and pair arrived first."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis

from analysis.feedback import record_feedback
from analysis.worker import Worker
from common.keys import Keys
from shadowtrial import cli
from tests import pairs_factory as pf

SETOSA = [0.9, 0.06, 0.04]
VERSICOLOR = [0.1, 0.8, 0.1]
VIRGINICA = [0.1, 0.1, 0.8]


def _config(tmp_path: Path, redis_url: str, prefix: str) -> str:
    path = tmp_path / "shadowtrial.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n\n'
        '[[candidates]]\nname = "v2"\nurl = "http://127.0.0.1:9"\n\n'
        '[[slices]]\nname = "tenant"\nfrom = "header:x-tenant"\n'
    )
    return str(path)


def test_only_labelled_negative_flips_are_exported_with_their_labels(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    worker = Worker(redis_client, pf.settings(prefix))
    pf.write(
        redis_client,
        keys.pairs("v2"),
        [pf.record(f"same{i}", [SETOSA], [SETOSA]) for i in range(10)],
    )
    pf.drain(worker)
    # a label before its pair (joined by apply.lua), the rest after (feedback.lua)
    assert record_feedback(redis_client, keys, "neg0", "virginica") == {"v2": "pending"}
    records = [pf.record(f"neg{i}", [VIRGINICA], [VERSICOLOR]) for i in range(4)]
    records += [pf.record(f"pos{i}", [VERSICOLOR], [VIRGINICA]) for i in range(3)]
    records += [pf.record(f"both{i}", [VERSICOLOR], [SETOSA]) for i in range(2)]
    records += [pf.record("unlabelled", [VIRGINICA], [VERSICOLOR])]
    pf.write(redis_client, keys.pairs("v2"), records)
    pf.drain(worker)
    labels = {f"same{i}": "setosa" for i in range(10)} | {f"neg{i}": "virginica" for i in (1, 2, 3)}
    labels |= {f"pos{i}": "virginica" for i in range(3)} | {"both0": "virginica", "both1": "x"}
    for rid, label in labels.items():
        record_feedback(redis_client, keys, rid, label)

    cases = tmp_path / "flips.jsonl"
    assert cli.main(["export", "v2", "--flips", "-o", str(cases),
                     "-c", _config(tmp_path, redis_url, prefix)]) == 0  # fmt: skip
    lines = [orjson.loads(x) for x in cases.read_bytes().splitlines()]
    assert sorted(x["request_id"] for x in lines) == [f"neg{i}" for i in range(4)]
    assert all(x["catalog"]["why"] == ["negative flip"] for x in lines)
    assert all(x["catalog"]["labels"] == ["virginica"] for x in lines)
    assert all(x["catalog"]["disagreeing"] == 1 and "primary_body" in x for x in lines)


def test_flips_combine_with_the_other_filters(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    records = [pf.record("neg", [VIRGINICA], [VERSICOLOR]), pf.record("ok", [SETOSA], [SETOSA])]
    pf.write(redis_client, keys.pairs("v2"), records)
    pf.drain(Worker(redis_client, pf.settings(prefix)))
    record_feedback(redis_client, keys, "neg", "virginica")
    cfg = _config(tmp_path, redis_url, prefix)
    cases = tmp_path / "c.jsonl"
    assert cli.main(["export", "v2", "--flips", "--slice", "tenant=nobody", "-o", str(cases),
                     "-c", cfg]) == 0  # fmt: skip
    assert cases.read_bytes() == b""
    assert cli.main(["export", "v2", "--flips", "--divergent", "-o", str(cases), "-c", cfg]) == 0
    why = [orjson.loads(x)["catalog"]["why"] for x in cases.read_bytes().splitlines()]
    assert why == [["divergent", "negative flip"]]


@pytest.mark.parametrize("entries", [[b"a\x1fyes", b"a\x1f3\x1fno", b"junk"], []])
def test_flip_labels_groups_rows_by_request(entries: list[bytes]) -> None:
    from analysis.catalog import flip_labels

    got = flip_labels(entries)
    assert got == ({"a": ["yes", "no"]} if entries else {})
