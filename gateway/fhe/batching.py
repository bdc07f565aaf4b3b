"""Queries for one (scorer, model) that arrive within a short window share one encrypted pass:
a long prompt's windows, and the windows of concurrent requests (fhe.batch_window_ms; 0: a
request's own windows are still packed together, never with another request's).

Each caller awaits futures of its own: the pass hands every query back only its own scores (the
slots of one block), so no request's code path ever holds another's. A failed pass fails every
query in it, each caller with the same error (its policy's fail_mode.scorer then applies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Embedding = npt.NDArray[np.float64]
Scores = dict[str, float]
Pass = Callable[[str, str, list[Embedding]], Awaitable[list[Scores]]]


@dataclass
class _Waiting:
    items: list[tuple[Embedding, asyncio.Future[Scores]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """`run(scorer, model, embeddings)`: one pass (at most `limit` queries), scores in order."""

    def __init__(self, run: Pass, window_s: float, limit: int) -> None:
        self._run = run
        self._window_s = window_s
        self._limit = limit
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self._passes: set[asyncio.Task[None]] = set()

    async def score(self, scorer: str, model: str, embeddings: Sequence[Embedding]
                    ) -> list[Scores]:
        if not embeddings:
            return []
        loop = asyncio.get_running_loop()
        key = (scorer, model)
        waiting = self._waiting.setdefault(key, _Waiting())
        futures: list[asyncio.Future[Scores]] = [loop.create_future() for _ in embeddings]
        waiting.items.extend(zip(embeddings, futures, strict=True))
        if self._window_s <= 0 or len(waiting.items) >= self._limit:
            self._flush(key)
        elif waiting.timer is None:
            waiting.timer = loop.call_later(self._window_s, self._flush, key)
        return list(await asyncio.gather(*futures))

    def _flush(self, key: tuple[str, str]) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is None:
            return
        if waiting.timer is not None:
            waiting.timer.cancel()
        for start in range(0, len(waiting.items), self._limit):
            task = asyncio.create_task(self._pass(key, waiting.items[start:start + self._limit]))
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)

    async def _pass(self, key: tuple[str, str],
                    items: list[tuple[Embedding, asyncio.Future[Scores]]]) -> None:
        try:
            results = await self._run(*key, [embedding for embedding, _ in items])
        except BaseException as exc:  # every caller in the pass fails, with the same error
            _fail(items, exc)
            if not isinstance(exc, Exception):
                raise
            return
        if len(results) != len(items):
            _fail(items, RuntimeError(f"a pass of {len(items)} queries gave {len(results)}"))
            return
        for (_, future), scores in zip(items, results, strict=True):
            if not future.done():  # its request may have gone (a client that hung up)
                future.set_result(scores)

    async def close(self) -> None:
        for key in list(self._waiting):
            self._flush(key)
        if self._passes:
            await asyncio.gather(*self._passes, return_exceptions=True)


def _fail(items: list[tuple[Embedding, asyncio.Future[Scores]]], exc: BaseException) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(exc)
