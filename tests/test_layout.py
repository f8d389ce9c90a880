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


# -- import circles and the planes --------------------------------------------------------

PACKAGES = ("common", "models", "proxy", "control", "analysis", "shadowtrial")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The modules of the tree one import statement loads (a `from package import module`
    names the submodule, not the package)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names} & known
    if node.level or not node.module:
        return set()
    subs = {f"{node.module}.{a.name}" for a in node.names} & known
    return subs if len(subs) == len(node.names) else ({node.module} | subs) & known


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports, at any depth of the file (function-level
    and TYPE_CHECKING imports count: a circle there is still a circle to read)."""
    files = [p for pkg in PACKAGES if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py")]
    known = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found |= _targets(node, known)
        graph[name] = found - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = stack[stack.index(node) :]
                    del stack[stack.index(node) :]
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_the_data_plane_does_not_import_the_control_plane() -> None:
    """`proxy/` is the data plane; only the process's composition (proxy.app, which builds
    the admin app and starts the registry sync, and proxy.server) may reach into
    `control/`. `control/` never imports that composition back."""
    graph = import_graph()
    composition = {"proxy.app", "proxy.server"}
    data_plane = [m for m in graph if m.split(".")[0] == "proxy" and m not in composition]
    assert [m for m in data_plane if any(t.startswith("control") for t in graph[m])] == []
    control = [m for m in graph if m.split(".")[0] == "control"]
    assert [m for m in control if graph[m] & composition] == []


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) of every class in the packages whose base's name says it is an
    exception (an `...Error`, `Exception`, `...Refused`, ...): what the tree must draw."""
    found = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and _raises(node):
                    found.append((_module_name(path), node.name))
    return found


def _raises(node: ast.ClassDef) -> bool:
    bases = [ast.unparse(b).rpartition(".")[2] for b in node.bases]
    return any(b.endswith(("Error", "Exception", "Refused", "Output")) for b in bases)


def test_every_error_class_is_drawn_in_the_tree() -> None:
    tree = (ROOT / "common" / "errors.py").read_text().partition('"""')[2].partition('"""')[0]
    classes = _exception_classes()
    assert len(classes) > 15  # the walk finds them
    assert [f"{m}.{c}" for m, c in classes if c not in tree] == []


def test_every_drawn_error_is_a_shadowtrial_error() -> None:
    """Apart from the few the docstring names as signals or translations into redis-py."""
    import importlib

    from common.errors import ShadowtrialError

    outside = {
        "ClientGone", "_Refuse", "_BadInput", "BadInput", "ClusterUnavailable",
        "ClusterCommandError",
    }  # fmt: skip
    for module, name in _exception_classes():
        cls = getattr(importlib.import_module(module), name)
        assert name in outside or issubclass(cls, ShadowtrialError), f"{module}.{name}"
