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

import re

HIDDEN = "<hidden>"
# Keys whose values are secrets (admin.token, a password, SHADOWTRIAL_ADMIN_TOKEN itself);
# admin.token_env names a variable and is not one.
_SECRET_KEY = re.compile(r"(token(?!_env)|passw|secret|credential|api_?key)", re.IGNORECASE)


class ShadowtrialError(Exception):
    """Base of every error shadowtrial raises on purpose."""


class ConfigError(ShadowtrialError):
    """A configuration value is missing, of the wrong type, or out of range.

    The message names the key; the value is shown unless it is a secret (`secret=True`,
    or a key named like one), so a config error never prints a token or a password.
    """

    def __init__(self, key: str, value: object, problem: str, secret: bool = False) -> None:
        hidden = secret or bool(_SECRET_KEY.search(key.rpartition(".")[2]))
        self.key = key
        self.value = HIDDEN if hidden else value
        self.problem = problem
        shown = HIDDEN if hidden else repr(value)
        super().__init__(f"config error: {key} = {shown}: {problem}")


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
