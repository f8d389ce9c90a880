"""A model server for one ONNX file, speaking the Open Inference Protocol v2 (KServe v2 REST).

    python -m shadowtrial.demo.model_server --model v1.onnx --port 8001 --version v1

The demo's primary, its replica and the HTTP candidate are three of these processes, as
Triton or MLServer would serve them. Routes: `GET /v2/health/live`, `/v2/health/ready`,
`/v2/models/{name}`, `/v2/models/{name}/ready` and `POST /v2/models/{name}/infer`, which
takes one tensor per feature (`{"name": "age", "shape": [1, 1], "datatype": "FP32", ...}`)
and answers a `label` tensor (BYTES) and a `probabilities` tensor (FP32, its class names in
the tensor's parameters). Bad requests get 400 with `{"error": ...}`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.errors import CandidateError
from common.onnx_model import OnnxModel
from common.settings import CandidateSettings
from shadowtrial.demo.config import MODEL_NAME


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def load_model(path: str, version: str) -> OnnxModel:
    """The ONNX file behind this server, fed by tensor name (ModelLoadError if unusable)."""
    settings = CandidateSettings(name=version, onnx=path, input="oip-v2", threads=1)
    return OnnxModel.load(settings)


def answer(model: OnnxModel, body: bytes, name: str, version: str) -> tuple[int, dict[str, Any]]:
    """(status, body) for one inference request."""
    result = model.predict_body(body)
    if isinstance(result, CandidateError):
        return 400, {"error": "bad input", "detail": result.detail}
    doc = orjson.loads(result)
    doc.pop("parameters", None)  # the marker of shadowtrial's in-proxy ONNX answers
    doc["model_name"], doc["model_version"] = name, version
    try:
        request_id = orjson.loads(body).get("id")
    except (orjson.JSONDecodeError, AttributeError):
        request_id = None
    if request_id is not None:
        doc["id"] = request_id
    return 200, doc


def metadata(model: OnnxModel, name: str, version: str) -> dict[str, Any]:
    """The model's OIP v2 metadata: its input tensors and outputs."""
    kinds = {"float": "FP32", "int": "INT64", "bool": "BOOL", "str": "BYTES"}
    return {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime",
        "inputs": [
            {"name": i.name, "datatype": kinds[i.kind], "shape": [-1, *(d or -1 for d in i.dims)]}
            for i in model.inputs
        ],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
        ],
    }


def create_app(model: OnnxModel, version: str, name: str = MODEL_NAME) -> Starlette:
    """The OIP v2 app serving `model` as `name`."""

    def known(request: Request) -> Response | None:
        asked = request.path_params["model"]
        if asked != name:
            return _json({"error": f"model {asked!r} not found", "detail": f"try {name!r}"}, 404)
        return None

    async def infer(request: Request) -> Response:
        missing = known(request)
        if missing is not None:
            return missing
        status, doc = answer(model, await request.body(), name, version)
        return _json(doc, status)

    async def health(request: Request) -> Response:
        return _json({"live": True, "ready": True})

    async def model_ready(request: Request) -> Response:
        return known(request) or _json({"name": name, "ready": True})

    async def model_metadata(request: Request) -> Response:
        return known(request) or _json(metadata(model, name, version))

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
    """Serve one ONNX model on host:port until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m shadowtrial.demo.model_server")
    parser.add_argument("--model", required=True, help="the ONNX file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="v1", help="model_version in answers")
    parser.add_argument("--name", default=MODEL_NAME, help="the model's name in the URL")
    args = parser.parse_args(argv)
    import uvicorn

    app = create_app(load_model(args.model, args.version), args.version, args.name)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        http="httptools", loop="uvloop", lifespan="off",
    )  # fmt: skip


if __name__ == "__main__":
    main()
