"""The data port forwards every request unchanged and streams every answer back unchanged."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from proxy_upstreams import (
    BINARY_BODY,
    CHUNKS,
    GZIP_BODY,
    JSON_BODY,
    Primary,
    RunningProxy,
    proxy_settings,
    running_proxy,
)
from servers import free_port, serve_app

METHODS_WITH_BODY = ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GET"]


@pytest.fixture(scope="module")
def primary() -> Iterator[tuple[Primary, str]]:
    app = Primary()
    with serve_app(app) as url:
        try:
            yield app, url
        finally:
            app.sse_gate.open()


@pytest.fixture(scope="module")
def proxy(primary: tuple[Primary, str], redis_url: str) -> Iterator[RunningProxy]:
    with running_proxy(proxy_settings(primary[1], primary_timeout_ms=300), redis_url) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def raw_get(client: httpx.Client, url: str, **kw: object) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent on the wire (no decoding)."""
    with client.stream("GET", url, **kw) as response:  # type: ignore[arg-type]
        return response, b"".join(response.iter_raw())


def comparable(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The headers the proxy must pass unchanged: all but the date, the request id, and
    the X-Shadowtrial-Served-By it adds (which model answered: issue 18, the canary)."""
    added = {"date", "x-request-id", "x-shadowtrial-served-by"}
    return [(k, v) for k, v in headers.multi_items() if k not in added]


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/json", JSON_BODY), ("/binary", BINARY_BODY), ("/gzip", GZIP_BODY)],
)
def test_bodies_and_headers_pass_through_byte_exact(
    proxy: RunningProxy, primary: tuple[Primary, str], client: httpx.Client, path: str,
    expected: bytes,
) -> None:  # fmt: skip
    direct, direct_body = raw_get(client, primary[1] + path)
    proxied, proxied_body = raw_get(client, proxy.url + path)
    assert proxied_body == direct_body == expected
    assert proxied.status_code == direct.status_code == 200
    assert comparable(proxied.headers) == comparable(direct.headers)
    assert proxied.headers["x-shadowtrial-served-by"] == "primary"


def test_gzip_is_not_decompressed(proxy: RunningProxy, client: httpx.Client) -> None:
    response, body = raw_get(client, proxy.url + "/gzip")
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == len(GZIP_BODY) == len(body)


def test_chunked_answer_streams_through(proxy: RunningProxy, client: httpx.Client) -> None:
    response, body = raw_get(client, proxy.url + "/chunked")
    assert body == b"".join(CHUNKS)
    assert response.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.headers


def test_sse_event_reaches_client_before_upstream_sends_the_next(
    primary: tuple[Primary, str], redis_url: str
) -> None:
    app = Primary()  # its own gate: this test opens it
    with serve_app(app) as upstream, running_proxy(proxy_settings(upstream), redis_url) as px:
        try:
            with httpx.Client(timeout=10) as client, client.stream("GET", px.url + "/sse") as r:
                assert r.headers["content-type"] == "text/event-stream"
                lines = r.iter_lines()
                assert next(lines) == "data: one"
                # The upstream is still blocked before its second event: event one was
                # relayed on its own, not buffered with the rest.
                assert app.sse_gate.count == 1
                app.sse_gate.open()
                rest = [line for line in lines if line]
                assert rest == ["data: two"]
        finally:
            app.sse_gate.open()


def test_client_leaving_an_endless_stream_ends_the_relay(redis_url: str) -> None:
    app = Primary()
    with serve_app(app) as upstream, running_proxy(proxy_settings(upstream), redis_url) as px:
        try:
            with httpx.Client(timeout=10) as client, client.stream("GET", px.url + "/sse") as r:
                assert next(r.iter_lines()) == "data: one"
            # The upstream never finishes (gate closed); the proxy must still end the
            # exchange once the client is gone, and count it.
            deadline = time.monotonic() + 5
            while px.value("shadowtrial_requests_total", method="GET", status_class="2xx") < 1:
                assert time.monotonic() < deadline, "relay did not end after client left"
                time.sleep(0.02)
        finally:
            app.sse_gate.open()


@pytest.mark.parametrize("method", METHODS_WITH_BODY)
def test_every_method_path_query_and_body_forwarded(
    proxy: RunningProxy, client: httpx.Client, method: str
) -> None:
    body = b'{"x": [1, 2, 3]}'
    url = proxy.url + "/echo/a%2Fb/c?b=x%20y&a=1&b=2&empty="
    response = client.request(method, url, content=body, headers={"content-type": "text/x"})
    seen = response.json()
    assert response.status_code == 200
    assert seen["method"] == method
    assert seen["raw_path"] == "/echo/a%2Fb/c"
    assert seen["query"] == "b=x%20y&a=1&b=2&empty="
    assert seen["body"].encode("latin-1") == body
    assert ["content-type", "text/x"] in seen["headers"]
    assert ["content-length", str(len(body))] in seen["headers"]


def test_head_answers_headers_without_body(proxy: RunningProxy, client: httpx.Client) -> None:
    response = client.head(proxy.url + "/json")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(JSON_BODY))
    assert response.content == b""


def test_primary_status_codes_pass_through(proxy: RunningProxy, client: httpx.Client) -> None:
    for status in (201, 204, 301, 404, 500, 503):
        response = client.post(proxy.url + f"/status/{status}", follow_redirects=False)
        assert response.status_code == status


def test_hop_by_hop_request_headers_dropped(proxy: RunningProxy, client: httpx.Client) -> None:
    headers = {
        "connection": "keep-alive, x-drop-me",
        "x-drop-me": "1",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "proxy-authorization": "Basic abc",
        "x-keep-me": "2",
    }
    seen = client.post(proxy.url + "/echo", content=b"{}", headers=headers).json()
    names = [name for name, _ in seen["headers"]]
    for dropped in ("x-drop-me", "keep-alive", "te", "proxy-authorization"):
        assert dropped not in names
    assert ["x-keep-me", "2"] in seen["headers"]
    assert names.count("host") == 1


def test_hop_by_hop_response_headers_dropped(proxy: RunningProxy, client: httpx.Client) -> None:
    response = client.get(proxy.url + "/hop")
    for dropped in ("keep-alive", "proxy-authenticate", "upgrade"):
        assert dropped not in response.headers
    assert response.headers["x-model-version"] == "v1"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


def test_request_id_propagated(proxy: RunningProxy, client: httpx.Client) -> None:
    response = client.post(proxy.url + "/echo", content=b"{}", headers={"x-request-id": "req-42"})
    assert ["x-request-id", "req-42"] in response.json()["headers"]
    assert response.headers["x-request-id"] == "req-42"


@pytest.mark.parametrize("hostile", [None, "x" * 500, "two words", "caf\u00e9"])
def test_request_id_generated_when_missing_or_hostile(
    proxy: RunningProxy, client: httpx.Client, hostile: str | None
) -> None:
    headers = {} if hostile is None else {"x-request-id": hostile.encode("latin-1")}
    response = client.post(proxy.url + "/echo", content=b"{}", headers=headers)  # type: ignore[arg-type]
    sent = [v for n, v in response.json()["headers"] if n == "x-request-id"]
    assert len(sent) == 1
    assert len(sent[0]) == 32 and all(c in "0123456789abcdef" for c in sent[0])
    assert response.headers["x-request-id"] == sent[0]


def test_control_characters_in_request_id_replaced(proxy: RunningProxy) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Request-ID: ab\x01\x7fcd\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    if status_line.startswith(b"HTTP/1.1 400"):
        return  # the HTTP parser refused it before the proxy saw it: also safe
    assert status_line.startswith(b"HTTP/1.1 200")
    seen = orjson.loads(data.split(b"\r\n\r\n", 1)[1])
    sent = [v for n, v in seen["headers"] if n == "x-request-id"]
    assert len(sent) == 1 and len(sent[0]) == 32


def test_forwarded_headers_appended(proxy: RunningProxy, client: httpx.Client) -> None:
    seen = client.post(proxy.url + "/echo", content=b"{}").json()["headers"]
    assert ["x-forwarded-for", "127.0.0.1"] in seen
    assert ["x-forwarded-proto", "http"] in seen
    headers = {"x-forwarded-for": "10.0.0.1", "x-forwarded-proto": "https"}
    seen = client.post(proxy.url + "/echo", content=b"{}", headers=headers).json()["headers"]
    assert ["x-forwarded-for", "10.0.0.1, 127.0.0.1"] in seen
    assert ["x-forwarded-proto", "https"] in seen


def test_primary_unreachable_is_502_json(redis_url: str, client: httpx.Client) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with running_proxy(proxy_settings(closed), redis_url) as px:
        response = client.post(px.url + "/v1/predict", content=b"{}")
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["error"] == "primary unreachable" and body["detail"]
        assert px.value("shadowtrial_requests_total", method="POST", status_class="5xx") == 1
        ready = client.get(px.admin + "/readyz")
        assert ready.status_code == 503 and ready.json()["primary"]["reachable"] is False


def test_primary_timeout_is_504_json(proxy: RunningProxy, client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post(proxy.url + "/slow/1500", content=b"{}")
    assert response.status_code == 504
    assert time.monotonic() - started < 1.2
    body = response.json()
    assert body["error"] == "primary timeout" and "300 ms" in body["detail"]


def test_admin_port_health_ready_metrics(proxy: RunningProxy, client: httpx.Client) -> None:
    assert client.get(proxy.admin + "/healthz").json() == {"status": "ok"}
    ready = client.get(proxy.admin + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and ready.json()["redis"]["up"] is True
    client.post(proxy.url + "/json", content=b"{}")
    text = client.get(proxy.admin + "/metrics").text
    assert 'shadowtrial_requests_total{method="POST",status_class="2xx"}' in text
    assert "shadowtrial_primary_latency_seconds_bucket" in text
    missing = client.get(proxy.admin + "/nope")
    assert missing.status_code == 404 and missing.json()["error"]


def test_data_port_does_not_serve_admin_routes(
    proxy: RunningProxy, primary: tuple[Primary, str], client: httpx.Client
) -> None:
    before = len(primary[0].received)
    client.get(proxy.url + "/metrics")
    assert primary[0].received[before]["raw_path"] == "/metrics"
