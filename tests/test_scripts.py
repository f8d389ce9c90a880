"""The Lua registry (common.scripts): every script from its .lua file, called by name."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest
import redis

from common.scripts import SCRIPTS, LuaScript

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "common" / "lua"


def test_the_twelve_scripts_come_from_their_files() -> None:
    assert sorted(SCRIPTS) == [
        "admit", "apply", "commit", "count", "dispatch", "enqueue", "feedback", "renew",
        "rollup", "watch_fold", "watch_label", "watch_rollup",
    ]  # fmt: skip
    merge = (LUA / "watchmerge.lua").read_text()
    assert "watchmerge" not in SCRIPTS  # a library: put before the fold and the rollup
    assert SCRIPTS["watch_fold"].source.startswith(merge)
    assert SCRIPTS["watch_rollup"].source.startswith(merge)
    assert "join" not in SCRIPTS  # a library: put before apply.lua and feedback.lua
    join = (LUA / "join.lua").read_text()
    assert SCRIPTS["apply"].source.startswith(join) and SCRIPTS["feedback"].source.startswith(join)
    assert SCRIPTS["count"].keys == ("bucket", "index")
    assert SCRIPTS["count"].args == ("start", "ttl", "*increments")


def test_the_lua_files_are_package_data() -> None:
    """An installed wheel has them: pyproject's package data for `common` matches each."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["common"]
    files = [str(p.relative_to(ROOT / "common")) for p in LUA.glob("*.lua")]
    assert len(files) == 14
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)] == []


def test_bind_orders_named_arguments_and_names_a_mistake() -> None:
    count = SCRIPTS["count"]
    keys, args = count.bind(increments=["a", 1, "b", 2], ttl=60, start=0, index="i", bucket="b")
    assert keys == ["b", "i"] and args == [0, 60, "a", 1, "b", 2]
    with pytest.raises(TypeError, match=r"missing \['ttl'\], unknown \['tll'\]"):
        count.bind(bucket="b", index="i", start=0, tll=60, increments=[])


def test_a_starred_name_must_come_last() -> None:
    from common.scripts import _parse

    with pytest.raises(ValueError, match="must come last"):
        _parse("x", "-- KEYS: *many one\nreturn 1", {})
    assert _parse("y", "-- KEYS: k\n-- ARGV: a *rest\nreturn 1", {}) == LuaScript(
        "y", "-- KEYS: k\n-- ARGV: a *rest\nreturn 1", ("k",), ("a", "*rest")
    )


def test_every_script_loads_in_redis(redis_client: redis.Redis) -> None:
    """Each composed source compiles (SCRIPT LOAD parses it) on a real Redis."""
    for name, script in SCRIPTS.items():
        assert redis_client.script_load(script.source), name


def test_renew_by_name_on_a_real_redis(redis_client: redis.Redis, prefix: str) -> None:
    renew = SCRIPTS["renew"].register(redis_client)
    lock = f"{prefix}:lock"
    assert renew(lock=lock, owner="a", ttl_ms=10_000) == 1
    assert renew(lock=lock, owner="b", ttl_ms=10_000) == 0  # held by a
    assert renew(lock=lock, owner="a", ttl_ms=10_000) == 1  # a renews
