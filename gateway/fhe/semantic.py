"""Semantic scores for a request, for the policy's `semantic` rules: embed the request's whole
text on the gateway, window by window (gateway/fhe/chunks.py), then one encrypted query per
window and (scorer, model) the rules name, packed with the other windows and with concurrent
requests' into shared passes (gateway/fhe/batching.py); each rule decides on its aggregate
(max by default) over the windows.

The key epoch comes from `Epochs` (gateway/fhe/epochs.py: this replica's keys_dir, or Redis for
all replicas), so `veil keys rotate` takes effect without a restart; a scorer that has not seen
the new epoch gets its evaluation keys on first use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aiohttp
import numpy as np
import numpy.typing as npt

from gateway.errors import ScorerError
from gateway.fhe.batching import Batcher
from gateway.fhe.chunks import Windows
from gateway.fhe.client import ScorerClient
from gateway.fhe.embed import NAME, Embedder, TextEmbedder, TextWindows
from gateway.fhe.epochs import Epochs, LocalEpochs
from gateway.fhe.keys import KeyStore
from gateway.fhe.remote_embed import RemoteEmbedder
from gateway.fhe.static_embed import StaticEmbedder
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.policy.schema import SemanticRule
from gateway.settings import FheSettings

log = get_logger("veil.fhe")


SessionFactory = Callable[[], aiohttp.ClientSession]


def default_session() -> aiohttp.ClientSession:
    # trust_env off: proxy variables in the environment must not redirect scorer traffic.
    return aiohttp.ClientSession(trust_env=False)


class SemanticScorer:
    """`session_factory`: the one seam for scorer traffic (tests hand in their own)."""

    def __init__(self, settings: FheSettings, metrics: Metrics,
                 remote: RemoteEmbedder | None = None,
                 session_factory: SessionFactory = default_session,
                 epochs: Epochs | None = None) -> None:
        """`epochs`: where the key epoch comes from (default: `fhe.keys_dir`)."""
        self._settings = settings
        self._metrics = metrics
        self._remote = remote
        self._session_factory = session_factory
        if epochs is None and settings.scorers:
            epochs = LocalEpochs(KeyStore.open(settings.keys_dir, settings.master_key_env,
                                               settings.master_key_file))
        self._epochs = epochs
        self._embedder: TextEmbedder | None = None
        self._text_windows: TextWindows | None = None
        self._windows = Windows(settings.chunk_tokens - 2, settings.chunk_overlap_tokens,
                                settings.max_chunks)  # - 2: [CLS] and [SEP]
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, ScorerClient] = {}
        self._batcher = Batcher(self._pass, settings.batch_window_ms / 1000, settings.max_batch)

    @property
    def configured(self) -> bool:
        return self._epochs is not None

    async def start(self) -> None:
        if self._epochs is None:
            return
        await self._epochs.start()  # no epoch: refuse to start, as with no key store
        if self._remote is None:  # seconds of loading: logged before and after
            started = time.monotonic()
            log.info("embedding_model_loading", embedder=self._settings.embedder)
            self._embedder = await asyncio.to_thread(local_embedder, self._settings)
            log.info("embedding_model_loaded", embedder=self._settings.embedder,
                     seconds=round(time.monotonic() - started, 2))
        else:
            self._text_windows = await asyncio.to_thread(TextWindows, self._windows)
        self._session = self._session_factory()

    async def close(self) -> None:
        await self._batcher.close()
        if self._session is not None:
            await self._session.close()

    async def scores(self, texts: Sequence[str], rules: Sequence[SemanticRule]
                     ) -> dict[str, float]:
        """rule.key -> score for every rule, over every window of the prompt; raises
        ScorerError (TooManyChunks past fhe.max_chunks)."""
        embeddings = list(await self._embed("\n".join(texts)))
        wanted = sorted({(rule.scorer, rule.model) for rule in rules})
        results = await asyncio.gather(*[self._batcher.score(scorer, model, embeddings)
                                         for scorer, model in wanted])
        per_chunk = dict(zip(wanted, results, strict=True))
        return {rule.key: over_chunks(per_chunk[rule.scorer, rule.model], rule)
                for rule in rules}

    async def _embed(self, text: str) -> npt.NDArray[np.float64]:
        if self._remote is not None and self._text_windows is not None:
            return await self._remote.embed(await asyncio.to_thread(self._text_windows.cut,
                                                                    text))
        if self._embedder is not None:
            return await asyncio.to_thread(self._embedder.embed_windows, text, self._windows)
        raise ScorerError("encrypted scoring is not configured (fhe.scorers)")

    async def _pass(self, scorer: str, model: str, embeddings: list[npt.NDArray[np.float64]]
                    ) -> list[dict[str, float]]:
        """One batch, under one key epoch."""
        client = await self._client(scorer)
        await self._check_embedder(client, model)
        started = asyncio.get_running_loop().time()
        try:
            return await client.score_many(model, embeddings)
        finally:
            self._metrics.scorer_seconds.labels(scorer).observe(
                asyncio.get_running_loop().time() - started)

    async def _check_embedder(self, client: ScorerClient, model: str) -> None:
        """A model built with another embedder scores vectors from another space: meaningless
        numbers, so refused (a model the scorer lacks is the client's to report)."""
        info = (await client.models()).get(model)
        ours = self._embedder.name if self._embedder is not None else NAME
        if info is not None and info.embedder != ours:
            raise ScorerError(f"scorer {client.name} model {model} was built with embedder "
                              f"{info.embedder}, this gateway embeds with {ours} "
                              f"(fhe.embedder; rebuild: veil scorer build --embedder)")

    async def _client(self, name: str) -> ScorerClient:
        if self._epochs is None:
            raise ScorerError("encrypted scoring is not configured (fhe.scorers)")
        keys = await self._epochs.current()
        client = self._clients.get(name)
        if client is None or client.key_id != keys.key_id:
            endpoint = next((s for s in self._settings.scorers if s.name == name), None)
            if endpoint is None or self._session is None:
                raise ScorerError(f"no scorer named {name!r} in fhe.scorers")
            client = ScorerClient(name, endpoint.url, keys, self._session, endpoint.timeout_s)
            self._clients[name] = client
        return client


def local_embedder(settings: FheSettings) -> TextEmbedder:
    """The embedder `fhe.embedder` names (seconds to load: called in a thread)."""
    if settings.embedder == "minilm":
        return Embedder()
    return StaticEmbedder(settings.embedder_cache_dir)


def over_chunks(chunks: Sequence[dict[str, float]], rule: SemanticRule) -> float:
    """The rule's aggregate of its label's score over the prompt's windows."""
    try:
        values = [by_label[rule.label] for by_label in chunks]
    except KeyError:
        raise ScorerError(f"scorer {rule.scorer} model {rule.model} has no label "
                          f"{rule.label!r}") from None
    return max(values) if rule.aggregate == "max" else sum(values) / len(values)
