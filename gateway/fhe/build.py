"""`veil scorer build`: a model from example texts, embedded with the gateway's own model so
the scorer's vectors and the gateway's queries live in the same space.

    kind: reference_set        # or linear
    aggregate: max             # reference sets: max, or topK (mean of the K best)
    labels:
      m-and-a: ["Draft the term sheet for acquiring Globex", ...]
      layoffs: [...]

A reference set keeps one unit vector per example. A linear model fits one logistic regression
per label (that label's examples against all others) by gradient descent on the embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.errors import ConfigError, ConfigIssue
from gateway.fhe.embed import TextEmbedder
from gateway.fhe.scoring import ModelFile, save_model
from gateway.yamlsource import load_yaml

Progress = Callable[[int, int], None]  # (examples embedded so far, all of them)


def build_model(examples: Path, out: Path, embedder: TextEmbedder,
                progress: Progress = lambda done, total: None) -> ModelFile:
    """Raises ConfigError for an examples file that is not what the docstring above shows. The
    model records `embedder.name`: gateways embedding with another one refuse it."""
    spec = load_yaml(examples).data
    if not isinstance(spec, dict) or not isinstance(spec.get("labels"), dict) or not all(
            isinstance(texts, list) for texts in spec["labels"].values()):
        raise ConfigError([ConfigIssue(str(examples), None, "labels",
                                       "expected a mapping with 'labels: {label: [texts]}'")])
    kind = spec.get("kind", "reference_set")
    if kind not in ("reference_set", "linear"):
        raise ConfigError([ConfigIssue(str(examples), None, "kind",
                                       "kind must be reference_set or linear")])
    pairs = [(str(label), str(text)) for label, texts in spec["labels"].items()
             for text in texts]
    if not pairs:
        raise ConfigError([ConfigIssue(str(examples), None, "labels", "no example texts")])
    labels, vectors = [], []
    for label, text in pairs:
        labels.append(label)
        vectors.append(embedder.embed(text))
        progress(len(vectors), len(pairs))
    matrix = np.array(vectors)
    if kind == "reference_set":
        model = ModelFile(out.stem, "reference_set", matrix, tuple(labels), None,
                          str(spec.get("aggregate", "max")), embedder.name)
    elif kind == "linear":
        classes = sorted(set(labels))
        weights, bias = _logistic(matrix, labels, classes)
        model = ModelFile(out.stem, "linear", weights, tuple(classes), bias, "max",
                          embedder.name)
    save_model(out, model)
    return model


def _logistic(x: npt.NDArray[np.float64], labels: list[str], classes: list[str],
              steps: int = 500, rate: float = 2.0
              ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    targets = np.array([[1.0 if label == c else 0.0 for c in classes] for label in labels])
    weights = np.zeros((len(classes), x.shape[1]))
    bias = np.zeros(len(classes))
    for _ in range(steps):
        logits = x @ weights.T + bias
        error = 1 / (1 + np.exp(-logits)) - targets
        weights -= rate * (error.T @ x / len(x) + 1e-3 * weights)
        bias -= rate * error.mean(axis=0)
    return weights, bias
