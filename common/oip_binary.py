"""The binary tensor extension of Open Inference Protocol v2 (Triton, KServe), read within bounds.

tritonclient sends and asks for tensors this way by default: the body is a JSON header
(`Inference-Header-Content-Length` bytes long) followed by the raw tensors, one after the
other in the order the header lists them, each announced by `"parameters":
{"binary_data_size": N}` instead of `data`. Fixed-width types are little-endian element
arrays; BYTES elements are each a 4-byte little-endian length followed by that many bytes;
BF16 is the upper half of a float32.

The proxy does not keep that header (a pair records request headers only when configured),
so the header's end is found by the JSON decoder itself: a JSON object ends where it ends.
Every size is checked against the body before anything is read: the announced sizes must
add up to exactly the bytes after the header, and each tensor's size must be what its
shape and datatype make it. Whatever does not fit raises BinaryTensorError (an answer is
then counted unparseable), never anything else.

`inline` gives the same document a JSON-only client would have sent or received: each
binary tensor gets its `data` (flat, row-major) and loses `binary_data_size`. It lives in
`common` because both the analysis adapters and the ONNX runner (models.onnx_model) read
such bodies.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import orjson

from common.errors import DecodeError

MARK = b'"binary_data_size"'  # no body without it is worth a second look
# Little-endian numpy types of the fixed-width OIP v2 datatypes.
_FIXED = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "BF16": "<u2",
}
_LENGTH = struct.Struct("<I")
_DECODER = json.JSONDecoder()


class BinaryTensorError(DecodeError):
    """A body announces binary tensors that its bytes do not hold."""


def inline(body: bytes) -> dict[str, Any] | None:
    """The body's document with binary tensors as `data`; None when it uses no binary tensors.

    Raises BinaryTensorError when the body announces binary tensors it does not hold.
    """
    if body[:1] != b"{" or MARK not in body:
        return None
    header, rest = _split(body)
    doc = _header(header)
    tensors = _binary_tensors(doc)
    if not tensors:
        return None
    announced = sum(size for _, size in tensors)
    if announced != len(rest):
        raise BinaryTensorError(
            f"tensors announce {announced} binary bytes, the body holds {len(rest)}"
        )
    view = memoryview(rest)
    offset = 0
    for tensor, size in tensors:
        tensor["data"] = _values(tensor, view[offset : offset + size])
        offset += size
    return doc


def load_body(body: bytes) -> object:
    """A request or answer body decoded as JSON or as binary tensors (ValueError if neither)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = inline(body)
        if doc is None:
            raise
        return doc


def _split(body: bytes) -> tuple[bytes, bytes]:
    """The JSON header and the bytes after it (latin-1 keeps byte offsets as they are)."""
    try:
        _, end = _DECODER.raw_decode(body.decode("latin-1"))
    except (ValueError, RecursionError) as exc:
        raise BinaryTensorError(f"no JSON header before the binary data ({_brief(exc)})") from None
    return body[:end], body[end:]


def _header(header: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BinaryTensorError(f"the JSON header is not JSON ({_brief(exc)})") from None
    if not isinstance(doc, dict):
        raise BinaryTensorError("the JSON header is not an object")
    return doc


def _binary_tensors(doc: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """(tensor, announced size) of every tensor with binary data, in body order."""
    found = []
    for key in ("inputs", "outputs"):
        tensors = doc.get(key)
        if not isinstance(tensors, list):
            continue
        for tensor in tensors:
            params = tensor.get("parameters") if isinstance(tensor, dict) else None
            if not isinstance(params, dict) or "binary_data_size" not in params:
                continue
            size = params.pop("binary_data_size")
            if not params:  # as the JSON form would have it
                del tensor["parameters"]
            if not _is_size(size):
                raise BinaryTensorError(f"binary_data_size {str(size)[:40]!r} is not a size")
            if "data" in tensor:
                raise BinaryTensorError("a tensor has both `data` and binary_data_size")
            found.append((tensor, size))
    return found


def _values(tensor: dict[str, Any], chunk: memoryview) -> list[Any]:
    """The tensor's flat values from its bytes, which must be exactly what its shape says."""
    name = str(tensor.get("name"))[:80]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
        raise BinaryTensorError(f"tensor {name!r}: shape must be a list of sizes")
    count = math.prod(shape)
    datatype = str(tensor.get("datatype", "")).upper()
    if datatype == "BYTES":
        return _strings(name, chunk, count)
    if datatype not in _FIXED:
        raise BinaryTensorError(f"tensor {name!r}: datatype {datatype[:20]!r} has no binary form")
    dtype = np.dtype(_FIXED[datatype])
    if count * dtype.itemsize != len(chunk):
        raise BinaryTensorError(
            f"tensor {name!r}: shape {shape} of {datatype} takes {count * dtype.itemsize} "
            f"bytes, {len(chunk)} announced"
        )
    array = np.frombuffer(chunk, dtype=dtype)
    if datatype == "BF16":  # the upper half of a float32
        array = (array.astype("<u4") << 16).view("<f4")
    return array.tolist()


def _strings(name: str, chunk: memoryview, count: int) -> list[str]:
    """`count` length-prefixed elements filling `chunk` exactly."""
    if count * _LENGTH.size > len(chunk):
        raise BinaryTensorError(f"tensor {name!r}: {count} BYTES elements cannot fit {len(chunk)}")
    out = []
    offset = 0
    for _ in range(count):
        if offset + _LENGTH.size > len(chunk):
            raise BinaryTensorError(f"tensor {name!r}: a BYTES length runs past its data")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size
        if offset + length > len(chunk):
            raise BinaryTensorError(f"tensor {name!r}: a BYTES element runs past its data")
        out.append(bytes(chunk[offset : offset + length]).decode("utf-8", "replace"))
        offset += length
    if offset != len(chunk):
        raise BinaryTensorError(f"tensor {name!r}: {len(chunk) - offset} bytes left after {count}")
    return out


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _brief(exc: Exception) -> str:
    return str(exc)[:120] or type(exc).__name__
