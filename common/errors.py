"""The shadowtrial exception hierarchy: every error class in the tree, drawn here.

Every lower-level failure (TOML parsing, Redis, HTTP clients, onnxruntime) is caught at
the boundary where it happens and re-raised as one of these, so callers handle our names
and never a third-party library's. Redis failures become StoreError at the store
boundary (common.redis_client's clients; control.registry_store for the registry).

    ShadowtrialError
    ├── ConfigError          bad configuration: fails at start with one line naming the key
    ├── StoreError           Redis unreachable or answering with an error
    ├── CandidateError       a candidate failed (the mirror path turns it into a counter)
    │   └── ModelLoadError   an ONNX model cannot be loaded or fed from its input adapter
    ├── AdminError           an admin API call failed (the CLI turns it into exit code 2)
    │   └── AdminRefused     shadowtrial.admin_client: the API answered an error status
    ├── RegistryError        control.registry: a registry request refused; `status` is the
    │   │                    HTTP status it maps to
    │   ├── Invalid          400: malformed, or asks for something not allowed
    │   ├── NotFound         404: no such candidate
    │   └── Conflict         409: clashes with the current state
    ├── ReplayError          proxy.replay: a usage problem of `shadowtrial replay` (exit 2)
    ├── ProfileError         analysis.profile: a data or profile file that cannot be read
    ├── WatchError           analysis.watch_live: a watch window or reference that cannot
    │                        be read (the API and the page answer 400; also a ValueError)
    ├── UpstreamError        proxy.upstream: the primary unreachable or its answer broken
    │                        (also an OSError; the data port answers 502)
    ├── UpstreamTimeout      proxy.upstream: the primary silent past primary_timeout_ms
    │                        (also a TimeoutError; the data port answers 504)
    └── DecodeError          bytes or text that are not what they claim (also a ValueError,
        │                    so a parser's callers may catch either)
        ├── RecordError          common.records: a stream entry that is no pair record
        ├── CompressedBodyError  common.compressed: corrupt, truncated or too large
        ├── BinaryTensorError    common.oip_binary: binary tensors the bytes do not hold
        ├── JsonPathError        analysis.jsonpath: a path outside the supported subset
        ├── UnparseableOutput    analysis.adapters.base: an answer no adapter understands
        └── ProtocolError        proxy.http1: a candidate's answer that is not HTTP/1.x
                                 (caught by the runner, counted as the outcome `error`)

Not errors of the tree, on purpose:

- proxy.exchange.ClientGone, proxy.dataport._Refuse, models.onnx_model._BadInput and
  shadowtrial.examples.model_server.BadInput: signals inside one module, never raised
  past it.
- common.redis_client.ClusterUnavailable and ClusterCommandError: translations *into*
  redis-py's tree (a cluster client's failures as RedisError), so the store boundary
  catches one family.

tests/test_layout.py checks that every exception class in the packages is named here.
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


class DecodeError(ShadowtrialError, ValueError):
    """Bytes or text that are not what they claim to be (a record, a compressed body,
    binary tensors, a path, a model's answer); the subclasses say which."""
