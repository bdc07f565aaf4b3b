"""The in-process conversation records: sealed, one tenant's only, written only over the
version they grew from, expiring after their last use."""

from __future__ import annotations

import asyncio

from gateway.privacy.conversations import Conversations

JOHN = [("<PERSON_1>", "PERSON", "John")]
BOTH = [*JOHN, ("<PERSON_2>", "PERSON", "Alice")]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_write_must_name_the_current_version() -> None:
    async def run() -> None:
        store = Conversations(60, 10)
        assert await store.put("conv_1", "t", "b", JOHN, None)
        first = await store.get("conv_1", "t")
        assert first is not None
        assert first.entries == JOHN
        assert await store.put("conv_1", "t", "b", BOTH, first.version)
        assert not await store.put("conv_1", "t", "b", JOHN, first.version)  # lost the race
        latest = await store.get("conv_1", "t")
        assert latest is not None
        assert latest.entries == BOTH
        assert not await store.put("conv_2", "t", "b", JOHN, "anything")  # none to grow from
    asyncio.run(run())


def test_another_tenant_finds_nothing() -> None:
    async def run() -> None:
        store = Conversations(60, 10)
        await store.put("conv_1", "t", "b", JOHN, None)
        assert await store.get("conv_1", "other") is None
    asyncio.run(run())


def test_use_keeps_a_record_alive_and_disuse_expires_it() -> None:
    async def run() -> None:
        clock = Clock()
        store = Conversations(60, 10, clock)
        await store.put("conv_1", "t", "b", JOHN, None)
        clock.now = 50
        assert await store.get("conv_1", "t") is not None
        clock.now = 100  # 50 s after its last use
        assert await store.get("conv_1", "t") is not None
        clock.now = 161
        assert await store.get("conv_1", "t") is None
    asyncio.run(run())


def test_the_oldest_go_past_capacity() -> None:
    async def run() -> None:
        store = Conversations(60, 2)
        for name in ("conv_1", "conv_2", "conv_3"):
            await store.put(name, "t", "b", JOHN, None)
        assert await store.get("conv_1", "t") is None
        assert await store.get("conv_3", "t") is not None
    asyncio.run(run())
