"""Where the proxy's CPU goes: py-spy's collapsed stacks reduced to a few readable tables.

py-spy (`py-spy record --format raw`) writes one line per distinct stack:
`frame;frame;...;leaf COUNT`, a frame being `function (path/file.py:line)`. "Self" time is
the leaf's; "inclusive" counts a sample once for every package anywhere on its stack.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# --subprocesses adds `process NNN:"command line";` root frames; a command line may hold ';'.
_PROCESS = re.compile(r'process \d+:"(?:[^"\\]|\\.)*";?')
_NOT_CODE = ("?", "<string>", "")
PROJECT_PACKAGES = frozenset({"proxy", "common", "shadowtrial"})
_ROOTS = ("proxy/server.py",)  # process and event-loop entry points: on every stack


@dataclass(frozen=True)
class Profile:
    """Sample counts by leaf function, by leaf package, and by package anywhere on the stack."""

    samples: int
    self_by_function: Counter[str]
    self_by_package: Counter[str]
    inclusive_by_package: Counter[str]
    inclusive_by_project_function: Counter[str]

    def share(self, count: int) -> float:
        """A count as a percentage of all samples."""
        return 100.0 * count / self.samples if self.samples else 0.0


def split_frame(frame: str) -> tuple[str, str]:
    """('function', 'path/file.py') from 'function (path/file.py:123)'."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), "?"
    return match.group("func"), match.group("file")


def package_of(path: str) -> str:
    """The top-level package (or stdlib module) a file belongs to: 'aiohttp/x.py' -> 'aiohttp'."""
    path = path.replace("\\", "/")
    if "site-packages/" in path:
        path = path.rsplit("site-packages/", 1)[1]
    head = path.lstrip("/").split("/", 1)[0]
    return head[:-3] if head.endswith(".py") else head or "?"


def _frames(stack: str) -> list[str]:
    return [f for f in _PROCESS.sub("", stack).split(";") if f]


def _ours(path: str) -> bool:
    return package_of(path) in PROJECT_PACKAGES and not path.endswith(_ROOTS)


def parse_collapsed(lines: Iterable[str]) -> Profile:
    """Aggregate py-spy raw output; malformed lines are skipped."""
    by_func: Counter[str] = Counter()
    by_pkg: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = _frames(stack)
        if not frames:
            continue
        count = int(count_text)
        total += count
        func, path = split_frame(frames[-1])
        by_func[f"{func} ({path})"] += count
        by_pkg[package_of(path)] += count
        split = [split_frame(f) for f in frames]
        for pkg in {package_of(path) for _, path in split}:
            incl[pkg] += count
        for name in {f"{fn} ({path})" for fn, path in split if _ours(path)}:
            ours[name] += count
    return Profile(total, by_func, by_pkg, incl, ours)


def render(profile: Profile, top: int = 12) -> list[str]:
    """Markdown tables: time by package (self, and inclusive), and the hottest leaf functions."""
    if not profile.samples:
        return ["(py-spy recorded no samples)"]
    out = ["| package | self % | inclusive % |", "|---|---:|---:|"]
    for pkg, count in profile.self_by_package.most_common(top):
        if pkg not in _NOT_CODE:
            incl = profile.share(profile.inclusive_by_package[pkg])
            out.append(f"| {pkg} | {profile.share(count):.1f} | {incl:.1f} |")
    out += ["", "| hottest functions (self time) | self % |", "|---|---:|"]
    for func, count in profile.self_by_function.most_common(top):
        out.append(f"| `{func}` | {profile.share(count):.1f} |")
    out += ["", "| shadowtrial's own functions (inclusive: with all they call) | % |", "|---|---:|"]
    for func, count in profile.inclusive_by_project_function.most_common(top):
        out.append(f"| `{func}` | {profile.share(count):.1f} |")
    return out
