"""Print the constraints file the image is built with: the exact versions this virtualenv
holds of shadowtrial's runtime dependencies (pyproject's [project] dependencies and the
`text` extra the image installs, and all
they pull in, markers evaluated for this interpreter: Linux, the image's Python 3.11), so
`docker build` installs what the tests ran against and two builds install the same.

    .venv/bin/python deploy/constraints.py > constraints.txt

tests/test_deploy.py fails when constraints.txt no longer matches the virtualenv.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
IMAGE_EXTRA = "text"  # the extra the image installs too: pip install ".[text]"
HEADER = """\
# Exact versions of shadowtrial's runtime dependencies, used by the Dockerfile
# (pip install -c constraints.txt ".[text]") so images are reproducible. Generated from the
# development virtualenv (the versions the tests ran against); regenerate with
#   .venv/bin/python deploy/constraints.py > constraints.txt
"""


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


def runtime_pins() -> dict[str, str]:
    """{canonical name: installed version} of every runtime dependency, transitively."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"][IMAGE_EXTRA]
    todo = [(Requirement(text), {""}) for text in wanted]
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, parent_extras = todo.pop()
        if not _wanted(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        extras = {"", *requirement.extras}
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        distribution = metadata.distribution(name)
        pins[name] = distribution.version
        todo += [(Requirement(r), extras) for r in distribution.requires or []]
    return pins


def render(pins: dict[str, str]) -> str:
    """The file's text: the header, then `name==version` lines sorted by name."""
    return HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


if __name__ == "__main__":
    sys.stdout.write(render(runtime_pins()))
