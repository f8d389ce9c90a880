"""The runner for each registry entry on one replica: configured, or made at runtime.

A replaced runner is closed only after the mirrors that may still hold it had time to
finish (its timeout plus RETIRE_GRACE_S).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from control.registry import Entry
from proxy.candidates import build_runner
from proxy.runner import CandidateRunner

log = logging.getLogger("shadowtrial.registry")

RETIRE_GRACE_S = 1.0  # a replaced runner is closed after its timeout plus this


class RunnerPool:
    """The runner for each registry entry: the configured one, or an HTTP one made here.

    A candidate registered at runtime, or a configured HTTP one whose timeout changed,
    gets a new HttpCandidate. A runner that is replaced is closed once the mirrors that
    may still hold it have had time to finish.
    """

    def __init__(
        self,
        configured: Sequence[CandidateRunner],
        max_body: int,
        pool_size: int,
        redact_fields: tuple[str, ...] = (),
    ) -> None:
        self._configured = {r.name: r for r in configured}
        self._made: dict[str, tuple[tuple[Any, ...], CandidateRunner]] = {}
        self._max_body = max_body
        self._pool_size = pool_size
        self._redact_fields = redact_fields
        self._retiring: dict[asyncio.Task[None], CandidateRunner] = {}
        self._missing_warned: set[str] = set()

    def runner_for(self, entry: Entry) -> CandidateRunner | None:
        """The runner to mirror this entry with (None: this replica cannot run it)."""
        configured = self._configured.get(entry.name)
        if entry.url is None:
            if configured is None and entry.name not in self._missing_warned:
                self._missing_warned.add(entry.name)
                log.warning("ONNX candidate %s is not in this replica's config: not run here",
                            entry.name)  # fmt: skip
            return configured
        spec = (entry.url, entry.timeout_ms, entry.role, entry.run)
        if configured is not None and _spec(configured) == spec:
            return configured
        made = self._made.get(entry.name)
        if made is not None and made[0] == spec:
            return made[1]
        runner = build_runner(
            entry.settings(), self._max_body, self._pool_size, self._redact_fields
        )
        if made is not None:
            self._retire(made[1], made[0][1])
        self._made[entry.name] = (spec, runner)
        return runner

    def forget(self, keep: Iterable[str]) -> None:
        """Retire runners made for entries that are gone."""
        wanted = set(keep)
        for name in [n for n in self._made if n not in wanted]:
            spec, runner = self._made.pop(name)
            self._retire(runner, spec[1])

    def _retire(self, runner: CandidateRunner, timeout_ms: int) -> None:
        async def later() -> None:
            await asyncio.sleep(timeout_ms / 1000 + RETIRE_GRACE_S)
            await _close(runner)

        task = asyncio.get_running_loop().create_task(later())
        self._retiring[task] = runner
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        """Close every runner made here, retiring ones too (configured ones belong to the
        ProxyApp)."""
        retiring, self._retiring = self._retiring, {}
        for task in retiring:
            task.cancel()
        made, self._made = self._made, {}
        for runner in [*retiring.values(), *(r for _, r in made.values())]:
            await _close(runner)


def _spec(runner: CandidateRunner) -> tuple[Any, ...] | None:
    url = getattr(runner, "url", None)
    timeout_ms = getattr(runner, "timeout_ms", None)
    run = getattr(runner, "run_mode", "proxy")
    return None if url is None else (url, timeout_ms, runner.role, run)


async def _close(runner: CandidateRunner) -> None:
    try:
        await runner.close()
    except Exception:  # one runner failing to close must not stop the others
        log.warning("candidate %s failed to close", runner.name, exc_info=True)


__all__ = ["RETIRE_GRACE_S", "RunnerPool"]
