"""The configuration reference documents every key the settings accept, and no other."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from common import settings as S

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
SECTIONS = {
    "proxy": S.ProxySettings,
    "redis": S.RedisSettings,
    "admin": S.AdminSettings,
    "outputs": S.OutputSettings,
    "worker": S.WorkerSettings,
    "gate": S.GateSettings,
    "candidates": S.CandidateSettings,
    "slices": S.SliceSettings,
}
TOML_NAMES = {"source": "from"}


def _documented() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^## `\[+(\w+)\]+`", line)
        if heading:
            section = heading.group(1)
            found[section] = set()
        elif section and line.startswith("| `"):
            first_cell = line.split("|")[1]
            found[section] |= set(re.findall(r"`(\w+)`", first_cell))
    return found


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = _documented()
    assert set(documented) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        keys = {TOML_NAMES.get(f.name, f.name) for f in dataclasses.fields(cls)}
        assert documented[section] == keys, section
