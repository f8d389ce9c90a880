"""proxy.redact: configured JSON fields and query parameters never reach a pair record."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proxy_upstreams import Candidate, Primary, proxy_settings, running_proxy, wait_until
from servers import serve_app

from common.records import PairRecord
from proxy.redact import FORM_TOO_LARGE, REDACTED, UNPARSEABLE, BodyRedactor

SECRET = "s3cr3t-VALUE-42"


@pytest.fixture(scope="module")
def redactor() -> BodyRedactor:
    return BodyRedactor(["password", "API_Token"])


def test_nested_fields_in_objects_and_arrays_any_case(redactor: BodyRedactor) -> None:
    body = orjson.dumps(
        {
            "inputs": [{"x": 1, "Password": SECRET}, {"nested": {"api_token": [SECRET]}}],
            "PASSWORD": {"deep": SECRET},
            "keep": "password",  # a value, not a key
        }
    )
    out = redactor.body(body)
    assert SECRET.encode() not in out
    assert orjson.loads(out) == {
        "inputs": [{"x": 1, "Password": REDACTED}, {"nested": {"api_token": REDACTED}}],
        "PASSWORD": REDACTED,
        "keep": "password",
    }


def test_bodies_without_the_fields_keep_their_exact_bytes(redactor: BodyRedactor) -> None:
    for body in (
        b'{"inputs" :  [1, 2],   "note": "no secrets here"}',
        b'{"note": "\\"password\\": looks like a key but is inside a string"}',
        b"note=" + SECRET.encode(),  # form-encoded, no secret name in it
        b'"password"',
        b"\xff\xfe binary",
        b"",
        b"[]",
    ):
        assert redactor.body(body) is body


def test_escapes_and_whitespace_cannot_hide_a_field(redactor: BodyRedactor) -> None:
    for body in (
        b'{"pass\\u0077ord": "%s"}',
        b'{"password"\n\t :"%s"}',
        b'[{"api_\\u0074oken": "%s"}]',
    ):
        out = redactor.body(body % SECRET.encode())
        assert SECRET.encode() not in out and REDACTED.encode() in out


def test_broken_json_that_names_a_field_is_not_kept(redactor: BodyRedactor) -> None:
    for body in (b'{"password": "%s", oops', b'{"API_TOKEN" : "%s"'):
        assert redactor.body(body % SECRET.encode()) == UNPARSEABLE


def test_non_ascii_field_names_are_matched_case_insensitively() -> None:
    redactor = BodyRedactor(["contraseña"])
    out = redactor.body(orjson.dumps({"CONTRASEÑA": SECRET, "x": 1}))
    assert orjson.loads(out) == {"CONTRASEÑA": REDACTED, "x": 1}


def test_query_parameters_are_redacted_and_the_rest_kept_verbatim(
    redactor: BodyRedactor,
) -> None:
    query = f"a=1%202&Password={SECRET}&b=x+y&api%5Ftoken={SECRET}&password"
    assert redactor.query(query) == (
        "a=1%202&Password=%5Bredacted%5D&b=x+y&api%5Ftoken=%5Bredacted%5D&password=%5Bredacted%5D"
    )
    assert redactor.query("a=1&b=2") == "a=1&b=2"


def test_a_record_is_redacted_in_all_three_bodies_and_the_query(redactor: BodyRedactor) -> None:
    secret_body = orjson.dumps({"password": SECRET})
    record = PairRecord(
        request_id="r",
        candidate="c",
        ts_ms=1,
        query=f"password={SECRET}",
        request_body=secret_body,
        primary_body=secret_body,
        candidate_body=secret_body,
    )
    redactor.record(record)
    assert SECRET.encode() not in b"".join(record.to_fields().values())


def test_credentials_are_redacted_even_with_no_fields_configured() -> None:
    """Changed in issue 12: there is always a redactor (DEFAULT_FIELDS, SECRET_NAME)."""
    redactor = BodyRedactor.from_settings(proxy_settings("http://127.0.0.1:1"))
    assert redactor.configured == frozenset() and "password" in redactor.names
    out = redactor.body(orjson.dumps({"inputs": [1], "Client-Secret": SECRET, "max_tokens": 5}))
    assert orjson.loads(out) == {"inputs": [1], "Client-Secret": REDACTED, "max_tokens": 5}
    assert redactor.query(f"token={SECRET}&a=1") == "token=%5Bredacted%5D&a=1"
    configured = proxy_settings("http://127.0.0.1:1", redact_fields=["SSN", " "])
    assert BodyRedactor.from_settings(configured).configured == {"ssn"}


def test_form_encoded_bodies_are_redacted_by_name_and_pattern() -> None:
    redactor = BodyRedactor(["ssn"])
    body = f"ssn={SECRET}&x=a+b&p%61ssword={SECRET}&session_id={SECRET}&n=%5B1%5D".encode()
    assert redactor.body(body) == (
        b"ssn=%5Bredacted%5D&x=a+b&p%61ssword=%5Bredacted%5D&session_id=%5Bredacted%5D&n=%5B1%5D"
    )


def test_form_work_is_bounded_and_other_bodies_with_equals_signs_are_kept() -> None:
    redactor = BodyRedactor(["ssn"])
    huge = b"&".join(b"k%d=%d" % (i, i) for i in range(2000)) + b"&ssn=" + SECRET.encode()
    assert redactor.body(huge) == FORM_TOO_LARGE
    for body in (b"QUJD" * 100 + b"token==", b"x" * 300 + b"=password", b"a b=c&token=1"):
        assert redactor.body(body) is body  # no `key=` first: not a form


def test_multipart_parts_named_as_secrets_are_redacted() -> None:
    redactor = BodyRedactor(["ssn"])
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="SSN"\r\n\r\n%s\r\n'
        b'--xyz\r\ncontent-disposition: form-data; name="file"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n\x00\x01%s-not-a-secret-name\r\n"
        b"--xyz--\r\n"
    ) % (SECRET.encode(), b"data")
    out = redactor.body(body)
    assert SECRET.encode() not in out and b"\x00\x01data-not-a-secret-name" in out
    assert out.count(b"--xyz") == 3 and REDACTED.encode() in out


def test_keys_spelled_with_escapes_are_compared_decoded() -> None:
    redactor = BodyRedactor(["ssn"])
    for body in (b'{"s\\u0073n": "%s"}', b'[{"\\u0053SN": "%s"}]', b'{"ss\\u006e" :"%s", oops'):
        out = redactor.body(body % SECRET.encode())
        assert SECRET.encode() not in out, body


@pytest.mark.parametrize("depth", [100, 254, 990, 1000, 1023, 1024, 1025, 5000])
def test_any_nesting_depth_is_redacted_without_recursion(depth: int) -> None:
    """Issue 12, bug 5: a RecursionError lost the pair; walks are iterative now."""
    redactor = BodyRedactor(["ssn"])
    nested = b"[" * depth + b"]" * depth
    with_secret = b'{"a": %s, "ssn": "%s"}' % (nested, SECRET.encode())
    out = redactor.body(with_secret)
    assert SECRET.encode() not in out
    if depth < 254:  # orjson writes 254 levels at most: deeper bodies are not kept
        assert orjson.loads(out)["ssn"] == REDACTED
    without = b'{"a": %s, "note": "caf\\u00e9"}' % nested  # parsed (an escape), unchanged
    assert redactor.body(without) is without


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=6)
)
json_docs = st.recursive(
    json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def docs_with_secrets(draw: st.DrawFn) -> object:
    """A JSON document with the secret planted under a configured key at random places."""

    def plant(value: object) -> object:
        if isinstance(value, dict):
            out = {k: plant(v) for k, v in value.items()}
            if draw(st.booleans()):
                key = "".join(
                    c.upper() if draw(st.booleans()) else c for c in draw(st.sampled_from(NAMES))
                )
                out[key] = draw(st.sampled_from([SECRET, [SECRET], {"x": SECRET}]))
            return out
        if isinstance(value, list):
            return [plant(v) for v in value]
        return value

    return plant({"top": draw(json_docs)})


NAMES = ("password", "api_token")


@settings(max_examples=200, deadline=None)
@given(doc=docs_with_secrets())
def test_fuzz_no_planted_secret_survives(doc: object) -> None:
    redactor = BodyRedactor(NAMES)
    out = redactor.body(orjson.dumps(doc))
    assert SECRET.encode() not in out
    orjson.loads(out)  # still JSON


form_names = st.sampled_from(["ssn", "SSN", "s%73n", "password", "x", "note", "api%5Fkey", ""])


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.tuples(form_names, st.booleans(), st.text(max_size=6)), max_size=6),
    depth=st.integers(0, 1100),
    wrap=st.sampled_from(["list", "dict"]),
)
def test_fuzz_form_bodies_and_deep_nesting_never_leak_or_raise(
    parts: list[tuple[str, bool, str]], depth: int, wrap: str
) -> None:
    redactor = BodyRedactor(["ssn"])
    secretly_named = {"ssn", "SSN", "s%73n", "password", "api%5Fkey"}
    form = "&".join(f"{n}={SECRET if n in secretly_named else quote(v)}" for n, _, v in parts)
    assert SECRET.encode() not in redactor.body(form.encode())
    opened, closed = ("[", "]") if wrap == "list" else ('{"k":', "}")
    deep = (opened * depth + f'{{"Ssn": "{SECRET}"}}' + closed * depth).encode()
    assert SECRET.encode() not in redactor.body(deep)


class _BrokenRedactor(BodyRedactor):
    """A redactor with a bug (the seam capture is built with, not a patch)."""

    def record(self, record: PairRecord) -> None:
        raise RuntimeError("a bug in the redactor " + SECRET)


def test_a_failing_redactor_costs_the_bodies_never_the_pair(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    from common.keys import Keys
    from proxy.capture import NOT_REDACTED

    with serve_app(Primary()) as primary, serve_app(Candidate()) as cand:
        conf = proxy_settings(primary, [{"name": "c", "url": cand}], prefix=prefix)
        with running_proxy(conf, redis_url) as px, httpx.Client(timeout=10) as client:
            px.app.capture.redactor = _BrokenRedactor()
            for _ in range(3):
                answer = client.post(px.url + f"/json?token={SECRET}", json={"password": SECRET})
                assert answer.status_code == 200
            wait_until(lambda: px.captured("c", "recorded") == 3, what="3 recorded")
            assert px.sampled("c") == 3
    store = redis.Redis.from_url(redis_url)
    entries = store.xrange(Keys(prefix).pairs("c"))
    store.close()
    assert len(entries) == 3
    for _, fields in entries:
        record = PairRecord.from_fields(fields)
        assert record.request_body == NOT_REDACTED and record.query == ""
        assert SECRET.encode() not in b"".join(fields.values())
    assert "Traceback" not in caplog.text and SECRET not in caplog.text


def test_gzip_bodies_are_inflated_redacted_and_compressed_again() -> None:
    """A gzip answer (the client's Accept-Encoding is forwarded) is stored as it came:
    its secrets were invisible to the redactor before."""
    import gzip

    from proxy.redact import INFLATED_TOO_LARGE, MAX_INFLATED

    redactor = BodyRedactor(["ssn"])
    plain = orjson.dumps({"outputs": [1], "ssn": SECRET, "api_token": SECRET})
    out = redactor.body(gzip.compress(plain))
    assert orjson.loads(gzip.decompress(out)) == {
        "outputs": [1], "ssn": REDACTED, "api_token": REDACTED
    }  # fmt: skip
    clean = gzip.compress(b'{"outputs": [1]}')
    assert redactor.body(clean) is clean
    form = gzip.compress(f"ssn={SECRET}&x=1".encode())
    assert gzip.decompress(redactor.body(form)) == b"ssn=%5Bredacted%5D&x=1"
    bomb = gzip.compress(b" " * (MAX_INFLATED + 1))  # 4 KiB that inflate to 4 MiB
    assert redactor.body(bomb) == INFLATED_TOO_LARGE
    not_gzip = b"\x1f\x8b garbage"
    assert redactor.body(not_gzip) is not_gzip
    members = gzip.compress(b'{"x": 1}') + gzip.compress(b'{"ssn": "%s"}' % SECRET.encode())
    assert SECRET.encode() not in gzip.decompress(redactor.body(members))
    trailing = gzip.compress(b'{"x": 1}') + b"password=" + SECRET.encode()
    assert redactor.body(trailing) == INFLATED_TOO_LARGE
