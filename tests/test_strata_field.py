"""Strata keyed on a top-level JSON body field (`from = "$.tenant"`): through a real proxy
the same requests are mirrored as with a header stratum (sticky, the same on every
replica), hostile bodies count as the rest, and the body is only parsed when it matters."""

from __future__ import annotations

import httpx
import pytest
from proxy_upstreams import Candidate, Primary, running_proxy, wait_until
from servers import serve_app

from common.errors import ConfigError
from common.settings import settings_from_mapping
from proxy.mirror import StrataPolicy, sample_point
from proxy.routing import MirrorTarget

TENANT = [{"name": "tenant", "from": "$.tenant"}]
SMALL = [{"from": "$.tenant", "value": "small", "sample": 20}]


def _policy() -> StrataPolicy:
    return StrataPolicy(settings_from_mapping({"slices": TENANT, "strata": SMALL}).strata)


def test_a_body_field_stratum_is_sticky_on_every_replica(redis_url: str, prefix: str) -> None:
    ids = [f"req-{i}" for i in range(200)]
    expected = sorted(
        r for i, r in enumerate(ids) if sample_point(r) < (1.0 if i % 10 == 0 else 0.05)
    )
    cand = Candidate()
    with serve_app(Primary()) as primary_url, serve_app(cand) as cand_url:
        settings = settings_from_mapping(
            {"proxy": {"primary": primary_url, "mirror_paths": ["**"]},
             "redis": {"prefix": prefix},
             "candidates": [{"name": "c", "url": cand_url, "sample": 0.05}],
             "slices": TENANT, "strata": SMALL},
            environ={},
        )  # fmt: skip
        with (
            running_proxy(settings, redis_url) as a,
            running_proxy(settings, redis_url) as b,
            httpx.Client(timeout=10) as client,
        ):
            for i, rid in enumerate(ids):
                body = b'{"tenant": "%s", "x": [1]}' % (b"small" if i % 10 == 0 else b"big")
                url = (a if i % 2 else b).url + "/json"
                client.post(url, content=body, headers={"x-request-id": rid})
            wait_until(lambda: a.settled("c") and b.settled("c"), what="mirrors to finish")
    assert sorted(cand.request_ids) == expected
    assert sum(r in expected for r in ids[::10]) == 20  # every small request at 20 x 5%


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b'{"tenant": "small', b"[" * 5000 + b"]" * 5000,
     b'{"tenant": ["small"]}', b'{"tenant": "sm\\u0000all"}', b'{"other": "small"}',
     b'{"tenant": 1e999}', b"\xff\xfe{"],
)  # fmt: skip
def test_hostile_bodies_count_as_the_rest(body: bytes) -> None:
    assert _policy().factor([], body) == 1.0


def test_the_field_decides_and_a_header_would_win() -> None:
    policy = _policy()
    assert policy.factor([], b' {"tenant": "small"}') == 20.0
    assert policy.factor([("x-tenant", "big")], b'{"tenant": "small"}') == 20.0  # no header stratum
    assert policy.max_factor == 20.0
    target = MirrorTarget(runner=None, sample=0.01)  # type: ignore[arg-type]
    assert policy.worth(0.5, [target]) is False  # never chosen at 20 x 1%: no parse
    assert policy.worth(0.1, [target]) is True


def test_only_a_top_level_field_is_accepted() -> None:
    for source in ("$.a.b", "$[0]", "$.a[*]", "$."):
        with pytest.raises(ConfigError, match=r"\$\.field"):
            settings_from_mapping(
                {"slices": [{"name": "t", "from": source}],
                 "strata": [{"from": source, "value": "a", "sample": 2}]}, environ={},
            )  # fmt: skip
