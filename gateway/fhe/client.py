"""The gateway's side of encrypted scoring: encrypt the embedding, send it with the key id,
and validate the reply before decrypting (the bytes come from a party we do not trust, into the
process that holds the secret key). Scores never go back to the scorer.

Per pass: one seeded symmetric ciphertext (~113 KiB) out, holding up to 8 queries (one a
block of slots: gateway/fhe/packing.py); one ciphertext per output set back. Only this process
knows which block is whose: each query's scores are read from its own block and handed back
alone. Evaluation keys are sent once per key epoch, for exactly the rotations the scorer's
models declare (every packing each offers).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson
import tenseal.sealapi as seal

from gateway.errors import BodyTooLarge, CiphertextError, ScorerError
from gateway.fhe.keys import FheKeys
from gateway.fhe.packing import (
    INPUT_DIM,
    PACKINGS,
    Layout,
    layout_for,
    passes_for,
    query,
    read_scores,
)
from gateway.fhe.seal import SCALE, checked_ciphertext, to_bytes
from gateway.streams import read_at_most

MAX_REPLY_BYTES = 8 * 1024 * 1024
COSINE_SLACK = 0.05  # CKKS error is ~1e-6; anything past this is not a cosine
MAX_LOGIT = 1e4


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str
    rows: int
    labels: tuple[str, ...]
    aggregate: str
    packings: tuple[int, ...]  # queries a ciphertext the scorer compiled this model for
    rotation_steps: tuple[int, ...]
    embedder: str = "minilm"  # what the model's rows were embedded with (scorers of old: minilm)

    def layout(self, queries: int) -> Layout:
        return layout_for(self.rows, queries)

    def expected_steps(self) -> list[int]:
        return sorted({step for queries in self.packings
                       for step in self.layout(queries).rotation_steps()})


class ScorerClient:
    def __init__(self, name: str, url: str, keys: FheKeys, session: aiohttp.ClientSession,
                 timeout_s: float) -> None:
        self.name = name
        self._url = url.rstrip("/")
        self._keys = keys
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._models: dict[str, ModelInfo] | None = None
        self._reply_level = keys.context.first_context_data().next_context_data().parms_id()

    @property
    def key_id(self) -> str:
        return self._keys.key_id

    async def score(self, model: str, embedding: npt.NDArray[np.float64]) -> dict[str, float]:
        """Per label: the max (or top-k mean) cosine, or the sigmoid of the class logit."""
        return (await self.score_many(model, [embedding]))[0]

    async def score_many(self, model: str, embeddings: Sequence[npt.NDArray[np.float64]]
                         ) -> list[dict[str, float]]:
        """Per embedding, in order, its own scores (as `score`): in passes of the packings
        the model offers, concurrently."""
        info = await self._info(model)
        for embedding in embeddings:
            if embedding.shape != (INPUT_DIM,):
                raise ScorerError(f"embedding has shape {embedding.shape}")
        bounds = list(itertools.accumulate(passes_for(len(embeddings), info.packings),
                                           initial=0))
        parts = await asyncio.gather(*[self._pass(info, embeddings[start:end])
                                       for start, end in itertools.pairwise(bounds)])
        return [scores for part in parts for scores in part]

    async def _pass(self, info: ModelInfo, embeddings: Sequence[npt.NDArray[np.float64]]
                    ) -> list[dict[str, float]]:
        layout = info.layout(len(embeddings))
        body = self._encrypt(embeddings, layout)
        reply = await self._post(info.name, layout.queries, body)
        if reply is None:  # the scorer does not know this key epoch yet
            await self._send_keys()
            reply = await self._post(info.name, layout.queries, body)
            if reply is None:
                raise ScorerError(f"scorer {self.name} refused our evaluation keys")
        scores = self._decrypt(reply, info, layout, len(embeddings))
        return [aggregate(info, row) for row in scores]

    async def _info(self, model: str) -> ModelInfo:
        info = (await self.models()).get(model)
        if info is None:  # perhaps deployed since we asked: ask once more
            self._models = None
            info = (await self.models()).get(model)
        if info is None:
            raise ScorerError(f"scorer {self.name} has no model {model!r}")
        return info

    async def models(self) -> dict[str, ModelInfo]:
        if self._models is None:
            document = await self._get_json("/v1/models")
            try:
                self._models = {m["name"]: ModelInfo(
                    m["name"], m["kind"], int(m["rows"]), tuple(m["labels"]), m["aggregate"],
                    tuple(int(q) for q in m["packings"]),
                    tuple(int(s) for s in m["rotation_steps"]), str(m.get("embedder", "minilm")))
                    for m in document["models"]}
            except (KeyError, TypeError, ValueError):
                raise ScorerError(f"scorer {self.name}: malformed model list") from None
            for info in self._models.values():
                if not info.packings or not set(info.packings) <= set(PACKINGS) \
                        or 1 not in info.packings \
                        or list(info.rotation_steps) != info.expected_steps() \
                        or len(info.labels) != info.rows:
                    raise ScorerError(f"scorer {self.name}: model {info.name} does not match "
                                      "the packing this gateway uses")
        return self._models

    def _encrypt(self, embeddings: Sequence[npt.NDArray[np.float64]], layout: Layout) -> bytes:
        encoder = self._keys.encoder()
        plaintext = seal.Plaintext()
        encoder.encode(query(embeddings, layout).tolist(), SCALE, plaintext)
        return to_bytes(self._keys.encryptor().encrypt_symmetric(plaintext))

    def _decrypt(self, reply: dict[str, Any], info: ModelInfo, layout: Layout, count: int
                 ) -> npt.NDArray[np.float64]:
        """Validate everything, then decrypt: count, key id, model, packing, sizes, SEAL
        checks. [count, K]: row k from block k only."""
        texts = reply.get("ciphertexts")
        if reply.get("key_id") != self._keys.key_id or reply.get("model") != info.name \
                or reply.get("queries") != layout.queries:
            raise ScorerError("reply is for another key, model or packing")
        if not isinstance(texts, list) or len(texts) != layout.sets \
                or not all(isinstance(t, str) for t in texts):
            raise ScorerError(f"reply must hold {layout.sets} ciphertexts")
        decryptor = self._keys.decryptor()
        encoder = self._keys.encoder()
        blocks = []
        for text in texts:
            try:
                raw = base64.b64decode(text, validate=True)
                ciphertext = checked_ciphertext(self._keys.context, raw,
                                                parms_id=self._reply_level)
            except (binascii.Error, CiphertextError) as exc:
                raise ScorerError(f"reply refused before decryption: {exc}") from None
            plaintext = seal.Plaintext()
            decryptor.decrypt(ciphertext, plaintext)
            blocks.append(np.array(encoder.decode_complex(plaintext)))
        scores = read_scores(blocks, layout, count)
        _range_check(scores, info.kind)
        return scores

    async def _post(self, model: str, queries: int, body: bytes) -> dict[str, Any] | None:
        try:
            async with self._session.post(
                    f"{self._url}/v1/score/{model}", data=body, timeout=self._timeout,
                    headers={"X-Veil-Key-Id": self._keys.key_id,
                             "X-Veil-Queries": str(queries),
                             "Content-Type": "application/octet-stream"}) as response:
                payload = await read_at_most(response.content, MAX_REPLY_BYTES)
                status = response.status
        except BodyTooLarge:
            raise ScorerError(f"scorer {self.name}: reply over {MAX_REPLY_BYTES} bytes") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ScorerError(f"scorer {self.name} unreachable: {type(exc).__name__}") from None
        if status == 409:
            return None
        if status != 200:
            raise ScorerError(f"scorer {self.name} answered {status}")
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise ScorerError(f"scorer {self.name}: reply is not JSON") from None
        if not isinstance(document, dict):
            raise ScorerError(f"scorer {self.name}: reply is not an object")
        return document

    async def _send_keys(self) -> None:
        steps = sorted({s for info in (await self.models()).values()
                        for s in info.rotation_steps})
        keys = self._keys.galois_keys(steps)
        try:
            async with self._session.put(f"{self._url}/v1/keys/{self._keys.key_id}",
                                         data=keys, timeout=aiohttp.ClientTimeout(total=60),
                                         headers={"Content-Type": "application/octet-stream"}
                                         ) as response:
                if response.status != 204:
                    raise ScorerError(f"scorer {self.name} refused our keys: {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ScorerError(f"scorer {self.name} unreachable: {type(exc).__name__}") from None

    async def _get_json(self, path: str) -> dict[str, Any]:
        try:
            async with self._session.get(self._url + path, timeout=self._timeout) as response:
                if response.status != 200:
                    raise ScorerError(f"scorer {self.name} answered {response.status}")
                document = orjson.loads(await read_at_most(response.content, MAX_REPLY_BYTES))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, BodyTooLarge) as exc:
            raise ScorerError(f"scorer {self.name} unreachable or malformed: "
                              f"{type(exc).__name__}") from None
        if not isinstance(document, dict):
            raise ScorerError(f"scorer {self.name}: not a JSON object")
        return document


def _range_check(scores: npt.NDArray[np.float64], kind: str) -> None:
    if not np.isfinite(scores).all():
        raise ScorerError("decrypted scores are not finite")
    if kind == "reference_set" and np.abs(scores).max(initial=0) > 1 + COSINE_SLACK:
        raise ScorerError("decrypted cosines are out of range (a wrong or tampered reply)")
    if kind == "linear" and np.abs(scores).max(initial=0) > MAX_LOGIT:
        raise ScorerError("decrypted logits are out of range (a wrong or tampered reply)")


def aggregate(info: ModelInfo, scores: npt.NDArray[np.float64]) -> dict[str, float]:
    """Reference sets: per label, the max cosine (or the mean of the top k, "top3");
    linear models: per class, the sigmoid of the logit."""
    if info.kind == "linear":
        return {label: 1 / (1 + math.exp(-float(z))) for label, z in zip(info.labels, scores,
                                                                          strict=True)}
    by_label: dict[str, list[float]] = {}
    for label, score in zip(info.labels, scores, strict=True):
        by_label.setdefault(label, []).append(float(score))
    k = int(info.aggregate[3:]) if info.aggregate.startswith("top") else 1
    return {label: float(np.mean(sorted(values, reverse=True)[:k]))
            for label, values in by_label.items()}
