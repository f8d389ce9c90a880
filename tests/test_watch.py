"""The watch's offline slice: feature rows, mergeable state, drift, profile and CLI."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from analysis.drift import DriftThresholds, compare_states, watch_report
from analysis.profile import build_profile
from analysis.watch_features import MAX_COLUMNS, feature_rows, watch_bodies
from analysis.watch_state import EDGES, OTHER, FeatureState, WatchState, bin_index
from shadowtrial.cli import main


def _oip(rows: list[list[float]], cities: list[str]) -> dict:
    return {
        "inputs": [
            {"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
             "data": [v for r in rows for v in r]},
            {"name": "city", "shape": [len(cities)], "datatype": "BYTES", "data": cities},
        ]
    }  # fmt: skip


def test_feature_names_follow_the_protocol() -> None:
    oip = feature_rows(_oip([[1.0, 2.0], [3.0, 4.0]], ["a", "b"]))
    assert oip == [{"x[0]": 1.0, "x[1]": 2.0, "city": "a"}, {"x[0]": 3.0, "x[1]": 4.0, "city": "b"}]
    assert feature_rows({"instances": [[5, "k"]]}) == [{"instances[0]": 5, "instances[1]": "k"}]
    assert feature_rows({"instances": [{"age": 3}]}, {"age": "years"}) == [{"years": 3}]
    assert feature_rows(_oip([[1.0, 2.0]], ["a"]), {"x[1]": "income"})[0]["income"] == 2.0
    assert feature_rows("not an object") == []
    replay_lines = [json.dumps({"body": {"instances": [[1.5]]}, "path": "/v1/predict"}),
                    json.dumps({"body": json.dumps({"instances": [[2.5]]})})]  # fmt: skip
    assert watch_bodies(replay_lines, WatchState()).features["instances[0]"].n_numeric == 2


def test_hostile_values_are_counted_and_memory_stays_bounded() -> None:
    state = WatchState(max_features=4, max_categories=3)
    giant = {"instances": [{"v": list(range(100_000))}]}
    bodies = [
        json.dumps({"instances": [{"n": "text", "c": "a"}, {"n": None}, {"n": [[1]]}]}),
        '{"instances": [{"n": NaN, "c": {"deep": 1}}]}',
        json.dumps(giant), "not json",
        json.dumps({"instances": [{"c": f"v{i}"} for i in range(50)]}),
    ]  # fmt: skip
    watch_bodies(bodies, state)
    n, c = state.features["n"], state.features["c"]
    assert (n.null, n.nan, n.categories) == (1, 1, {"text": 1})
    assert state.features["n[0]"].invalid == 1  # a nested list is not a feature value
    assert c.invalid == 1 and len(c.categories) <= 3 + 1 and c.categories[OTHER] >= 47
    assert list(state.features) == ["n", "c", "n[0]", "v[0]"]  # the rest of the giant row:
    assert state.over_cap == MAX_COLUMNS - 1  # counted, not kept
    assert state.unreadable == 1 and state.requests == 5


def test_bins_clamp_and_cover_zero() -> None:
    assert bin_index(1e30) == len(EDGES) - 2 and bin_index(-1e30) == 0
    assert EDGES[bin_index(0.0)] == 0.0 and EDGES[bin_index(-0.5) + 1] <= 0.0


def _state(rows: list[dict[str, object]]) -> WatchState:
    state = WatchState()
    for row in rows:
        state.add_row(row)
    return state


def test_states_merge_as_if_counted_together() -> None:
    rng = random.Random(3)
    rows = [{"a": rng.gauss(0, 1), "b": rng.choice("xyz"), "c": None} for _ in range(300)]
    merged = _state(rows[:120])
    merged.merge(WatchState.from_dict(json.loads(json.dumps(_state(rows[120:]).to_dict()))))
    together = _state(rows).to_dict()
    assert merged.features["a"].total == pytest.approx(together["features"]["a"].pop("sum"))
    merged_doc = merged.to_dict()
    merged_doc["features"]["a"].pop("sum")
    assert merged_doc == together


def _numeric(counts: dict[int, int]) -> FeatureState:
    return FeatureState(numeric=counts, present=sum(counts.values()), low=0.5, high=20.0)


def _one(reference: FeatureState, current: FeatureState, rows: int) -> dict:
    ref, cur = WatchState(rows=rows), WatchState(rows=rows)
    ref.features["f"], cur.features["f"] = reference, current
    return compare_states(ref, cur)[0]


def test_millions_do_not_flag_a_trivial_shift_and_a_real_one_is_flagged() -> None:
    base = bin_index(1.0)
    ref = _numeric({base + i: 1_000_000 for i in range(40)})
    trivial = _numeric({base + i: 1_000_000 + (5_000 if i >= 20 else 0) for i in range(40)})
    row = _one(ref, trivial, 40_000_000)
    assert row["p_adj"] < 1e-6 and row["drift"] < 0.01 and not row["flagged"]
    shifted = _numeric({base + i + 8: 1_000_000 for i in range(40)})
    assert _one(ref, shifted, 40_000_000)["flagged"]


def test_a_hundred_requests_do_not_flag_noise_over_many_features() -> None:
    rng = random.Random(7)

    def rows(n: int) -> list[dict[str, object]]:  # 30 features, one law
        return [{f"f{j}": rng.gauss(10, 2) for j in range(30)} | {"k": rng.choice("abc")}
                for _ in range(n)]  # fmt: skip

    flagged = compare_states(_state(rows(5000)), _state(rows(100)))
    assert [f["feature"] for f in flagged if f["flagged"]] == []


def test_skew_rates_against_a_training_profile() -> None:
    train = _state([{"age": float(a), "city": c} for a in range(20, 60) for c in ("p", "l")])
    live = _state([{"age": 70.0, "city": "new"}, {"age": 30.0, "city": "p"}, {"city": "p"}])
    rows = {r["feature"]: r for r in compare_states(train, live)}
    assert rows["city"]["unseen_rate"] == pytest.approx(1 / 3)
    assert rows["age"]["out_of_range_rate"] == pytest.approx(1 / 2)
    assert rows["age"]["missing_rate"] == pytest.approx(1 / 3)
    assert rows["age"]["reference_missing_rate"] == 0.0


def test_a_feature_training_never_had_is_reported_as_new() -> None:
    document = watch_report(_state([{"a": 1.0}]), _state([{"a": 1.0, "b": "x"}]), "profile")
    new = next(f for f in document["features"] if f["feature"] == "b")
    assert new["new"] is True and new["unseen_rate"] == 1.0 and new["drift"] is None
    json.dumps(document, allow_nan=False)  # strict JSON: undefined numbers are null


def _training_csv(path: Path, rng: random.Random) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["age", "city"])
        for _ in range(3000):
            writer.writerow([round(rng.gauss(40, 10), 1), rng.choice(["paris", "lyon", "nice"])])


def _requests(path: Path, rng: random.Random, shift: float, new_city: float) -> None:
    def city() -> str:
        return (
            "marseille\x1b[2J" if rng.random() < new_city else rng.choice(["paris", "lyon", "nice"])
        )

    lines = [json.dumps(_oip([[rng.gauss(40 + shift, 10)]], [city()])) for _ in range(400)]
    path.write_text("\n".join(lines) + "\n")


def test_profile_then_watch_flags_skew_end_to_end(tmp_path: Path, capsys) -> None:
    rng = random.Random(11)
    _training_csv(tmp_path / "train.csv", rng)
    _requests(tmp_path / "same.jsonl", rng, 0.0, 0.0)
    _requests(tmp_path / "drift.jsonl", rng, 6.0, 0.25)
    profile = tmp_path / "profile.json"
    assert main(["profile", str(tmp_path / "train.csv"), "-o", str(profile)]) == 0
    assert build_profile(tmp_path / "train.csv").rows == 3000
    watch = ["watch", "--reference", str(profile), "--rename", "x[0]=age"]
    assert main([*watch, "--requests", str(tmp_path / "same.jsonl"), "--json"]) == 0
    capsys.readouterr()
    assert main([*watch, "--requests", str(tmp_path / "drift.jsonl"), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert sorted(document["flagged"]) == ["age", "city"]
    city = next(f for f in document["features"] if f["feature"] == "city")
    assert 0.15 < city["unseen_rate"] < 0.35
    assert [v["value"] for v in city["unseen_values"]] == ["marseille\x1b[2J"]
    assert main([*watch, "--requests", str(tmp_path / "drift.jsonl")]) == 1
    shown = capsys.readouterr().out
    assert "DRIFT" in shown and "\x1b" not in shown


def test_bad_files_exit_with_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "data.txt").write_text("a\n1\n")
    (tmp_path / "bogus.json").write_text('{"version": 99}')
    (tmp_path / "r.jsonl").write_text("{}\n")
    assert main(["profile", str(tmp_path / "data.txt"), "-o", str(tmp_path / "p.json")]) == 2
    bogus = ["watch", "--reference", str(tmp_path / "bogus.json")]
    assert main([*bogus, "--requests", str(tmp_path / "r.jsonl")]) == 2
    assert main([*bogus, "--requests", str(tmp_path / "missing.jsonl")]) == 2
    assert "not a shadowtrial profile" in capsys.readouterr().err
    (tmp_path / "edited.json").write_text(
        json.dumps({"version": 1, "features": {"a": {"kind": "numeric", "numeric": {"99999": 3}}}})
    )
    edited = ["watch", "--reference", str(tmp_path / "edited.json")]
    assert main([*edited, "--requests", str(tmp_path / "r.jsonl")]) == 2


def test_thresholds_are_a_value_object() -> None:
    assert DriftThresholds().alpha == 0.01


def _replay_line(rng: random.Random, p_high: float, status: int = 200) -> str:
    p = min(max(rng.gauss(p_high, 0.05), 0.5), 0.999)
    label_first = rng.random() < 0.5
    probs = [p, 1 - p] if label_first else [1 - p, p]
    answer = {
        "model_name": "m",
        "outputs": [{"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": probs}],
    }
    body = {"instances": [[rng.gauss(0, 1)]]}
    return json.dumps({"body": body, "primary_body": answer, "primary_status": status})


def test_a_less_confident_primary_is_flagged_from_its_recorded_answers(
    tmp_path: Path, capsys
) -> None:
    rng = random.Random(5)
    old = [_replay_line(rng, 0.9) for _ in range(400)]
    new = [_replay_line(rng, 0.75) for _ in range(300)]
    new += [_replay_line(rng, 0.9, status=503), json.dumps({"body": {}, "primary_body": "x"})]
    (tmp_path / "old.jsonl").write_text("\n".join(old) + "\n")
    (tmp_path / "new.jsonl").write_text("\n".join(new) + "\n")
    files = ["--reference-requests", str(tmp_path / "old.jsonl")]
    assert main(["watch", *files, "--requests", str(tmp_path / "new.jsonl"), "--json"]) == 1
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert "confidence" in outputs["flagged"] and "class" not in outputs["flagged"]
    assert outputs["mean_confidence"] < outputs["reference_mean_confidence"] - 0.1
    assert (outputs["errors"], outputs["unreadable"]) == (1, 1)
    assert main(["watch", *files, "--requests", str(tmp_path / "new.jsonl")]) == 1
    assert "mean confidence" in capsys.readouterr().out


def test_hostile_feature_names_print_as_escapes(tmp_path: Path, capsys) -> None:
    evil = "\x1b[2Jfake\u202e"
    lines = [json.dumps({"instances": [{evil: i % 3, "k": "v"}]}) for i in range(40)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    files = ["--reference-requests", str(tmp_path / "a.jsonl"), "--requests"]
    assert main(["watch", *files, str(tmp_path / "a.jsonl")]) == 0
    shown = capsys.readouterr().out
    assert "\\x1b[2Jfake\\u202e" in shown and "\x1b" not in shown and "\u202e" not in shown


def test_watch_reads_the_pairs_a_stream_recorded(tmp_path: Path, redis_url: str, prefix: str,
                                                  redis_client, capsys) -> None:  # fmt: skip
    from pairs_factory import record, write

    from common.keys import Keys

    recs = [record(f"r{i}", [[0.8, 0.1, 0.1]], [[0.8, 0.1, 0.1]], country=c)
            for i, c in enumerate(["FR", "DE"] * 30)]  # fmt: skip
    write(redis_client, Keys(prefix).pairs("v2"), recs)
    config = tmp_path / "shadowtrial.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n')
    old = [json.dumps({"body": r.request_body.decode(), "primary_body": r.primary_body.decode()})
           for r in recs]  # fmt: skip
    (tmp_path / "old.jsonl").write_text("\n".join(old) + "\n")
    args = ["watch", "--reference-requests", str(tmp_path / "old.jsonl"), "-c", str(config)]
    assert main([*args, "--from-stream", "v2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["requests"] == 60 and document["outputs"]["requests"] == 60
    names = {f["feature"] for f in document["features"]}
    assert {"features[0]", "features[1]", "country[0]"} <= names
    assert main([*args, "--from-stream", "nothing", "--json"]) == 0  # an empty stream: no rows
    assert json.loads(capsys.readouterr().out)["requests"] == 0


def test_huge_integers_and_deep_nesting_are_counted_not_raised() -> None:
    state = watch_bodies(
        ['{"instances": [{"n": 1' + "0" * 400 + "}]}", "[" * 100_000 + "]" * 100_000], WatchState()
    )
    assert state.features["n"].nan == 1  # beyond a float: counted with the infinities
    assert state.unreadable == 1 and state.requests == 2


def test_the_request_is_the_unit_a_batch_of_copies_is_not_evidence() -> None:
    """20 requests of 50 identical rows each: 1,000 rows but 20 draws of the law."""
    rng = random.Random(13)
    reference = _state([{"a": rng.gauss(0, 1)} for _ in range(5000)])
    reference.requests = 5000
    batched = WatchState()
    for _ in range(20):
        value = rng.gauss(0, 1)
        watch_bodies([json.dumps({"instances": [{"a": value}] * 50})], batched)
    row = compare_states(reference, batched)[0]
    assert row["count"] == 1000 and row["p_adj"] > 0.01 and not row["flagged"]
