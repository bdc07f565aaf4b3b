"""Encrypted scoring on the scorer's side: models, compiled to plaintext diagonals once, and
the baby-step/giant-step evaluation on a query ciphertext. The scorer holds no secret key: it
sees ciphertexts in and sends ciphertexts out.

A model file is a numpy `.npz` (loaded with allow_pickle=False) with:
  kind        "reference_set" (rows are labelled unit vectors; the gateway takes the max or the
              top-k mean of each label's cosines) or "linear" (rows are class weights; the
              scorer adds the bias, the gateway applies the sigmoid)
  weights     float32 [K, 384]
  labels      str [K]   (reference set: each row's label; linear: each row's class)
  bias        float32 [K] (linear only)
  aggregate   "max" or "top3" style ("topk"), reference sets only
  embedder    the gateway embedder its rows were made with (gateway/fhe/embed.py: absent in
              files from before there was a choice, which were all made with minilm)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as seal

from gateway.fhe.packing import (
    INPUT_DIM,
    PACKINGS,
    Layout,
    bias_slots,
    diagonals,
    layout_for,
)
from gateway.fhe.seal import SCALE

ModelKind = Literal["reference_set", "linear"]
# Plaintexts a worker keeps per model, over its packings (~128 KiB each: 2048 is 256 MiB). One
# query a ciphertext is always compiled; packings of more are offered while they fit.
MAX_PLAINTEXTS = 2048


@dataclass(frozen=True)
class ModelFile:
    name: str
    kind: ModelKind
    weights: npt.NDArray[np.float64]
    labels: tuple[str, ...]
    bias: npt.NDArray[np.float64] | None
    aggregate: str  # "max" or "topK" (reference sets)
    embedder: str = "minilm"

    def packings(self) -> list[Layout]:
        """One query a ciphertext, then 2, 4, 8 while the plaintexts fit MAX_PLAINTEXTS."""
        rows = self.weights.shape[0]
        layouts: list[Layout] = []
        total = 0
        for queries in PACKINGS:
            layout = layout_for(rows, queries)
            total += layout.plaintexts
            if layouts and total > MAX_PLAINTEXTS:
                break
            layouts.append(layout)
        return layouts

    def describe(self) -> dict[str, object]:
        """What the gateway needs to use it: never the weights."""
        return {"name": self.name, "kind": self.kind, "rows": int(self.weights.shape[0]),
                "labels": list(self.labels), "aggregate": self.aggregate,
                "embedder": self.embedder,
                "packings": [layout.queries for layout in self.packings()],
                "rotation_steps": rotation_steps(self.packings())}


def rotation_steps(layouts: list[Layout]) -> list[int]:
    return sorted({step for layout in layouts for step in layout.rotation_steps()})


def load_model(path: Path) -> ModelFile:
    with np.load(path, allow_pickle=False) as data:
        kind = str(data["kind"])
        weights = np.asarray(data["weights"], dtype=np.float64)
        labels = tuple(str(label) for label in data["labels"])
        bias = np.asarray(data["bias"], dtype=np.float64) if "bias" in data else None
        aggregate = str(data["aggregate"]) if "aggregate" in data else "max"
        embedder = str(data["embedder"]) if "embedder" in data else "minilm"
    if kind not in ("reference_set", "linear"):
        raise ValueError(f"{path}: unknown model kind {kind!r}")
    if weights.ndim != 2 or weights.shape[1] != INPUT_DIM or len(labels) != weights.shape[0]:
        raise ValueError(f"{path}: weights must be [K, {INPUT_DIM}] with one label per row")
    if kind == "linear" and (bias is None or bias.shape != (weights.shape[0],)):
        raise ValueError(f"{path}: a linear model needs a bias per row")
    if not np.isfinite(weights).all():
        raise ValueError(f"{path}: weights must be finite")
    return ModelFile(path.stem, kind, weights, labels, bias,  # type: ignore[arg-type]
                     aggregate, embedder)


def save_model(path: Path, model: ModelFile) -> None:
    arrays: dict[str, npt.ArrayLike] = {
        "kind": np.array(model.kind), "weights": model.weights.astype(np.float32),
        "labels": np.array(model.labels), "aggregate": np.array(model.aggregate),
        "embedder": np.array(model.embedder)}
    if model.bias is not None:
        arrays["bias"] = model.bias.astype(np.float32)
    np.savez(path, **arrays)  # type: ignore[arg-type]


@dataclass
class CompiledModel:
    model: ModelFile
    layout: Layout
    plaintexts: list[list[seal.Plaintext]]  # per output set, BSGS order
    bias: list[seal.Plaintext] | None  # per set, at the product's scale


def compile_model(model: ModelFile, context: seal.SEALContext) -> dict[int, CompiledModel]:
    """Per packing (queries a ciphertext), every diagonal encoded once, at load: queries then
    cost only multiplies and rotations."""
    return {layout.queries: compile_layout(model, layout, context)
            for layout in model.packings()}


def compile_layout(model: ModelFile, layout: Layout, context: seal.SEALContext
                   ) -> CompiledModel:
    encoder = seal.CKKSEncoder(context)
    parms_id = context.first_parms_id()
    sets = []
    for set_values in diagonals(model.weights, layout):
        encoded = []
        for values in set_values:
            plaintext = seal.Plaintext()
            encoder.encode(values.tolist(), parms_id, SCALE, plaintext)
            encoded.append(plaintext)
        sets.append(encoded)
    bias = None
    if model.bias is not None:
        bias = []
        for index in range(layout.sets):
            plaintext = seal.Plaintext()
            encoder.encode(bias_slots(model.bias, layout, index).tolist(), parms_id,
                           SCALE * SCALE, plaintext)
            bias.append(plaintext)
    return CompiledModel(model, layout, sets, bias)


def evaluate(query: seal.Ciphertext, compiled: CompiledModel, evaluator: seal.Evaluator,
             galois: seal.GaloisKeys, sets: range | None = None) -> list[seal.Ciphertext]:
    """y = W x by BSGS over complex diagonals; one rescaled ciphertext per output set (those
    in `sets`, default all). The fold rotations come after the rescale: at one prime they cost
    half as much."""
    layout = compiled.layout
    baby = [query]
    for step in range(1, layout.baby):
        rotated = seal.Ciphertext()
        evaluator.rotate_vector(query, step, galois, rotated)
        baby.append(rotated)
    out = []
    for index in sets if sets is not None else range(len(compiled.plaintexts)):
        plaintexts = compiled.plaintexts[index]
        total = None
        for j in range(layout.giant):
            inner = None
            for b in range(layout.baby):
                product = seal.Ciphertext()
                evaluator.multiply_plain(baby[b], plaintexts[j * layout.baby + b], product)
                if inner is None:
                    inner = product
                else:
                    evaluator.add_inplace(inner, product)
            assert inner is not None  # noqa: S101 (baby >= 1)
            if j:
                evaluator.rotate_vector_inplace(inner, j * layout.baby, galois)
            if total is None:
                total = inner
            else:
                evaluator.add_inplace(total, inner)
        assert total is not None  # noqa: S101 (giant >= 1)
        if compiled.bias is not None:  # at each output's chunk 0: the fold adds it once
            evaluator.add_plain_inplace(total, compiled.bias[index])
        evaluator.rescale_to_next_inplace(total)
        _fold(total, layout, evaluator, galois)
        out.append(total)
    return out


def _fold(total: seal.Ciphertext, layout: Layout, evaluator: seal.Evaluator,
          galois: seal.GaloisKeys) -> None:
    """Each output's chunks summed into its chunk 0, stage by stage (packing.Layout.fold)."""
    for stage in layout.fold():
        rotations = []
        for step in stage:
            rotated = seal.Ciphertext()
            evaluator.rotate_vector(total, step, galois, rotated)
            rotations.append(rotated)
        for rotated in rotations:
            evaluator.add_inplace(total, rotated)
