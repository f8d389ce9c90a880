"""The shadowtrial.toml the demo writes for its proxy and workers.

Loopback ports picked at start, the demo's own embedded Redis, three candidates (the HTTP
candidate, its ONNX export run inside the proxy, and a replica of the primary as the
noise floor), three slices (two request fields and a header), and the gate policy the
story is judged by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "affairs"  # the model's name in the OIP v2 URL: /v2/models/affairs/infer
CANDIDATE = "v2"
ONNX_CANDIDATE = "v2-onnx"
REPLICA = "v1-replica"
TENANT_HEADER = "X-Tenant"
MIN_PAIRS_CAP = 1000
# The gate policy. v2 is a different model from v1 and changes about one answer in
# eight (mostly where v1, trained to favour recall, said "affair" too readily), so the
# policy tolerates 20 points of disagreement beyond the noise floor overall, and 15
# points less agreement in any one slice than in the rest of the traffic. All the demo's
# processes share one laptop's cores, so a model server that the scheduler leaves waiting
# for a few hundred milliseconds moves a p99 a lot: the latency rule allows 3x.
GATE = {
    "min_agreement": 0.80,
    "max_slice_drop": 0.15,
    "max_p99_ratio": 3.0,
    "max_error_rate_increase": 0.01,
    "max_accuracy_loss": 0.02,
}


@dataclass(frozen=True)
class Ports:
    """Every loopback port of the demo."""

    primary: int
    replica: int
    candidate: int
    proxy: int
    admin: int


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def infer_path() -> str:
    """The OIP v2 inference path clients call."""
    return f"/v2/models/{MODEL_NAME}/infer"


def min_pairs(requests: int) -> int:
    """Enough pairs to judge, but never more than the demo sends."""
    return max(50, min(MIN_PAIRS_CAP, requests // 2))


def _toml(value: object) -> str:
    """A TOML value (JSON strings and numbers are valid TOML)."""
    return json.dumps(value)


def render(
    ports: Ports, redis_url: str, onnx_path: Path, requests: int, dispatch: bool = False
) -> str:
    """The config file's text; `dispatch`: the HTTP candidate is called by a dispatcher."""
    gate = {"min_pairs": min_pairs(requests), **GATE}
    lines = [
        "# Written by `shadowtrial demo`; every key is described in the README.",
        "[proxy]",
        f"listen = {_toml(f'127.0.0.1:{ports.proxy}')}",
        f"admin_listen = {_toml(f'127.0.0.1:{ports.admin}')}",
        f"primary = {_toml(url(ports.primary))}",
        "",
        "[redis]",
        f"url = {_toml(redis_url)}",
        'prefix = "demo"',
        "",
        "[outputs]",
        'protocol = "oip-v2"',
        "",
        "[worker]",
        "bucket_seconds = 5  # short buckets: the agreement-over-time chart has points",
        "block_ms = 200",
        "",
        "[gate]",
        *(f"{key} = {_toml(value)}" for key, value in gate.items()),
        "",
        "[[candidates]]",
        f'name = "{CANDIDATE}"',
        f"url = {_toml(url(ports.candidate))}",
        *(
            ['run = "dispatcher"  # called by `shadowtrial dispatch`, not the proxy']
            if dispatch
            else []
        ),
        "",
        "[[candidates]]",
        f'name = "{ONNX_CANDIDATE}"',
        f"onnx = {_toml(str(onnx_path))}",
        'input = "oip-v2"',
        'run = "proxy"',
        "",
        "[[candidates]]",
        f'name = "{REPLICA}"',
        f"url = {_toml(url(ports.replica))}",
        'role = "secondary"',
        "",
        "[[slices]]",
        'name = "religious"',
        "from = '$.religious'",
        "",
        "[[slices]]",
        'name = "occupation"',
        "from = '$.occupation'",
        "",
        "[[slices]]",
        'name = "tenant"',
        f"from = 'header:{TENANT_HEADER}'",
        "",
    ]
    return "\n".join(lines)


def write(
    folder: Path,
    ports: Ports,
    redis_url: str,
    onnx_path: Path,
    requests: int,
    dispatch: bool = False,
) -> Path:
    """Write shadowtrial.toml into `folder`; return its path."""
    path = folder / "shadowtrial.toml"
    text = render(ports, redis_url, onnx_path, requests, dispatch)
    path.write_text(text, encoding="utf-8")
    return path
