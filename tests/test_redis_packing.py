"""The asyncio clients pack commands with hiredis: the same bytes and the same errors as
redis-py's own packer, against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from common.redis_client import _HiredisPacking, async_client

ARGS = [
    ("XADD", "p:{c}:pairs", "MAXLEN", "~", 100_000, "*", b"b", b"\x00\r\n" * 50, "q", "é"),
    ("CONFIG GET", "maxmemory"),  # a two-word name goes as two arguments
    (b"SET", "k", 0.1, 1e-7, -3, memoryview(b"mv"), float("inf")),
    ("SET", "k", memoryview(b"abcd")[::2]),  # strided: hiredis alone would send "ab"
    ("SET", "k", bytearray(b"ba")),  # hiredis refuses it, redis-py's packer takes it
]


@pytest.mark.parametrize("args", ARGS)
def test_hiredis_packing_gives_redis_pys_bytes(args: tuple[object, ...]) -> None:
    slow = Connection()
    fast = type("Fast", (_HiredisPacking, Connection), {})()
    assert b"".join(fast.pack_command(*args)) == b"".join(
        bytes(chunk) for chunk in slow.pack_command(*args)
    )


@pytest.mark.parametrize(("value", "error"), [(None, DataError), (True, DataError),
                                              ("\udcff", UnicodeEncodeError)])  # fmt: skip
def test_what_hiredis_refuses_gets_redis_pys_error(value: object, error: type) -> None:
    fast = type("Fast", (_HiredisPacking, Connection), {})()
    with pytest.raises(error):
        fast.pack_command("SET", "k", value)


def test_async_clients_use_it_and_round_trip(redis_url: str, prefix: str) -> None:
    async def main() -> list[object]:
        client = async_client(redis_url)
        assert issubclass(client.connection_pool.connection_class, _HiredisPacking)
        try:
            pipe = client.pipeline(transaction=False)
            pipe.xadd(f"{prefix}:s", {b"a": b"\x00\xff", "b": 2.5, "c": "é"})
            pipe.xrange(f"{prefix}:s")
            pipe.delete(f"{prefix}:s")
            return await pipe.execute()
        finally:
            await client.aclose()

    _, entries, deleted = asyncio.run(main())
    assert entries[0][1] == {b"a": b"\x00\xff", b"b": b"2.5", b"c": "é".encode()}
    assert deleted == 1
