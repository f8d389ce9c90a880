"""The CI verdict on pip-audit's findings (.ci/pip_audit.py): fail on a vulnerability that
has a fix and on a broken tool; report, without failing, the rest."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "pip_audit.py"


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_pip_audit", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dep(name: str, *vulns: tuple[str, list[str]]) -> dict[str, object]:
    return {"name": name, "version": "1.0",
            "vulns": [{"id": i, "fix_versions": f} for i, f in vulns]}  # fmt: skip


def test_a_fixable_vulnerability_fails(audit: ModuleType) -> None:
    report = {"dependencies": [_dep("a", ("PYSEC-1", ["1.1"])), _dep("b")]}
    code, lines = audit.judge_report(report)
    assert code == 1
    assert lines[0].startswith("pip-audit: 2 of 2 packages audited, 1 known vulnerabilities")
    assert "VULNERABLE, fix available: a 1.0: PYSEC-1 (fixed in: 1.1)" in lines[1]


def test_vulnerabilities_without_a_fix_and_skips_are_reported_only(audit: ModuleType) -> None:
    report = {
        "dependencies": [
            _dep("a", ("GHSA-x", [])),
            {"name": "shadowtrial", "skip_reason": "distribution marked as editable"},
            {
                "name": "c",
                "skip_reason": "Dependency not found on PyPI and could not be audited: c",
            },
        ]
    }
    code, lines = audit.judge_report(report)
    assert code == 0
    assert any("no fix yet (reported only): a 1.0: GHSA-x (fixed in: none)" in x for x in lines)
    assert any(x.startswith("  not audited, Dependency not found on PyPI") for x in lines)


def test_an_audit_that_audited_nothing_says_so(audit: ModuleType) -> None:
    report = {"dependencies": [{"name": "c", "skip_reason": "Dependency not found on PyPI"}]}
    code, lines = audit.judge_report(report)
    assert code == 0 and "audit INCOMPLETE" in lines[0]


def test_no_network_is_a_clear_skip_and_a_crash_fails(audit: ModuleType) -> None:
    offline = "requests.exceptions.ConnectionError: Max retries exceeded with url: /pypi/x"
    code, lines = audit.judge_failure(1, "Traceback ...\n" + offline)
    assert code == 0 and lines == [f"pip-audit: advisory service unreachable, audit SKIPPED "
                                   f"({offline})"]  # fmt: skip
    code, lines = audit.judge_failure(1, "Traceback ...\nKeyError: 'vulns'")
    assert code == 2 and "crashed" in lines[0]
