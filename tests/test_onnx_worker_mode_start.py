"""A worker-run ONNX candidate (the default mode) still fails `serve` at start when unusable."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ModelLoadError
from common.settings import settings_from_mapping
from proxy.candidates import DeferredCandidate, build_runners


def _settings(onnx: str) -> object:
    return settings_from_mapping({"candidates": [{"name": "m", "onnx": onnx}]}, environ={})


def test_worker_mode_is_the_default_and_checks_the_file(tmp_path: Path) -> None:
    from fixtures.onnx_models import tiny_model

    settings = _settings(str(tiny_model(tmp_path, "sum")))
    assert settings.candidates[0].run == "worker"
    [runner] = build_runners(settings)
    assert isinstance(runner, DeferredCandidate)


@pytest.mark.parametrize("content", [None, b"not an onnx file"])
def test_missing_or_broken_model_fails_at_start(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        build_runners(_settings(str(path)))
