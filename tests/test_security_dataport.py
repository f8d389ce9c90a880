"""Issue 12, data-port part: what one client can do to the evidence through request ids,
credentials and mirrored paths, on the real worker, real Redis and real servers."""

from __future__ import annotations

import os
from contextlib import ExitStack

import httpx
import pytest
import redis
from proxy_upstreams import Primary, proxy_settings, running_proxy, wait_until
from servers import serve_app

from analysis.feedback import record_feedback
from analysis.report import build_report
from analysis.worker import Worker
from common.errors import ConfigError
from common.keys import Keys
from common.settings import settings_from_mapping
from proxy.capture import StreamBudget
from proxy.forward import RequestIds
from proxy.paths import compile_patterns, normalise
from tests import pairs_factory as pf

SETOSA = [0.9, 0.06, 0.04]
VERSICOLOR = [0.1, 0.8, 0.1]
NOW = pf.TS0 / 1000 + 30
INFER = "/v2/models/m/infer"


def _labels(client: redis.Redis, prefix: str) -> dict:
    report = build_report(client, Keys(prefix), pf.settings(prefix), "v2", 3600, now=NOW)
    return report["labels"]


def test_generated_request_ids_cannot_be_predicted() -> None:
    """Issue 12 bug 3: ids were a per-process prefix plus a counter, so one id gave away
    every later one. Now no two ids share even their first half."""
    ids = RequestIds()
    made = [ids.new() for _ in range(1000)]
    assert len(set(made)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in made)
    assert len({i[:16] for i in made}) == 1000
    assert len({i[-16:] for i in made}) == 1000


