"""The one example model server: Open Inference Protocol v2 (KServe v2 REST) over HTTP.

    python -m shadowtrial.examples.model_server --port 8001 --variant v1
    python -m shadowtrial.examples.model_server --port 8001 --model v1.onnx --version v1

Two kinds of model behind the same routes, so the compose demo, `shadowtrial demo`, the
examples and the tests all run the same server:

- a built-in variant (`--variant`): a logistic-regression classifier over the numeric
  features of the first input tensor, answering a `label` tensor (BYTES) and a
  `probabilities` tensor (FP32, classes negative/positive). v1 is the current model; v2
  the same weights with a shifted bias (agrees on most rows, flips those near the
  boundary: what a shadow trial should find); hang accepts and never answers; error
  answers 500 to every inference.
- an ONNX file (`--model`), fed one tensor per feature by name (models.onnx_model), as
  Triton or MLServer would serve it; the demo's primary, replica and HTTP candidate.

Routes: `GET /v2/health/live`, `/v2/health/ready`, `/v2/models/{name}`,
`/v2/models/{name}/ready` and `POST /v2/models/{name}/infer`. Bad requests get 400 with
`{"error": ...}`; with `--name`, another model name gets 404.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.errors import CandidateError
from common.settings import CandidateSettings

if TYPE_CHECKING:
    from models.onnx_model import OnnxModel

CLASSES = ("negative", "positive")
WEIGHTS = (1.0, -0.5, 0.25, 0.75, -0.25)
BIAS = {"v1": 0.0, "v2": -0.35}
VARIANTS = ("v1", "v2", "hang", "error")


class BadInput(ValueError):
    """The request is not an OIP-v2 inference request this model can answer."""


class ServedModel(Protocol):
    """A model this server can put behind the OIP v2 routes."""

    version: str

    async def infer(self, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for one inference request to model `name`."""
        ...

    def metadata(self, name: str) -> dict[str, Any]:
        """The model's OIP v2 metadata as `name`."""
        ...


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _with_id(doc: dict[str, Any], payload: Any) -> dict[str, Any]:
    """The request's `id` echoed, as OIP v2 asks."""
    if isinstance(payload, dict) and payload.get("id") is not None:
        doc["id"] = payload["id"]
    return doc


# -- the built-in variants ------------------------------------------------------------------


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
    """The OIP-v2 response body of a built-in variant for one request."""
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
    return _with_id(body, payload)


class Variant:
    """A built-in variant (see the module docstring)."""

    def __init__(self, variant: str) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        self.version = variant

    async def infer(self, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if self.version == "hang":
            await asyncio.Event().wait()  # never set: the stuck candidate
        if self.version == "error":
            return 500, {"error": "model failed", "detail": "variant error"}
        try:
            return 200, answer(name, self.version, orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            return 400, {"error": "body is not JSON", "detail": str(exc)}
        except BadInput as exc:
            return 400, {"error": "bad input", "detail": str(exc)}

    def metadata(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "versions": [self.version],
            "platform": "shadowtrial-example",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, -1]}],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
            ],
        }


# -- an ONNX file ---------------------------------------------------------------------------


class OnnxServed:
    """An ONNX file fed by tensor name (models.onnx_model), as a model server would."""

    KINDS = {"float": "FP32", "int": "INT64", "bool": "BOOL", "str": "BYTES"}

    def __init__(self, model: OnnxModel, version: str) -> None:
        self.model = model
        self.version = version

    async def infer(self, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        result = self.model.predict_body(body)
        if isinstance(result, CandidateError):
            return 400, {"error": "bad input", "detail": result.detail}
        doc = orjson.loads(result)
        doc.pop("parameters", None)  # the marker of shadowtrial's in-proxy ONNX answers
        doc["model_name"], doc["model_version"] = name, self.version
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        return 200, _with_id(doc, payload)

    def metadata(self, name: str) -> dict[str, Any]:
        inputs = [
            {
                "name": i.name,
                "datatype": self.KINDS[i.kind],
                "shape": [-1, *(d or -1 for d in i.dims)],
            }
            for i in self.model.inputs
        ]
        outputs = [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
        ]
        return {"name": name, "versions": [self.version], "platform": "onnxruntime",
                "inputs": inputs, "outputs": outputs}  # fmt: skip


def load_model(path: str, version: str) -> OnnxServed:
    """The ONNX file at `path` ready to serve (ModelLoadError if unusable)."""
    from models.onnx_model import OnnxModel  # onnxruntime only when a file is served

    settings = CandidateSettings(name=version, onnx=path, input="oip-v2", threads=1)
    return OnnxServed(OnnxModel.load(settings), version)


# -- the app --------------------------------------------------------------------------------


def create_app(model: ServedModel | str = "v1", name: str | None = None) -> Starlette:
    """The OIP v2 app serving `model` (a ServedModel, or the name of a built-in variant);
    with `name`, only that model name is served (others get 404), else any name is."""
    served = Variant(model) if isinstance(model, str) else model

    def unknown(request: Request) -> Response | None:
        asked = request.path_params["model"]
        if name is None or asked == name:
            return None
        return _json({"error": f"model {asked!r} not found", "detail": f"try {name!r}"}, 404)

    async def infer(request: Request) -> Response:
        body = await request.body()
        missing = unknown(request)
        if missing is not None:
            return missing
        status, doc = await served.infer(request.path_params["model"], body)
        return _json(doc, status)

    async def health(request: Request) -> Response:
        return _json({"live": True, "ready": True})

    async def model_ready(request: Request) -> Response:
        return unknown(request) or _json({"name": request.path_params["model"], "ready": True})

    async def model_metadata(request: Request) -> Response:
        return unknown(request) or _json(served.metadata(request.path_params["model"]))

    return Starlette(
        routes=[
            Route("/v2/health/live", health, methods=["GET"]),
            Route("/v2/health/ready", health, methods=["GET"]),
            Route("/v2/models/{model}", model_metadata, methods=["GET"]),
            Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve one model on host:port until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m shadowtrial.examples.model_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--variant", choices=VARIANTS, default="v1", help="a built-in model")
    parser.add_argument("--model", help="an ONNX file to serve instead of a variant")
    parser.add_argument("--version", default="v1", help="model_version of an ONNX file")
    parser.add_argument("--name", help="the only model name served (default: any)")
    args = parser.parse_args(argv)
    import uvicorn

    served = load_model(args.model, args.version) if args.model else Variant(args.variant)
    uvicorn.run(
        create_app(served, args.name), host=args.host, port=args.port, log_level="warning",
        access_log=False, http="httptools", loop="uvloop", lifespan="off",
    )  # fmt: skip


if __name__ == "__main__":
    main()
