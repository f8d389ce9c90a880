"""Every Lua script shadowtrial runs in Redis, from the `.lua` files in common/lua/.

One file per script. Its header names what it takes, so callers pass named arguments
instead of positions built by hand:

    -- USES: join                      (optional) library files put before the script
    -- KEYS: bucket index              the KEYS, in order
    -- ARGV: start ttl *increments     the ARGV, in order; a `*name` last takes a sequence

`SCRIPTS["count"].bind(bucket=b, index=i, start=s, ttl=t, increments=[...])` gives the
KEYS and ARGV lists; `register(client)` gives a redis-py Script (EVALSHA, loaded on first
use) called the same way. The files are package data (pyproject.toml), so an installed
wheel has them; a library file (join.lua) has no KEYS/ARGV header and is not callable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.commands.core import Script

from common.redis_client import queue_script

_HEADER = re.compile(r"^-- (USES|KEYS|ARGV):(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class LuaScript:
    """One script: its full source (libraries included) and the names of its arguments."""

    name: str
    source: str
    keys: tuple[str, ...]
    args: tuple[str, ...]

    def bind(self, **values: Any) -> tuple[list[Any], list[Any]]:
        """(KEYS, ARGV) in the script's order; TypeError names a missing or unknown one."""
        wanted = [n.lstrip("*") for n in (*self.keys, *self.args)]
        unknown = sorted(set(values) - set(wanted))
        missing = [n for n in wanted if n not in values]
        if unknown or missing:
            raise TypeError(f"{self.name}.lua: missing {missing}, unknown {unknown}")
        return _ordered(self.keys, values), _ordered(self.args, values)

    def register(self, client: Any) -> BoundScript:
        """The script on `client` (EVALSHA, loaded on first use), called by name."""
        return BoundScript(self, client.register_script(self.source))


def _ordered(names: Sequence[str], values: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name in names:
        if name.startswith("*"):
            out += list(values[name[1:]])
        else:
            out.append(values[name])
    return out


@dataclass(frozen=True)
class BoundScript:
    """A LuaScript registered on one client."""

    spec: LuaScript
    script: Script

    def __call__(self, **values: Any) -> Any:
        """Run it (awaitable on an asyncio client)."""
        keys, args = self.spec.bind(**values)
        return self.script(keys=keys, args=args)

    def queue(self, pipe: Any, **values: Any) -> None:
        """Queue a call on a pipeline (EVAL on a cluster pipeline, see common.redis_client)."""
        keys, args = self.spec.bind(**values)
        queue_script(self.script, pipe, keys, args)


def _parse(name: str, text: str, library: Mapping[str, str]) -> LuaScript:
    header = {kind: rest.split() for kind, rest in _HEADER.findall(text)}
    uses = "".join(library[u] + "\n" for u in header.get("USES", []))
    keys, args = tuple(header.get("KEYS", [])), tuple(header.get("ARGV", []))
    starred = [n for n in (*keys[:-1], *args[:-1]) if "*" in n]
    if starred or len({n.lstrip("*") for n in (*keys, *args)}) != len(keys) + len(args):
        raise ValueError(f"{name}.lua: a `*name` must come last and names must be unique")
    return LuaScript(name, uses + text, keys, args)


def load() -> dict[str, LuaScript]:
    """Every callable script in common/lua/, by file name without `.lua`."""
    files = {
        f.name.removesuffix(".lua"): f.read_text()
        for f in resources.files("common").joinpath("lua").iterdir()
        if f.name.endswith(".lua")
    }
    callable_ = {n: t for n, t in files.items() if _HEADER.search(t) and "-- KEYS:" in t}
    library = {n: t for n, t in files.items() if n not in callable_}
    return {n: _parse(n, t, library) for n, t in sorted(callable_.items())}


SCRIPTS = load()

__all__ = ["SCRIPTS", "BoundScript", "LuaScript", "load"]
