"""URLs operators configure: which ones are accepted, and how one is shown.

`mask_url` is the one place credentials are taken out of a URL before it reaches a log
line, an error message, an API answer or the page: the password of the user part and the
values of secret-named query parameters (`redis://h/0?password=...`, which redis-py
accepts, as much as `redis://user:pw@h/0`).

`check_http_url` is the one rule for model URLs (the primary, candidates from the config
file and from the admin API): http or https, a host, nothing a request line or a log line
could be split on (whitespace, CR/LF, control characters). `check_destination` refuses
link-local and cloud metadata addresses (169.254.169.254, fe80::/10,
metadata.google.internal), where a candidate registered through the API would make every
replica send mirrored traffic to the instance's credentials endpoint; an operator who
really runs a model there sets `proxy.allow_link_local_urls`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import parse_qsl, quote, urlsplit

MASK = "***"
# Query parameters whose values are credentials (password=, token=, key=, ...).
_SECRET_PARAM = re.compile(
    r"(passw|pwd|token|secret|key|auth|credential|signature|sig$|session)", re.IGNORECASE
)
# Any ASCII control character, space or DEL: never valid unescaped in a URL (RFC 3986).
_UNSAFE_CHAR = re.compile(r"[\x00-\x20\x7f]")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
# Metadata services outside the link-local ranges: AWS over IPv6, Alibaba Cloud.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200")
)


def mask_url(url: str) -> str:
    """`url` with its user part's password and secret-named query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _mask_unparsable(url)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user = userinfo.split(":", 1)[0]
        # No colon: the user part alone may be the secret (`redis://s3cret@host`).
        netloc = f"{user}:{MASK}@{host}" if user and ":" in userinfo else f"{MASK}@{host}"
    query = _mask_query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    # Not urlunsplit: it turns unix:///path into unix:/path.
    shown = f"{parts.scheme}://{netloc}{parts.path}" if "://" in url else url.split("?")[0]
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def mask_urls_in(text: str) -> str:
    """`text` with every URL in it masked (a log line, an exception's message)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group()), text)


def _mask_query(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_SECRET_PARAM.search(name) for name, _ in pairs):
        return query
    return "&".join(
        f"{quote(name, safe='')}={MASK if _SECRET_PARAM.search(name) else quote(value, safe='')}"
        for name, value in pairs
    )


def _mask_unparsable(url: str) -> str:
    """A URL urlsplit refuses (a bad IPv6 literal): keep only the scheme."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://{MASK}" if sep else MASK


def check_http_url(url: str) -> str:
    """'' when `url` is an http(s) URL with a host and nothing unsafe in it, else why not."""
    if _UNSAFE_CHAR.search(url):
        return "a URL must not contain spaces, CR/LF or other control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL with a host"
    if port == 0:
        return "port 0 is not a port a model listens on"
    return ""


def check_destination(url: str) -> str:
    """'' unless `url`'s host is a link-local or cloud metadata address, else why.

    Literal addresses in every spelling the system resolver accepts are checked
    (`169.254.169.254`, `2852039166`, `0xa9.0xfe.0xa9.0xfe`, `[fe80::1]`, `[::ffff:169.254.1.1]`);
    host names are not resolved here (see RELIABILITY.md, known remaining edges).
    """
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return "not a valid URL"
    if host in _METADATA_HOSTS:
        return f"{host} is a cloud metadata service"
    address = _literal_address(host)
    if address is not None and address in _METADATA_ADDRESSES:
        return f"{host} is a cloud metadata service"
    if address is not None and address.is_link_local:
        return f"{host} is a link-local address (cloud metadata services live there)"
    return ""


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a literal host names, IPv4-mapped IPv6 unwrapped; None for a name."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        try:  # shorthand, decimal, octal and hex IPv4 forms, as getaddrinfo reads them
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
