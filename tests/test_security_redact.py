"""proxy.redact: configured JSON fields and query parameters never reach a pair record."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proxy_upstreams import proxy_settings

from common.records import PairRecord
from proxy.redact import REDACTED, UNPARSEABLE, BodyRedactor

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
        b"password=" + SECRET.encode(),  # not JSON, and no quoted field name in it
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


def test_no_fields_configured_means_no_redactor() -> None:
    assert BodyRedactor.from_settings(proxy_settings("http://127.0.0.1:1")) is None
    configured = proxy_settings("http://127.0.0.1:1", redact_fields=["password", " "])
    assert BodyRedactor.from_settings(configured).names == {"password"}  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        BodyRedactor([" "])


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
