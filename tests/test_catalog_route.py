"""The failure catalog from the admin port (the page's export links): the same JSONL as
`shadowtrial export`, as a download, filtered like the CLI, a read like the drill-down."""

from __future__ import annotations

import orjson
import pytest
from admin_harness import ALICE, INFER, Trial, run_worker, trial

from analysis.catalog import ExportTally, export_lines, filters_for


def _post(t: Trial, tenant: str) -> None:
    """One request through replica 0, with a secret header and a tenant."""
    headers = {"content-type": "application/json", "x-tenant": tenant,
               "authorization": "Bearer SECRET-TOKEN-123"}  # fmt: skip
    url = t.replicas[0].url + INFER
    assert t.http.post(url, content=b'{"inputs": [1, 2]}', headers=headers).status_code == 200


def test_the_catalog_download_is_what_the_cli_writes(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = {"capture_headers": ["content-type", "authorization", "x-tenant"]}
    slices = [{"name": "tenant", "from": "header:X-Tenant"}]
    with trial(redis_url, prefix, monkeypatch, proxy=proxy, slices=slices) as t:
        for tenant in ("acme", "beta", "acme"):
            _post(t, tenant)
        run_worker(t.conf, redis_url, 3)
        res = t.http.get(t.admin() + "/v1/candidates/v2/catalog?divergent=true")
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("application/x-ndjson")
        assert res.headers["content-disposition"] == 'attachment; filename="v2-cases.jsonl"'
        assert "SECRET-TOKEN-123" not in res.text
        lines = [orjson.loads(x) for x in res.content.splitlines()]
        client = t.redis
        filters = filters_for(client, t.keys, "v2", True, None, False)
        expected = list(export_lines(client, t.keys, t.conf, "v2", filters, ExportTally()))
        assert lines == orjson.loads(orjson.dumps(expected)) and len(lines) == 3
        assert all(x["catalog"]["why"] == ["divergent"] and "primary_body" in x for x in lines)

        acme = t.http.get(t.admin() + "/v1/candidates/v2/catalog?divergent=true&slice=tenant=acme")
        assert len(acme.content.splitlines()) == 2
        one = t.http.get(t.admin() + "/v1/candidates/v2/catalog?limit=1")
        assert len(one.content.splitlines()) == 1
        flips = t.http.get(t.admin() + "/v1/candidates/v2/catalog?flips=true")
        assert flips.status_code == 200 and flips.content == b""  # no labels yet
        for bad in ("slice=novalue", "limit=0", "flips=maybe"):
            res = t.http.get(t.admin() + f"/v1/candidates/v2/catalog?{bad}")
            assert res.status_code == 400, bad
        assert t.http.get(t.admin() + "/v1/candidates/nope/catalog").status_code == 404


def test_closed_reads_need_a_token_for_the_catalog(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trial(redis_url, prefix, monkeypatch, admin={"open_reads": False}) as t:
        path = t.admin() + "/v1/candidates/v2/catalog"
        assert t.http.get(path).status_code == 401
        assert t.http.get(path, headers=ALICE).status_code == 200
