"""The NER workers, for real (spaCy in subprocesses): batching, a worker killed mid-request,
memory recycling, the time limit, texts past spaCy's limit, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from gateway.errors import DetectorFailed
from gateway.privacy.ner_pool import NerPool


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"  # a zombie has ended


async def settle(condition: object, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.05)


@pytest.fixture
async def pool() -> AsyncIterator[tuple[NerPool, Counter[str]]]:
    restarts: Counter[str] = Counter()
    ner = NerPool(1, on_restart=lambda reason: restarts.update([reason]))
    await ner.start()
    try:
        yield ner, restarts
    finally:
        await ner.close()


def entities(text: str, spans: list[object]) -> set[tuple[str, str]]:
    return {(s.entity, text[s.start:s.end]) for s in spans}  # type: ignore[attr-defined]


async def test_concurrent_requests_share_the_workers(pool: tuple[NerPool, Counter[str]]) -> None:
    ner, _ = pool
    texts = [f"Angela Merkel met Emmanuel Macron in Paris, request {i}." for i in range(20)]
    results = await asyncio.gather(*[ner.detect([t]) for t in texts])
    for text, (spans, cpu) in zip(texts, results, strict=True):
        assert {("PERSON", "Angela Merkel"), ("LOCATION", "Paris")} <= entities(text, spans[0])
        assert cpu >= 0
    assert sum(cpu for _, cpu in results) > 0


async def test_a_worker_killed_mid_request_fails_it_closed_and_is_replaced(
        pool: tuple[NerPool, Counter[str]]) -> None:
    ner, restarts = pool
    (pid,) = ner.pids
    long_text = "Angela Merkel visited Paris. " * 20_000
    request = asyncio.create_task(ner.detect([long_text]))
    await asyncio.sleep(0.5)  # the worker is busy with it
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(DetectorFailed) as died:
        await request
    assert (died.value.detector, died.value.reason) == ("presidio", "crashed")
    assert not ner.ready  # no worker alive: requests are refused, not queued forever
    with pytest.raises(DetectorFailed) as refused:
        await ner.detect(["Angela Merkel"])
    assert (refused.value.detector, refused.value.reason) == ("presidio", "unavailable")
    await settle(lambda: ner.ready)
    assert ner.pids != [pid]
    assert restarts["died"] == 1
    spans, _ = await ner.detect(["Angela Merkel visited Paris."])
    assert ("PERSON", "Angela Merkel") in entities("Angela Merkel visited Paris.", spans[0])


async def test_a_batch_nobody_waits_for_stops_its_worker(
        pool: tuple[NerPool, Counter[str]]) -> None:
    ner, restarts = pool
    (pid,) = ner.pids
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await ner.detect(["Angela Merkel visited Paris. " * 20_000])
    await settle(lambda: not alive(pid))
    assert restarts["timeout"] == 1
    await settle(lambda: ner.ready)


async def test_a_small_batch_nobody_waits_for_is_left_to_finish(
        pool: tuple[NerPool, Counter[str]]) -> None:
    # a client that disconnects mid-request: killing the worker would cost seconds of restart
    ner, restarts = pool
    (pid,) = ner.pids
    request = asyncio.ensure_future(ner.detect(["Angela Merkel visited Paris. " * 100]))
    await asyncio.sleep(0.01)
    request.cancel()
    spans, _ = await ner.detect(["Emmanuel Macron wrote."])  # served by the same worker
    assert ("PERSON", "Emmanuel Macron") in entities("Emmanuel Macron wrote.", spans[0])
    assert ner.pids == [pid]
    assert not restarts


async def test_a_worker_past_its_memory_limit_is_recycled() -> None:
    restarts: Counter[str] = Counter()
    ner = NerPool(1, max_rss_bytes=1, on_restart=lambda reason: restarts.update([reason]))
    await ner.start()
    try:
        (pid,) = ner.pids
        spans, _ = await ner.detect(["Angela Merkel visited Paris."])
        assert spans[0]  # answered first, then replaced
        await settle(lambda: ner.ready and ner.pids != [pid])
        assert restarts["memory"] == 1
        assert not alive(pid)
    finally:
        await ner.close()


async def test_a_text_past_spacys_limit_is_chunked_not_refused(
        pool: tuple[NerPool, Counter[str]]) -> None:
    ner, _ = pool
    # ~1.04 MB in long words (NER's cost is per token; a chunk cut falls inside the filler)
    filler = " ".join(["uneventfulnessesandquietness"] * 36_000)
    text = "Angela Merkel wrote first. " + filler + " Later Emmanuel Macron replied from Paris."
    assert len(text) > 1_000_000
    spans, _ = await ner.detect([text])
    found = entities(text, spans[0])
    assert ("PERSON", "Angela Merkel") in found
    assert ("PERSON", "Emmanuel Macron") in found
    assert len([s for s in spans[0] if text[s.start:s.end] == "Emmanuel Macron"]) == 1


async def test_close_leaves_no_worker_behind_even_while_loading() -> None:
    ner = NerPool(2)
    starting = asyncio.create_task(ner.start())
    await asyncio.sleep(0.3)  # processes spawned, the model still loading
    pids = ner.pids_starting
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await ner.close()
    await settle(lambda: not any(alive(pid) for pid in pids), timeout=10)


async def test_a_worker_that_cannot_start_fails_start_up_with_a_reason() -> None:
    ner = NerPool(1, start_timeout_s=0.01)
    with pytest.raises(Exception, match="not ready within"):
        await ner.start()
    assert not ner.ready


async def test_a_big_request_is_shared_out_among_the_workers() -> None:
    ner = NerPool(2)
    await ner.start()
    try:
        texts = [f"Angela Merkel met Emmanuel Macron in Paris, note {i}. " + "filler " * 3_000
                 for i in range(12)]  # ~250 KB: past SHARE_CHARS, so both workers take a part
        groups: list[int] = []
        original = ner._job

        async def job(group: list[str]) -> tuple[list[list[object]], float]:
            groups.append(len(group))
            return await original(group)  # type: ignore[return-value]

        ner._job = job  # type: ignore[method-assign]
        shares = ner.shares(sum(len(t) for t in texts))
        assert shares == 2
        spans, cpu = await ner.detect(texts, shares)
        assert len(groups) == 2  # one part per worker
        assert sum(groups) == len(texts)
        assert len(spans) == len(texts)  # results line up with the texts, in order
        for text, found in zip(texts, spans, strict=True):
            assert ("PERSON", "Angela Merkel") in entities(text, found)
        assert cpu > 0
    finally:
        await ner.close()


def test_split_keeps_order_and_balances_characters() -> None:
    from gateway.privacy.ner_pool import _split  # noqa: PLC0415

    texts = [str(i) * (i + 1) for i in range(40)]
    groups = _split(texts, 3)
    assert len(groups) == 3
    assert [t for g in groups for t in g] == texts
    sizes = [sum(map(len, g)) for g in groups]
    assert max(sizes) < 2 * (sum(sizes) / 3)
    assert _split(["one"], 2) == [["one"]]


async def test_a_request_is_cut_among_idle_workers_only() -> None:
    ner = NerPool(2)
    await ner.start()
    try:
        assert ner.shares(1_000) == 1  # too small to be worth a cut
        assert ner.shares(2_000) == 2  # both workers idle: half each
        busy = asyncio.ensure_future(ner.detect(["Angela Merkel. " * 2_000] * 3))
        await asyncio.sleep(0)  # queued and dispatched: no worker idle, so no cut
        assert ner.shares(2_000) == 1
        assert ner.shares(300_000) == 2  # a big one is shared out even under load
        await busy
    finally:
        await ner.close()
