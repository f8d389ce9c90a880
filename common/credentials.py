"""Which header names carry a credential: one rule for the proxy and the settings.

The proxy strips these from what a candidate gets (proxy.candidates); the settings refuse
a literal value for them in a candidate's own `headers` (it must come from `env:NAME`, so
the secret never lands in the config file, the registry in Redis or an error message).
"""

from __future__ import annotations

_CREDENTIAL_NAMES = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-api-key", "api-key", "apikey"}
)
_CREDENTIAL_SUFFIXES = ("-token", "_token", "-api-key", "-apikey", "-secret", "-subscription-key")


def is_credential(name: str) -> bool:
    """True for a header name that carries a credential (any case)."""
    lname = name.lower()
    return lname in _CREDENTIAL_NAMES or lname.endswith(_CREDENTIAL_SUFFIXES)


__all__ = ["is_credential"]
