"""A small, real model server speaking the Open Inference Protocol v2 (JSON).

    python -m shadowtrial.examples.model_server --port 8001 --variant v1

A logistic-regression classifier over the numeric features of each row, answering
`POST /v2/models/{name}/infer` with a `label` tensor (BYTES) and a `probabilities`
tensor (FP32, one row per input row, classes negative/positive). Variants:

- v1: the current model.
- v2: the same weights with a shifted bias: agrees with v1 on most rows, flips the
  rows near the decision boundary (what a shadow trial should find).
- hang: accepts the request and never answers (a stuck candidate).
- error: answers 500 to every inference (a broken candidate).

Also `GET /v2/health/live`, `/v2/health/ready` and `/v2/models/{name}` (metadata).
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CLASSES = ("negative", "positive")
WEIGHTS = (1.0, -0.5, 0.25, 0.75, -0.25)
BIAS = {"v1": 0.0, "v2": -0.35}
VARIANTS = ("v1", "v2", "hang", "error")


class BadInput(ValueError):
    """The request is not an OIP-v2 inference request this model can answer."""


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def predict_rows(rows: Sequence[Sequence[float]], bias: float) -> list[tuple[str, float]]:
    """(label, probability of positive) for each row."""
    out = []
    for row in rows:
        z = bias + sum(WEIGHTS[i % len(WEIGHTS)] * float(x) for i, x in enumerate(row))
        p = 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))
        out.append((CLASSES[int(p >= 0.5)], p))
    return out


def parse_rows(payload: Any) -> list[list[float]]:
    """The rows of the first input tensor (shape [N, F] or [F])."""
    try:
        tensor = payload["inputs"][0]
        shape = [int(d) for d in tensor["shape"]]
        data = [float(x) for x in tensor["data"]]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BadInput(f"expected OIP-v2 inputs with shape and numeric data ({exc})") from None
    width = shape[-1] if shape else len(data)
    if width <= 0 or len(data) % width or (len(shape) == 2 and shape[0] * width != len(data)):
        raise BadInput(f"data of length {len(data)} does not fit shape {shape}")
    return [data[i : i + width] for i in range(0, len(data), width)]


def answer(name: str, variant: str, payload: Any) -> dict[str, Any]:
    """The OIP-v2 response body for one request."""
    rows = parse_rows(payload)
    predictions = predict_rows(rows, BIAS[variant])
    body: dict[str, Any] = {
        "model_name": name,
        "model_version": variant,
        "outputs": [
            {
                "name": "label",
                "shape": [len(rows)],
                "datatype": "BYTES",
                "data": [label for label, _ in predictions],
            },
            {
                "name": "probabilities",
                "shape": [len(rows), 2],
                "datatype": "FP32",
                "data": [v for _, p in predictions for v in (round(1 - p, 6), round(p, 6))],
            },
        ],
    }
    if isinstance(payload, dict) and "id" in payload:
        body["id"] = payload["id"]
    return body


def create_app(variant: str = "v1", name: str = "model") -> Starlette:
    """The model server app for one variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")

    async def infer(request: Request) -> Response:
        body = await request.body()
        if variant == "hang":
            await asyncio.Event().wait()  # never set: the stuck candidate
        if variant == "error":
            return _json({"error": "model failed", "detail": "variant error"}, 500)
        try:
            payload = orjson.loads(body)
            return _json(answer(request.path_params["model"], variant, payload))
        except orjson.JSONDecodeError as exc:
            return _json({"error": "body is not JSON", "detail": str(exc)}, 400)
        except BadInput as exc:
            return _json({"error": "bad input", "detail": str(exc)}, 400)

    async def health(request: Request) -> Response:
        return _json({"live": True, "ready": True})

    async def metadata(request: Request) -> Response:
        return _json(
            {
                "name": request.path_params["model"],
                "versions": [variant],
                "platform": "shadowtrial-example",
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [
                    {"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
                ],
            }
        )

    return Starlette(
        routes=[
            Route("/v2/health/live", health, methods=["GET"]),
            Route("/v2/health/ready", health, methods=["GET"]),
            Route("/v2/models/{model}", metadata, methods=["GET"]),
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run one variant on host:port until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m shadowtrial.examples.model_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--variant", choices=VARIANTS, default="v1")
    parser.add_argument("--name", default="model", help="model name in answers' metadata")
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(args.variant), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
