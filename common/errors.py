"""The shadowtrial exception hierarchy.

Every lower-level failure (TOML parsing, Redis, HTTP clients, onnxruntime) is caught at
the boundary where it happens and re-raised as one of these, so callers handle our names
and never a third-party library's.

    ShadowtrialError
    ├── ConfigError          bad configuration: fails at start with one line naming the key
    ├── StoreError           Redis unreachable or answering with an error
    ├── CandidateError       a candidate failed (the mirror path turns it into a counter)
    │   └── ModelLoadError   an ONNX model cannot be loaded or fed from its input adapter
    └── AdminError           an admin API call failed (the CLI turns it into exit code 2)
"""

from __future__ import annotations


class ShadowtrialError(Exception):
    """Base of every error shadowtrial raises on purpose."""


class ConfigError(ShadowtrialError):
    """A configuration value is missing, of the wrong type, or out of range."""

    def __init__(self, key: str, value: object, problem: str) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        super().__init__(f"config error: {key} = {value!r}: {problem}")


class StoreError(ShadowtrialError):
    """Redis could not be reached or refused a command."""


class CandidateError(ShadowtrialError):
    """A candidate model failed to answer; carries the outcome name used in counters."""

    def __init__(self, outcome: str, detail: str) -> None:
        self.outcome = outcome
        self.detail = detail
        super().__init__(f"{outcome}: {detail}")


class ModelLoadError(CandidateError):
    """An ONNX candidate cannot be loaded, or its inputs cannot be fed from the adapter."""

    def __init__(self, detail: str) -> None:
        super().__init__("model_load", detail)


class AdminError(ShadowtrialError):
    """An admin API request failed (connection refused, bad token, server error)."""
