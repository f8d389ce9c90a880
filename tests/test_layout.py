"""The two halves stay apart (docs/architecture.md): the serving path never loads `analysis`,
and `analysis` never imports `proxy`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_serving_path_does_not_load_analysis() -> None:
    """Building the data-port app imports nothing from `analysis` (numpy/scipy stay out)."""
    code = (
        "import sys, proxy.app, proxy.forward, proxy.mirror, proxy.capture; "
        "print(sorted(m for m in sys.modules if m == 'analysis' or m.startswith('analysis.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_analysis_never_imports_proxy() -> None:
    files = (ROOT / "analysis").rglob("*.py")
    offenders = [str(p.relative_to(ROOT)) for p in files if "proxy" in _imports(p)]
    assert offenders == []
