"""Bodies compressed with gzip or deflate (zlib): told from their first bytes, inflated in bounds.

The proxy forwards the client's `Accept-Encoding`, so a model may answer compressed, and a
pair records no response headers: the encoding is told from the body itself, which is
unambiguous. A gzip stream starts with 1f 8b and a zlib stream (HTTP's `deflate`) with 78
and a second byte that makes the pair a multiple of 31; no JSON text starts with either.
Brotli and raw deflate carry no such mark and are left as they are.

Inflating stops one byte past `limit`: a small body that would expand beyond it (a gzip
bomb) raises CompressedBodyError after at most `limit` bytes of output, never more. In
`common` so that the analysis adapters and the proxy can both use it.
"""

from __future__ import annotations

import zlib

from common.errors import DecodeError


class CompressedBodyError(DecodeError):
    """A compressed body is corrupt, truncated or expands beyond the bound."""


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


def decompress(body: bytes, limit: int) -> bytes:
    """The body decompressed when it is gzip or zlib; unchanged otherwise.

    Raises CompressedBodyError for a corrupt or truncated stream and for one that expands
    beyond `limit` bytes (never expanded further).
    """
    encoding = encoding_of(body)
    if encoding is None:
        return body
    wbits = _GZIP_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        return _inflate(body, wbits, limit, encoding)
    except zlib.error as exc:
        raise CompressedBodyError(f"{encoding} body is corrupt: {exc}") from None


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
                raise CompressedBodyError(f"{encoding} body is truncated")
            pending, data = data[:_CHUNK], data[_CHUNK:]
        out += stream.decompress(pending, limit + 1 - len(out))
        pending = stream.unconsumed_tail
        if len(out) > limit:
            raise CompressedBodyError(f"{encoding} body expands beyond {limit} bytes")
    return memoryview(stream.unused_data + bytes(data))
