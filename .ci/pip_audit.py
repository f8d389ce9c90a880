"""Audit the installed dependencies for known vulnerabilities (pip-audit) and decide CI.

    .venv/bin/python .ci/pip_audit.py

Runs pip-audit over the virtual environment (the versions the tests ran with; shadowtrial
itself, installed editable, is skipped) against PyPI's advisory data, prints every finding
and every package it could not audit, and exits:

    0  no known vulnerability; or only ones without a fixed version (reported: there is
       nothing to upgrade to yet); or the advisory service is unreachable, or knows none
       of the installed versions (reported: the audit did not happen, which says
       nothing about the code under test)
    1  a known vulnerability with a fixed version: upgrade (or add its id to IGNORED
       below, with the reason)
    2  pip-audit is missing or crashed for another reason (a silently broken audit
       would look like a clean one)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

# pip-audit's failure text when the network or the advisory service is out of reach.
UNREACHABLE = (
    "ConnectionError",
    "NameResolutionError",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Max retries exceeded",
    "Network is unreachable",
    "timed out",
    "Connection refused",
    "ProxyError",
)
IGNORED: tuple[str, ...] = ()  # vulnerability ids accepted on purpose, each with a reason
SHOWN = 8


def run_audit(out: Path) -> tuple[int, str]:
    """pip-audit's exit code and stderr; its JSON report goes to `out`."""
    args = [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off",
            "--timeout", "30", "-f", "json", "-o", str(out)]  # fmt: skip
    for vuln in IGNORED:
        args += ["--ignore-vuln", vuln]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stderr


def _names(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def judge_report(report: dict[str, Any]) -> tuple[int, list[str]]:
    """The exit code and the lines to print for a pip-audit JSON report."""
    fixable, unfixable = [], []
    skipped: dict[str, list[str]] = defaultdict(list)
    deps = report.get("dependencies", [])
    for dep in deps:
        if "skip_reason" in dep:
            skipped[dep["skip_reason"].split(":")[0]].append(dep["name"])
            continue
        for vuln in dep.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions", []))
            line = f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes or 'none'})"
            (fixable if fixes else unfixable).append(line)
    audited = len(deps) - sum(len(v) for v in skipped.values())
    lines = [f"pip-audit: {audited} of {len(deps)} packages audited, "
             f"{len(fixable) + len(unfixable)} known vulnerabilities"]  # fmt: skip
    if deps and not audited:
        lines[0] += " (audit INCOMPLETE: the advisory service knows none of these versions)"
    lines += [f"  VULNERABLE, fix available: {line}" for line in fixable]
    lines += [f"  vulnerable, no fix yet (reported only): {line}" for line in unfixable]
    lines += [f"  not audited, {why} ({len(n)}): {_names(n)}" for why, n in skipped.items()]
    return (1 if fixable else 0), lines


def judge_failure(code: int, stderr: str) -> tuple[int, list[str]]:
    """The exit code and lines when pip-audit wrote no report."""
    if any(marker in stderr for marker in UNREACHABLE):
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        return 0, [f"pip-audit: advisory service unreachable, audit SKIPPED ({last[:200]})"]
    return 2, [f"pip-audit: crashed (exit {code}); FAILED", stderr[-2000:]]


def main() -> int:
    """Run the audit, print what it found, return the CI verdict."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "audit.json"
        try:
            code, stderr = run_audit(out)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"pip-audit: could not run ({exc}); FAILED")
            return 2
        text = out.read_text() if out.exists() else ""
    verdict, lines = judge_report(json.loads(text)) if text else judge_failure(code, stderr)
    print("\n".join(lines))
    return verdict


if __name__ == "__main__":
    sys.exit(main())
