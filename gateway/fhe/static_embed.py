"""A static embedding distilled from the pinned MiniLM (the idea of model2vec): one forward pass
per vocabulary token gives a table of 30,522 x 384 rows, and a text's embedding is the
normalized sum of its tokens' rows. Microseconds a window instead of ~50 ms, in the same 384
dimensions (the scorer's layout), at some cost in quality: tests/bench/embedders.py measures
both.

A row is MiniLM's mean output over `[CLS] token [SEP]`. At load the rows are centred (minus
their mean over word tokens, which would otherwise make every two texts look alike) and
weighted by log(1 + rank): BERT's vocabulary lists words by frequency after the single
characters, so frequent words ("the", "of") weigh little and rare ones much (Zipf, as model2vec
does).

Nothing is downloaded: the table is derived from the hash-pinned model, by `veil scorer distill`
or at first use, and cached in `fhe.embedder_cache_dir` under a name keyed by the model's
sha256. A cached table is refused unless it names this model and recipe, its rows hash to the
digest it carries, and rows drawn at random are recomputed with the model and agree: a table
from another model, a damaged one or a wholesale substitution is refused; the cache directory
must still be kept as private as `fhe.keys_dir`, since an edit to a handful of rows with the
digest rewritten passes the sampled check with high probability.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.errors import EmbeddingModelError
from gateway.fhe.chunks import Windows
from gateway.fhe.embed import DIMENSION, MODEL_SHA256, load_tokenizer, model_session, token_id

NAME = "static-minilm-v1"  # recorded in every model built with it; a new recipe, a new name
RECIPE = "mean over [CLS] t [SEP]; centred; log1p(rank) weights"
SAMPLED_ROWS = 48
TOLERANCE = 2e-3  # int8 kernels differ slightly between CPUs; a substituted row is off by ~1
BATCH = 64  # single-token inputs: small batches run fastest on onnxruntime's CPU kernels

Progress = Callable[[int, int], None]  # (tokens done, all of them)


def table_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{NAME}-{MODEL_SHA256[:16]}.npz"


class TokenRows:
    """Computes rows from the pinned model: the whole table at distillation, a sample at load."""

    def __init__(self, threads: int = 1) -> None:
        self.tokenizer = load_tokenizer()
        self._session = model_session(threads)
        self._cls, self._sep = (token_id(self.tokenizer, t) for t in ("[CLS]", "[SEP]"))

    def rows(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        inputs = np.stack([np.full(len(ids), self._cls), ids, np.full(len(ids), self._sep)],
                          axis=1).astype(np.int64)
        (hidden,) = self._session.run(["last_hidden_state"], {
            "input_ids": inputs, "attention_mask": np.ones_like(inputs),
            "token_type_ids": np.zeros_like(inputs)})
        rows: npt.NDArray[np.float32] = np.asarray(hidden, dtype=np.float32).mean(axis=1)
        return rows

    def table(self, progress: Progress = lambda done, total: None) -> npt.NDArray[np.float32]:
        vocabulary = self.tokenizer.get_vocab_size()
        table = np.zeros((vocabulary, DIMENSION), dtype=np.float32)
        for start in range(0, vocabulary, BATCH):
            ids = np.arange(start, min(vocabulary, start + BATCH), dtype=np.int64)
            table[ids] = self.rows(ids)
            progress(int(ids[-1]) + 1, vocabulary)
        return table


def _digest(rows: npt.NDArray[np.float32]) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<f4").tobytes()).hexdigest()


def distill(cache_dir: str | Path, progress: Progress = lambda done, total: None,
            threads: int = 1) -> Path:
    """Writes the table (atomically: a reader never sees half a file) and returns its path.
    The folder and the file are made first: a folder it cannot write fails at once, not after
    the work."""
    path = table_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".distill-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as out:
            rows = TokenRows(threads).table(progress)
            np.savez(out, rows=rows, model_sha256=np.array(MODEL_SHA256),
                     recipe=np.array(RECIPE), rows_sha256=np.array(_digest(rows)))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_rows(path: Path, model: TokenRows) -> npt.NDArray[np.float32]:
    """The table's raw rows, verified (see the module's docstring); raises EmbeddingModelError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            rows = np.asarray(data["rows"], dtype=np.float32)
            named = (str(data["model_sha256"]), str(data["recipe"]), str(data["rows_sha256"]))
    except (OSError, KeyError, ValueError) as exc:
        raise EmbeddingModelError(f"{path} is not a static embedding table "
                                  f"({type(exc).__name__})") from None
    if named[:2] != (MODEL_SHA256, RECIPE):
        raise EmbeddingModelError(f"{path} was distilled from another model or recipe: "
                                  "run `veil scorer distill` again")
    if rows.shape != (model.tokenizer.get_vocab_size(), DIMENSION) \
            or not np.isfinite(rows).all():
        raise EmbeddingModelError(f"{path} has rows of shape {rows.shape}")
    if _digest(rows) != named[2]:
        raise EmbeddingModelError(f"{path} does not hash to the digest it carries (damaged "
                                  "or edited): run `veil scorer distill` again")
    sample = np.array(sorted(secrets.SystemRandom().sample(range(len(rows)), SAMPLED_ROWS)),
                      dtype=np.int64)
    if float(np.abs(model.rows(sample) - rows[sample]).max()) > TOLERANCE:
        raise EmbeddingModelError(f"{path} disagrees with the pinned model on sampled rows: "
                                  "run `veil scorer distill` again")
    return rows


