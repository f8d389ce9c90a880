"""Compressed answers (`Content-Encoding: gzip` or `deflate`) decoded before they are lifted.

The proxy keeps the bytes as they were (the client gets them, the pair records them); the
comparison decodes them (common.compressed: told from the body's first bytes, inflated up
to `[outputs] max_decoded_bytes`). A corrupt stream, or one that would expand beyond the
bound (a gzip bomb), is counted unparseable without ever being expanded in full.
"""

from __future__ import annotations

from analysis.adapters.base import OutputAdapter, ParsedOutput, UnparseableOutput
from analysis.adapters.rows import Row
from common.compressed import CompressedBodyError, decompress, encoding_of


def decode(body: bytes, limit: int) -> bytes:
    """The body decompressed when compressed, else unchanged; UnparseableOutput if it cannot be."""
    try:
        return decompress(body, limit)
    except CompressedBodyError as exc:
        raise UnparseableOutput(f"answer: {exc}") from None


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
