"""Embeddings from an attested backend's `/v1/embeddings`, for deployments that would rather
not run the model on the gateway. An embedding can be inverted back to text, so it goes only to
a backend whose attestation currently verifies, over a connection pinned to its attested key."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson

from gateway.errors import BodyTooLarge, ScorerError
from gateway.fhe.embed import DIMENSION
from gateway.proxy.target import embeddings_path
from gateway.settings import BackendSettings
from gateway.streams import read_at_most

MAX_BYTES = 1024 * 1024


class RemoteEmbedder:
    def __init__(self, backend: BackendSettings, model: str,
                 headers: Callable[[], Mapping[str, str]],
                 pin: Callable[[str], aiohttp.Fingerprint | None],
                 session: Callable[[str], aiohttp.ClientSession]) -> None:
        self._backend = backend
        self._model = model
        self._headers = headers
        self._pin = pin
        self._session = session

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float64]:
        """One L2-normalized row per text, in order (one request: `input` is the list)."""
        pin = self._pin(self._backend.name)
        if pin is None:
            raise ScorerError(f"embedding backend {self._backend.name} is not attested now")
        try:
            async with self._session(self._backend.name).post(
                    self._backend.url + embeddings_path(self._backend, self._model), ssl=pin,
                    headers=dict(self._headers()),
                    data=orjson.dumps({"model": self._model, "input": texts})) as response:
                body = await read_at_most(response.content, MAX_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
            raise ScorerError(f"embedding backend failed: {type(exc).__name__}") from None
        if status != 200:
            raise ScorerError(f"embedding backend answered {status}")
        try:
            rows = sorted(orjson.loads(body)["data"], key=lambda row: int(row["index"]))
            vectors = np.array([row["embedding"] for row in rows], dtype=np.float64)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            raise ScorerError("embedding backend sent a malformed answer") from None
        if vectors.shape != (len(texts), DIMENSION) or not np.isfinite(vectors).all():
            raise ScorerError(f"embedding backend sent vectors of shape {vectors.shape}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not (norms > 0).all():
            raise ScorerError("embedding backend sent a zero vector")
        result: npt.NDArray[np.float64] = vectors / norms
        return result
