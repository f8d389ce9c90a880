"""Render the templates in benchmarks/conf and benchmarks/lua into a run's work folder.

Templates use `@NAME@` placeholders (nginx and Lua use `$` themselves); a placeholder left
unfilled is an error, so a renamed key cannot silently produce a broken config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from proxybench.results import HarnessError

BENCH_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = BENCH_DIR / "conf"
LUA_DIR = BENCH_DIR / "lua"
DATA_DIR = BENCH_DIR / "data"
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def fill(template: str, values: Mapping[str, object]) -> str:
    """Replace every @NAME@ with values[NAME]; refuse unknown or leftover placeholders."""

    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise HarnessError(f"template placeholder @{key}@ has no value")
        return str(values[key])

    return _PLACEHOLDER.sub(one, template)


def nginx_literal(body: bytes) -> str:
    """A response body as the inside of an nginx single-quoted string."""
    text = body.decode("utf-8").strip()
    return text.replace("\\", "\\\\").replace("'", "\\'")


def user_directive() -> str:
    """`user root;` when we are root (workers keep access to the work folder), else nothing."""
    return "user root;" if os.geteuid() == 0 else ""


def render_file(template: Path, target: Path, values: Mapping[str, object]) -> Path:
    """Render one template file to `target` and return the target path."""
    target.write_text(fill(template.read_text(encoding="utf-8"), values), encoding="utf-8")
    return target


def shadowtrial_config(
    values: Mapping[str, object], candidate: Mapping[str, object] | None, watch: bool = False
) -> str:
    """The TOML for one shadowtrial instance, with or without its one candidate; `watch`:
    every request watched (`[watch] sample = 1.0`)."""
    block = ""
    if candidate is not None:
        block = fill((CONF_DIR / "candidate.toml.in").read_text(encoding="utf-8"), candidate)
    if watch:
        block += "\n[watch]\nsample = 1.0\ngauges_every_s = 0\n"
    template = (CONF_DIR / "shadowtrial.toml.in").read_text(encoding="utf-8")
    return fill(template, {**values, "CANDIDATES": block})
