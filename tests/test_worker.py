"""The worker in-process against real Redis: N workers leave the state one leaves, entries
taken over are applied once, trimmed entries are counted, slice values stay bounded."""

from __future__ import annotations

import random
import threading
import time

import pytest
import redis

from analysis.admission import admitted_values
from analysis.report import build_report
from analysis.slices import MAX_VALUES
from analysis.summaries import FLOAT_FIELDS
from analysis.worker import Worker
from common.keys import WORKER_GROUP, Keys
from common.records import OUTCOME_HTTP_ERROR, OUTCOME_OK, OUTCOME_TIMEOUT, PairRecord
from tests import pairs_factory as pf

COUNTRIES = ["FR", "DE", "US", "IT", "ES", "PL", "NL", "BE"]


def _probs(rng: random.Random) -> list[float]:
    raw = [rng.random() ** 3 for _ in range(3)]
    total = sum(raw)
    return [x / total for x in raw]


def _varied_records(n: int, seed: int = 7) -> list[PairRecord]:
    """Multi-row requests, flips, failures, several buckets, random latencies."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        rows = rng.choice([1, 1, 1, 2, 3])
        primary = [_probs(rng) for _ in range(rows)]
        candidate = [p if rng.random() < 0.8 else _probs(rng) for p in primary]
        outcome = rng.choices([OUTCOME_OK, OUTCOME_TIMEOUT, OUTCOME_HTTP_ERROR], [0.9, 0.05, 0.05])[
            0
        ]
        records.append(
            pf.record(
                f"r{i}",
                primary,
                candidate if outcome == OUTCOME_OK else None,
                country=rng.choice(COUNTRIES),
                ts_ms=pf.TS0 + i * 250,  # 4 pairs a second: several one-minute buckets
                outcome=outcome,
                primary_ms=rng.lognormvariate(2.5, 0.5),
                candidate_ms=rng.lognormvariate(2.7, 0.6),
            )
        )
    return records


def _state(client: redis.Redis, keys: Keys, candidate: str) -> dict[int, dict[str, bytes]]:
    starts = [int(s) for s in client.zrange(keys.bucket_index(candidate), 0, -1)]
    return {
        s: {k.decode(): v for k, v in client.hgetall(keys.bucket(candidate, s)).items()}
        for s in starts
    }


def _run_threads(workers: list[Worker]) -> None:
    def loop(w: Worker) -> None:
        w.discover()
        while w.read_new(block=False):
            pass

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)


def test_three_workers_leave_the_state_one_leaves(redis_url: str, prefix: str) -> None:
    records = _varied_records(1500)
    keys = Keys(prefix)
    clients = [redis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        pf.write(clients[0], keys.pairs("one"), [_renamed(r, "one") for r in records])
        pf.drain(Worker(clients[0], pf.settings(prefix, batch=100)))
        pf.write(clients[0], keys.pairs("three"), [_renamed(r, "three") for r in records])
        _run_threads([Worker(c, pf.settings(prefix, batch=37)) for c in clients[1:]])
        one, three = _state(clients[0], keys, "one"), _state(clients[0], keys, "three")
    finally:
        for c in clients:
            c.close()
    assert len(one) == 7 and sorted(one) == sorted(three)
    for start, fields in one.items():
        other = three[start]
        assert set(fields) == set(other), start
        for name, value in fields.items():
            if name in FLOAT_FIELDS:
                assert float(other[name]) == pytest.approx(float(value), rel=1e-9), name
            else:
                assert other[name] == value, (start, name)
    assert sum(int(f["records"]) for f in one.values()) == 1500


def _renamed(rec: PairRecord, name: str) -> PairRecord:
    fields = rec.to_fields()
    out = PairRecord.from_fields(fields)
    out.candidate = name
    return out


def test_entries_taken_over_are_applied_by_the_new_owner_only(
    redis_client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    stream = keys.pairs("v2")
    pf.write(
        redis_client,
        stream,
        [pf.record(f"r{i}", [[0.7, 0.2, 0.1]], [[0.7, 0.2, 0.1]]) for i in range(50)],
    )
    slow, fast = (
        Worker(redis_client, pf.settings(prefix)),
        Worker(redis_client, pf.settings(prefix)),
    )
    slow.discover()
    [(_, entries)] = redis_client.xreadgroup(WORKER_GROUP, slow.consumer, {stream: ">"}, count=50)
    # the slow worker stalls; another takes over 20 of its entries and applies them
    taken = [entry_id for entry_id, _ in entries[:20]]
    redis_client.xclaim(stream, WORKER_GROUP, fast.consumer, 0, taken)
    assert fast.processor.process("v2", entries[:20]) == 20
    # the slow worker wakes up with the whole batch: only its 30 remaining entries count
    assert slow.processor.process("v2", entries) == 30
    report = build_report(
        redis_client, keys, pf.settings(prefix), "v2", 3600, now=pf.TS0 / 1000 + 30
    )
    assert report["pairs"] == 50 and report["agreement"]["rate"] == 1.0
    assert redis_client.xpending(stream, WORKER_GROUP)["pending"] == 0


def test_idle_entries_of_a_dead_worker_are_claimed_and_trimmed_ones_counted(
    redis_client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    stream = keys.pairs("v2")
    pf.write(
        redis_client,
        stream,
        [pf.record(f"r{i}", [[0.7, 0.2, 0.1]], [[0.7, 0.2, 0.1]]) for i in range(10)],
    )
    settings = pf.settings(prefix, claim_idle_ms=100)
    dead = Worker(redis_client, settings)
    dead.discover()
    [(_, entries)] = redis_client.xreadgroup(WORKER_GROUP, dead.consumer, {stream: ">"}, count=10)
    redis_client.xdel(stream, entries[0][0])  # trimmed by the proxy before anyone applied it
    alive = Worker(redis_client, settings, clock=lambda: pf.TS0 / 1000 + 60)
    alive.discover()
    deadline = time.monotonic() + 10
    claimed = 0
    while claimed < 10 and time.monotonic() < deadline:
        claimed += alive.claim_idle()
    assert claimed == 10
    report = build_report(redis_client, keys, settings, "v2", 3600, now=pf.TS0 / 1000 + 60)
    assert report["records"]["trimmed"] == 1
    assert report["pairs"] == 9
    assert redis_client.xpending(stream, WORKER_GROUP)["pending"] == 0


def test_slice_values_beyond_the_cap_fold_into_other(
    redis_client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    records = [
        pf.record(f"r{i}", [[0.7, 0.2, 0.1]], [[0.7, 0.2, 0.1]], country=f"c{i:03d}")
        for i in range(70)
    ]
    pf.write(redis_client, keys.pairs("v2"), records)
    settings = pf.settings(prefix, batch=25)
    pf.drain(Worker(redis_client, settings))
    assert len(admitted_values(redis_client, keys, "v2", ["country"])["country"]) == MAX_VALUES
    report = build_report(redis_client, keys, settings, "v2", 3600, now=pf.TS0 / 1000 + 30)
    countries = {r["value"]: r["pairs"] for r in report["slices"] if r["slice"] == "country"}
    assert len(countries) == MAX_VALUES + 1
    assert countries["other"] == 20
    assert countries["c000"] == 1  # the first values seen are the ones admitted


def test_runtime_candidates_are_discovered_with_their_role(
    redis_client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    rec = pf.record("r1", [[0.7, 0.2, 0.1]], [[0.7, 0.2, 0.1]], name="late", role="secondary")
    pf.write(redis_client, keys.pairs("late"), [rec])
    assert pf.drain(Worker(redis_client, pf.settings(prefix))) == 1
    assert redis_client.hget(keys.candidates_seen(), "late") == b"secondary"
    assert redis_client.hget(keys.candidates_seen(), "v2") == b"candidate"  # configured


def test_rollup_into_hours_keeps_every_count(redis_client: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix)
    settings = pf.settings(prefix)
    hour0 = pf.TS0 // 1000 - pf.TS0 // 1000 % 3600
    records = _varied_records(600)
    for i, rec in enumerate(records):
        rec.ts_ms = hour0 * 1000 + i * 12_000  # one every 12 s: two hours
    pf.write(redis_client, keys.pairs("v2"), records)
    worker = Worker(redis_client, settings, clock=lambda: hour0 + 10 * 3600)
    pf.drain(worker)
    window = dict(now=hour0 + 7200 - 1, window_s=7200)

    def report() -> dict:
        return build_report(
            redis_client, keys, settings, "v2", window["window_s"], now=window["now"]
        )

    before = report()
    assert before["window"]["buckets"] == 120
    assert worker.roll_up() == 2
    assert worker.roll_up() == 0  # idempotent
    after = report()
    assert after["window"]["buckets"] == 2 and all(p["hour"] for p in after["timeline"])
    for section in (
        "pairs",
        "rows",
        "errors",
        "agreement",
        "flips",
        "confidence",
        "slices",
    ):
        assert after[section] == before[section], section
    # Latency counts are kept exactly; only the latency rule's clusters (time buckets) are
    # coarser after a rollup (docs/statistics.md, "Time buckets as clusters").
    latency_before, latency_after = dict(before["latency"]), dict(after["latency"])
    assert latency_after.pop("sequential")["candidate"]["n"] == 600
    latency_before.pop("sequential")
    assert latency_after == latency_before
    # a late pair for the first hour lands in a new bucket, counted beside the rollup
    late = _varied_records(1, seed=99)[0]
    late.ts_ms, late.request_id = hour0 * 1000 + 5_000, "late"
    pf.write(redis_client, keys.pairs("v2"), [late])
    pf.drain(worker)
    assert report()["pairs"] == 601
    assert worker.roll_up() == 1
    assert report()["pairs"] == 601 and report()["window"]["buckets"] == 2


def test_candidates_registered_at_runtime_are_joined_before_their_first_pair(
    redis_client: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    redis_client.hset(
        keys.registry(), "shadow", '{"name": "shadow", "role": "secondary", "sample": 1.0}'
    )
    worker = Worker(redis_client, pf.settings(prefix))
    worker.discover(scan=False)
    assert keys.pairs("shadow") in worker.streams
    assert redis_client.hget(keys.candidates_seen(), "shadow") == b"secondary"
    groups = redis_client.xinfo_groups(keys.pairs("shadow"))
    assert [g["name"] for g in groups] == [WORKER_GROUP.encode()]