def weighted(rows: npt.NDArray[np.float32], first_word: int) -> npt.NDArray[np.float32]:
    """Centred over word tokens (ids from `first_word`), then weighted by log(1 + rank)."""
    centred = rows - rows[first_word:].mean(axis=0)
    rank = np.maximum(np.arange(len(rows)) - first_word + 1, 1)
    table: npt.NDArray[np.float32] = (centred * np.log1p(rank)[:, None]).astype(np.float32)
    return table


class StaticEmbedder:
    """Same calls as `gateway.fhe.embed.Embedder`; `build_missing` distills a missing table
    (~30-40 s on two cores) instead of refusing to start."""

    name = NAME

    def __init__(self, cache_dir: str | Path, build_missing: bool = True) -> None:
        path = table_path(cache_dir)
        if not path.exists():
            if not build_missing:
                raise EmbeddingModelError(f"no static embedding table at {path}: run "
                                          "`veil scorer distill`")
            try:
                distill(cache_dir)
            except OSError as exc:
                raise EmbeddingModelError(f"cannot write the static embedding table to {path} "
                                          f"({exc.strerror}): run `veil scorer distill` where "
                                          "fhe.embedder_cache_dir points") from None
        model = TokenRows()
        self._tokenizer = model.tokenizer
        first_word = token_id(model.tokenizer, "the")
        self._table = weighted(load_rows(path, model), first_word)
        self._empty = [token_id(model.tokenizer, t) for t in ("[CLS]", "[SEP]")]

    def _ids(self, text: str) -> list[int]:
        """The tokenizer's ids without its offsets (a third of the time on a 20 KB prompt)."""
        ids: list[int] = self._tokenizer.encode_batch_fast(
            [text], add_special_tokens=False)[0].ids
        return ids

    def embed(self, text: str) -> npt.NDArray[np.float64]:
        ids = self._ids(text) or self._empty
        vector: npt.NDArray[np.float64] = _unit(self._table[ids].sum(axis=0, dtype=np.float64))
        return vector

    def embed_windows(self, text: str, windows: Windows) -> npt.NDArray[np.float64]:
        """One row per window (raises TooManyChunks first)."""
        ids = self._ids(text)
        if not ids:
            return self.embed(text)[None, :]
        rows = self._table[np.asarray(ids)]
        sums = np.array([rows[start:end].sum(axis=0, dtype=np.float64)
                         for start, end in windows.spans(len(ids))])
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        vectors: npt.NDArray[np.float64] = sums / np.where(norms > 0, norms, 1)
        return vectors


def _unit(vector: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norm = float(np.linalg.norm(vector))
    unit: npt.NDArray[np.float64] = vector / norm if norm > 0 else vector
    return unit