def test_a_forked_process_never_repeats_its_parents_ids() -> None:
    """Ids come from a buffer of CSPRNG bytes: a forked child must not reuse the rest."""
    ids = RequestIds()
    ids.new()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id, then out without running anything else
        os.write(write_end, ids.new().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    os.close(write_end)
    assert len(child) == 32 and child != ids.new()


@pytest.mark.parametrize("one_batch", [True, False], ids=["same-batch", "later-batch"])
def test_a_client_reusing_request_ids_cannot_change_labelled_accuracy(
    redis_client: redis.Redis, prefix: str, one_batch: bool
) -> None:
    """Issue 12 bug 3: a later pair with the same id overwrote the waiting predictions,
    so a client could make the candidate's labelled accuracy 0. First pair wins now, and
    the repeats are counted."""
    keys = Keys(prefix)
    honest = [pf.record(f"r{i}", [SETOSA], [SETOSA]) for i in range(3)]
    # The same ids again, with an answer on which the candidate is wrong.
    poison = [pf.record(f"r{i}", [SETOSA], [VERSICOLOR]) for i in range(3)]
    worker = Worker(redis_client, pf.settings(prefix))
    if one_batch:
        pf.write(redis_client, keys.pairs("v2"), honest + poison)
        pf.drain(worker)
    else:
        pf.write(redis_client, keys.pairs("v2"), honest)
        pf.drain(worker)
        pf.write(redis_client, keys.pairs("v2"), poison)
        pf.drain(worker)
    for i in range(3):
        assert record_feedback(redis_client, keys, f"r{i}", "setosa") == {"v2": "joined"}
    labels = _labels(redis_client, prefix)
    assert labels["n"] == 3
    assert labels["candidate_accuracy"] == 1.0
    assert labels["duplicate_ids"] == 3


def test_a_repeated_id_is_refused_when_the_first_pair_waits_in_the_older_generation(
    redis_client: redis.Redis, prefix: str
) -> None:
    """The waiting predictions rotate into two generations (label_join_max): a repeat of
    an id that now waits in the older one must not be stored in the newer one, where a
    label would find it first."""
    keys = Keys(prefix)
    settings = pf.settings(prefix, label_join_max=2, batch=1)
    honest = [pf.record(f"r{i}", [SETOSA], [SETOSA]) for i in range(3)]  # r2 rotates
    pf.write(redis_client, keys.pairs("v2"), [*honest, pf.record("r0", [SETOSA], [VERSICOLOR])])
    pf.drain(Worker(redis_client, settings))
    join = settings.worker
    assert record_feedback(redis_client, keys, "r0", "setosa", worker=join) == {"v2": "joined"}
    labels = _labels(redis_client, prefix)
    assert labels["n"] == 1 and labels["candidate_accuracy"] == 1.0
    assert labels["duplicate_ids"] == 1


CREDENTIALS = {
    "authorization": "Bearer s3cret",
    "cookie": "session=abc",
    "x-api-key": "k1",
    "api-key": "k2",
    "x-auth-token": "t1",
    "x-goog-api-key": "k3",
}


def _headers_seen(app: Primary) -> dict[str, list[str]]:
    (seen,) = [r for r in app.received if r["raw_path"] == INFER]
    out: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        out.setdefault(name, []).append(value)
    return out


def test_candidates_get_no_client_credentials_unless_they_opt_in_and_are_marked_shadow(
    redis_url: str, prefix: str
) -> None:
    """Issue 12, defaults: the client's Authorization, Cookie and API keys went to every
    candidate. Now only to one that sets forward_credentials; every mirrored request
    carries X-Shadowtrial-Shadow: 1 (a client's own value is replaced, not passed on)."""
    primary, plain, trusted = Primary(), Primary(), Primary()
    with ExitStack() as stack:
        urls = [stack.enter_context(serve_app(app)) for app in (primary, plain, trusted)]
        candidates = [
            {"name": "plain", "url": urls[1]},
            {"name": "trusted", "url": urls[2], "forward_credentials": True},
        ]
        settings = proxy_settings(urls[0], candidates, prefix=prefix)
        with running_proxy(settings, redis_url) as px:
            headers = {**CREDENTIALS, "x-shadowtrial-shadow": "0", "x-keep": "yes"}
            answer = httpx.post(px.url + INFER, content=b"{}", headers=headers, timeout=10)
            assert answer.status_code == 200
            wait_until(lambda: px.settled("plain") and px.settled("trusted"), what="mirrors")
            wait_until(lambda: plain.received and trusted.received, what="both candidates")
    at_primary, at_plain, at_trusted = (_headers_seen(a) for a in (primary, plain, trusted))
    for name, value in CREDENTIALS.items():
        assert at_primary[name] == [value]  # the primary's request is unchanged
        assert at_trusted[name] == [value]
        assert name not in at_plain, name
    assert at_primary["x-shadowtrial-shadow"] == ["0"]
    assert at_plain["x-shadowtrial-shadow"] == ["1"] == at_trusted["x-shadowtrial-shadow"]
    assert at_plain["x-keep"] == ["yes"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v2/models/m/infer", "/v2/models/m/infer"),
        ("/v2//models///m/infer", "/v2/models/m/infer"),
        ("/v2/models/%6D/infer", "/v2/models/m/infer"),
        ("/v2/models/m/./infer", "/v2/models/m/infer"),
        ("/v2/models/m/infer/../../../../payments/charge", "/payments/charge"),
        ("/../../v2/models/m/infer", "/v2/models/m/infer"),
        ("/v2/models/m/%2E%2E/%2e%2e/unload", "/v2/unload"),
        ("/v2/models/m%2Fx/infer", None),  # an encoded slash: servers disagree
        ("/v2/models/m%5Cx/infer", None),
        ("/v2/models/m\x00/infer", None),
        ("v2/models/m/infer", None),
        ("/v2/models/m%3Ainfer", "/v2/models/m%3Ainfer"),  # reserved: left encoded
    ],
)
def test_paths_are_normalised_before_matching(raw: str, expected: str | None) -> None:
    assert normalise(raw) == expected


def test_a_star_stays_within_one_segment() -> None:
    match = compile_patterns(["/v2/models/*/infer", "/api/**"]).fullmatch
    assert match("/v2/models/m/infer")
    assert not match("/v2/models/a/b/infer")
    assert not match("/v2/models/m/infer/extra")
    assert match("/api/a/b/c")
    assert not match("/apix")


def test_mirror_paths_must_be_absolute_globs() -> None:
    with pytest.raises(ConfigError, match=r'"\*\*" mirrors every path'):
        proxy_settings("http://127.0.0.1:1", mirror_paths=["*"])


