"""The batching window: queries arriving together share a pass, each caller gets back exactly
its own scores, a failed pass fails every caller in it, and 0 keeps requests apart."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.errors import ScorerError
from gateway.fhe.batching import Batcher


class Recording:
    """A pass that scores each embedding by its first value (so answers are traceable)."""

    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        self.passes: list[tuple[str, str, int]] = []
        self.fail = fail
        self.delay_s = delay_s

    async def __call__(self, scorer: str, model: str, embeddings: list[np.ndarray]
                       ) -> list[dict[str, float]]:
        self.passes.append((scorer, model, len(embeddings)))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ScorerError("scorer s answered 500")
        return [{"x": float(e[0])} for e in embeddings]


def vectors(*firsts: float) -> list[np.ndarray]:
    return [np.full(384, value) for value in firsts]


def test_concurrent_requests_share_a_pass_and_each_gets_its_own() -> None:
    run = Recording()

    async def main() -> list[list[dict[str, float]]]:
        batcher = Batcher(run, 0.05, 8)
        return await asyncio.gather(batcher.score("s", "m", vectors(1, 2)),
                                    batcher.score("s", "m", vectors(3)),
                                    batcher.score("s", "m", vectors(4, 5, 6)))

    results = asyncio.run(main())
    assert run.passes == [("s", "m", 6)]
    assert results == [[{"x": 1.0}, {"x": 2.0}], [{"x": 3.0}], [{"x": 4.0}, {"x": 5.0},
                                                                 {"x": 6.0}]]


def test_a_full_batch_goes_without_waiting_and_passes_are_bounded() -> None:
    run = Recording()

    async def main() -> tuple[list[dict[str, float]], float]:
        batcher = Batcher(run, 10.0, 4)  # a window far longer than the test
        started = asyncio.get_running_loop().time()
        result = await batcher.score("s", "m", vectors(*range(10)))
        return result, asyncio.get_running_loop().time() - started

    result, elapsed = asyncio.run(main())
    assert [n for _, _, n in run.passes] == [4, 4, 2]
    assert result == [{"x": float(i)} for i in range(10)]
    assert elapsed < 1


def test_window_zero_never_mixes_requests() -> None:
    run = Recording(delay_s=0.01)

    async def main() -> None:
        batcher = Batcher(run, 0, 8)
        await asyncio.gather(batcher.score("s", "m", vectors(1, 2, 3)),
                             batcher.score("s", "m", vectors(4)))

    asyncio.run(main())
    assert sorted(n for _, _, n in run.passes) == [1, 3]  # each request's windows together


def test_models_are_batched_apart() -> None:
    run = Recording()

    async def main() -> None:
        batcher = Batcher(run, 0.02, 8)
        await asyncio.gather(batcher.score("s", "a", vectors(1)),
                             batcher.score("s", "b", vectors(2)),
                             batcher.score("t", "a", vectors(3)))

    asyncio.run(main())
    assert sorted(run.passes) == [("s", "a", 1), ("s", "b", 1), ("t", "a", 1)]


def test_a_failed_pass_fails_every_request_in_it() -> None:
    run = Recording(fail=True)

    async def main() -> list[BaseException | list[dict[str, float]]]:
        batcher = Batcher(run, 0.02, 8)
        return await asyncio.gather(batcher.score("s", "m", vectors(1)),
                                    batcher.score("s", "m", vectors(2, 3)),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert run.passes == [("s", "m", 3)]
    assert all(isinstance(r, ScorerError) for r in results)


def test_a_caller_that_left_does_not_break_the_others() -> None:
    run = Recording(delay_s=0.05)

    async def main() -> list[dict[str, float]]:
        batcher = Batcher(run, 0.01, 8)
        gone = asyncio.create_task(batcher.score("s", "m", vectors(1)))
        stays = asyncio.create_task(batcher.score("s", "m", vectors(2)))
        await asyncio.sleep(0.02)  # the pass has started
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await stays

    assert asyncio.run(main()) == [{"x": 2.0}]
