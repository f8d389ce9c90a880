"""The configuration reference documents every key the settings accept, and no other."""

from __future__ import annotations

import dataclasses
import re
import tomllib
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
    "notify": S.NotifySettings,
    "watch": S.WatchSettings,
    "dispatch": S.DispatchSettings,
    "candidates": S.CandidateSettings,
    "slices": S.SliceSettings,
    "strata": S.StratumSettings,
    "features": S.FeatureSettings,
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


ARCHITECTURE = DOC.parent / "architecture.md"
ROOT = DOC.parent.parent


def _listed_modules() -> dict[str, set[str]]:
    """Package -> the modules and subpackages docs/architecture.md names for it, from the
    paragraphs that open with the package (`proxy/` (the data plane): `forward.py` ...)."""
    listed: dict[str, set[str]] = {}
    for paragraph in ARCHITECTURE.read_text().split("\n\n"):
        opening = re.match(r"`(\w+)/`[^|`]*?:", paragraph)
        if opening:
            names = re.findall(r"`([\w/]+(?:\.py|/))`", paragraph[opening.end() :])
            listed[opening.group(1)] = set(names)
    return listed


def _modules(package: str) -> set[str]:
    """The modules (`x.py`) and subpackages (`x/`) of a package, dunder files aside."""
    folder = ROOT / package
    found = {p.name for p in folder.glob("*.py") if not p.name.startswith("__")}
    return found | {f"{p.parent.name}/" for p in folder.glob("*/__init__.py")}


def test_the_architecture_lists_every_package_and_module_that_exists() -> None:
    listed = _listed_modules()
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {i.rstrip("*") for i in include["packages"]["find"]["include"]}
    assert set(listed) == packages
    for package, named in listed.items():
        names = named - {f"{p}/" for p in packages}  # a mention of another package
        missing = sorted(n for n in names if not (ROOT / package / n).exists())
        assert missing == [], f"docs/architecture.md names {package}/{missing}: gone"
        nested = {n.split("/")[0] + "/" for n in names if "/" in n.rstrip("/")}
        unlisted = sorted(_modules(package) - names - nested)
        assert unlisted == [], f"{package}/{unlisted} missing from docs/architecture.md"


def test_every_source_file_the_docs_name_exists() -> None:
    """A path like `proxy/redact.py` in the README or docs/ points at a file that is there
    (a move updates the docs, or this fails)."""
    packages = "common|models|proxy|control|analysis|shadowtrial|tests|benchmarks|deploy"
    pattern = re.compile(rf"`((?:{packages})/[\w/]+\.(?:py|lua|md|toml))`")
    named = {
        (doc.name, path)
        for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for path in pattern.findall(doc.read_text())
    }
    assert len(named) > 5
    assert sorted((doc, path) for doc, path in named if not (ROOT / path).exists()) == []
