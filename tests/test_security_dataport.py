"""Issue 12, data-port part: what one client can do to the evidence through request ids,
credentials and mirrored paths, on the real worker, real Redis and real servers."""

from __future__ import annotations

from contextlib import ExitStack

import httpx
import pytest
import redis
from proxy_upstreams import Primary, proxy_settings, running_proxy, wait_until
from servers import serve_app

from analysis.feedback import record_feedback
from analysis.report import build_report
from analysis.worker import Worker
from common.keys import Keys
from proxy.forward import RequestIds
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