def test_only_inference_paths_are_mirrored_by_default(redis_url: str, prefix: str) -> None:
    """Issue 12, defaults: mirror_paths = ["*"] mirrored POST /v1/payments/charge and
    model unload calls, `*` crossed `/` and `..` was not resolved. Now the default is the
    protocol's inference paths, matched on normalised paths."""
    primary, candidate = Primary(), Primary()
    sent = {
        "/v2/models/m/infer": True,
        "/v2//models/%6D/infer": True,
        "/v1/payments/charge": False,
        "/v2/repository/models/m/unload": False,
        "/v2/models/a/b/infer": False,
        "/v2/models/m/infer/../../../../v1/payments/charge": False,
        "/v2/models/m%2F..%2F..%2Fx/infer": False,
        "/invocations": False,  # an MLflow path: not oip-v2
    }
    with serve_app(primary) as primary_url, serve_app(candidate) as candidate_url:
        raw = {
            "proxy": {"primary": primary_url},
            "redis": {"prefix": prefix},
            "outputs": {"protocol": "oip-v2"},
            "candidates": [{"name": "c", "url": candidate_url}],
        }
        settings = settings_from_mapping(raw, environ={})
        assert settings.proxy.mirror_paths == ()
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as client:
            for path in sent:
                request = client.build_request("POST", px.url, content=b"{}")
                request.url = request.url.copy_with(raw_path=path.encode())
                assert client.send(request).status_code == 200
            wait_until(lambda: len(primary.received) == len(sent), what="all at the primary")
            wait_until(lambda: px.settled("c"), what="mirrors")
            assert px.sampled("c") == sum(sent.values())
    mirrored = {r["raw_path"] for r in candidate.received}
    assert mirrored == {p for p, m in sent.items() if m}


def test_a_client_sending_large_bodies_cannot_grow_a_stream_past_its_byte_budget(
    redis_url: str, prefix: str, redis_client: redis.Redis
) -> None:
    """Issue 12, defaults: Redis memory per pair was set by the client (bodies up to
    max_capture_bytes, kept for max_pairs entries). Now each candidate's stream also
    holds about redis.max_stream_bytes: 40 pairs of 20 KiB requests in a 128 KiB budget
    keep 2 (each pair holds the request and two echoed answers, ~60 KiB), and the bound
    follows the records' sizes back up when the bodies are small again."""
    budget = 128 * 1024
    primary, candidate = Primary(), Primary()
    with serve_app(primary) as primary_url, serve_app(candidate) as candidate_url:
        raw = {
            "proxy": {"primary": primary_url},
            "redis": {"prefix": prefix, "max_stream_bytes": budget},
            "candidates": [{"name": "c", "url": candidate_url}],
        }
        settings = settings_from_mapping(raw, environ={})
        stream = Keys(prefix).pairs("c")
        with running_proxy(settings, redis_url) as px, httpx.Client(timeout=10) as client:
            for i in range(40):
                body = b'{"x": "%s", "i": %d}' % (b"a" * 20_000, i)
                assert client.post(px.url + INFER, content=body).status_code == 200
            wait_until(lambda: px.settled("c"), what="mirrors")
            kept = redis_client.xlen(stream)
            used = redis_client.memory_usage(stream, samples=0)
            assert px.captured("c", "recorded") == 40
            for _ in range(120):  # small pairs: the bound follows the records' sizes back up
                assert client.post(px.url + INFER, content=b"{}").status_code == 200
            wait_until(lambda: px.settled("c"), what="mirrors")
            small = redis_client.xlen(stream)
    print(f"stream byte budget {budget // 1024} KiB: {kept} of 40 large pairs kept, "
          f"{used // 1024} KiB in Redis; then {small} entries after 120 small pairs")  # fmt: skip
    assert 2 <= kept <= 10, kept
    assert used < 2 * budget, used
    assert small >= 40


def test_the_stream_budget_follows_record_sizes() -> None:
    """The MAXLEN StreamBudget gives (used by capture and by `shadowtrial replay`): at most
    max_pairs, about max_bytes / the records' average size, never below 1."""
    budget = StreamBudget(max_pairs=1000, max_bytes=1_000_000)
    small = {b"m": b"x" * 100, b"q": b"{}", b"p": b"{}", b"c": b"{}"}
    large = {b"m": b"x" * 100, b"q": b"a" * 200_000, b"p": b"{}", b"c": b"{}"}
    assert budget.maxlen("s", small) == 1000  # ~306 B each: max_pairs binds
    lens = [budget.maxlen("s", large) for _ in range(200)]
    assert lens[-1] == 4  # ~200 KB each: the bytes bind
    assert lens == sorted(lens, reverse=True)  # it follows the average, not one record
    assert budget.maxlen("other", large) == 4  # per stream
    assert StreamBudget(10, 65_536).maxlen("s", {b"q": b"a" * 10**6}) == 1
