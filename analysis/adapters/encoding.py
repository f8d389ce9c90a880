"""Compressed answers (`Content-Encoding: gzip` or `deflate`) decoded before they are lifted.

The proxy forwards the client's `Accept-Encoding`, so a model may answer compressed; the
proxy keeps the bytes as they were (the client gets them, the pair records them). The
record holds no response headers, so the encoding is told from the body itself, which is
unambiguous: a gzip stream starts with 1f 8b and a zlib stream (HTTP's `deflate`) with
78 and a checksummed second byte, and no JSON text starts with either. Brotli and raw
deflate carry no such mark; they stay unparseable, counted with a reason.

Decoding stops at `[outputs] max_decoded_bytes`: a small body that would expand beyond it
(a gzip bomb) is counted unparseable without ever being expanded in full.
"""

from __future__ import annotations

import zlib

from analysis.adapters.base import OutputAdapter, ParsedOutput, UnparseableOutput
from analysis.adapters.rows import Row

_GZIP = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_CHUNK = 1 << 16  # compressed bytes fed per step, so a bomb stops within one step's output


def encoding_of(body: bytes) -> str | None:
    """`gzip` or `deflate` when the body is such a stream, else None."""
    if body[:2] == _GZIP:
        return "gzip"
    if len(body) >= 2 and body[0] == 0x78 and (body[0] << 8 | body[1]) % 31 == 0:
        return "deflate"
    return None


def decode(body: bytes, limit: int) -> bytes:
    """The body decompressed when it is gzip or zlib; unchanged otherwise.

    Raises UnparseableOutput for a corrupt or truncated stream and for one that expands
    beyond `limit` bytes (counted, never expanded further).
    """
    encoding = encoding_of(body)
    if encoding is None:
        return body
    wbits = _GZIP_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        return _inflate(body, wbits, limit, encoding)
    except zlib.error as exc:
        raise UnparseableOutput(f"{encoding} answer is corrupt: {exc}") from None


def _inflate(body: bytes, wbits: int, limit: int, encoding: str) -> bytes:
    """Inflate member after member (gzip allows several), never past `limit` + 1 bytes."""
    out = bytearray()
    data = memoryview(body)
    while data:
        stream = zlib.decompressobj(wbits)
        data = _member(stream, data, out, limit, encoding)
        if encoding != "gzip":
            break
    return bytes(out)


def _member(
    stream: zlib._Decompress, data: memoryview, out: bytearray, limit: int, encoding: str
) -> memoryview:
    """Inflate one member into `out`; the bytes after it."""
    pending: memoryview | bytes = b""
    while not stream.eof:
        if not pending:
            if not data:
                raise UnparseableOutput(f"{encoding} answer is truncated")
            pending, data = data[:_CHUNK], data[_CHUNK:]
        out += stream.decompress(pending, limit + 1 - len(out))
        pending = stream.unconsumed_tail
        if len(out) > limit:
            raise UnparseableOutput(f"{encoding} answer expands beyond {limit} bytes")
    return memoryview(stream.unused_data + bytes(data))


class Decoding:
    """An adapter that first decompresses compressed answers (see the module docstring)."""

    def __init__(self, inner: OutputAdapter, limit: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.limit = limit

    def parse(self, request_body: bytes, response_body: bytes) -> ParsedOutput:
        """Decode when compressed, then lift with the protocol's adapter."""
        if encoding_of(response_body) is not None:
            response_body = decode(response_body, self.limit)
        return self.inner.parse(request_body, response_body)

    def request_rows(self, request_body: bytes) -> list[Row]:
        """The inner adapter's request rows."""
        return self.inner.request_rows(request_body)

    def rows_from_json(self, request: object) -> list[Row]:
        """The inner adapter's rows of a decoded request."""
        return self.inner.rows_from_json(request)
