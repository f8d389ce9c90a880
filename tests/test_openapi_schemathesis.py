"""Property-based run of the admin API against its own OpenAPI document (schemathesis).

The real admin app of a real proxy replica, served by uvicorn on a free port, with a
valid token: whatever schemathesis sends within the document, the answer is never a
server error, conforms to the documented status codes and schemas, and is JSON where
the document says so. A bounded number of examples per operation keeps it well under a
minute.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from admin_harness import ALICE, Model, settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from proxy_upstreams import running_proxy
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from servers import serve_app

from control.openapi import OPERATIONS, Operation

EXAMPLES = 40
TOKEN_ENV = "ST_TOKEN_SCHEMATHESIS"


@pytest.fixture(scope="module")
def admin_url(redis_url: str) -> Iterator[str]:
    prefix = f"s{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, "alice=alice-token-000001")
        with serve_app(Model("old")) as primary, serve_app(Model("new")) as cand:
            candidates = [{"name": "v2", "url": cand}, {"name": "v3", "url": cand}]
            conf = settings(primary, prefix, TOKEN_ENV, candidates)
            with running_proxy(conf, redis_url) as px:
                yield px.admin
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def api_schema(admin_url: str) -> Any:
    return schemathesis.openapi.from_url(admin_url + "/openapi.json")


# DELETE last: the registered candidates stay for the other operations to reach.
ORDER = sorted(OPERATIONS, key=lambda op: op.method == "DELETE")


@pytest.mark.parametrize("op", ORDER, ids=lambda op: f"{op.method} {op.path}")
def test_no_server_errors_and_answers_as_documented(api_schema: Any, op: Operation) -> None:
    operation = api_schema[op.path][op.method]

    # Generated names mostly miss; the registered ones reach the real code paths too.
    @given(case=operation.as_strategy(), name=st.sampled_from([None, "v2", "v3"]))
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        derandomize=True,
        database=None,
    )
    def check(case: Any, name: str | None) -> None:
        if name is not None and "name" in (case.path_parameters or {}):
            case.path_parameters["name"] = name
        case.call_and_validate(
            headers=ALICE,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )

    check()
