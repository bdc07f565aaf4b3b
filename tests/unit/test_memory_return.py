"""Memory is handed back to the system after big requests, at most once a second."""

from __future__ import annotations

import asyncio
import platform

from gateway.memory import TRIM_AFTER_BYTES, MemoryReturn, _malloc_trim


async def _settle() -> None:
    await asyncio.sleep(0.2)


def test_trims_after_a_big_body_only_and_not_more_than_once_a_second() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        memory = MemoryReturn(lambda: calls.append(1))
        memory.after(TRIM_AFTER_BYTES - 1)
        await _settle()
        assert calls == []
        memory.after(TRIM_AFTER_BYTES)
        memory.after(TRIM_AFTER_BYTES * 5)  # while one is pending: no second
        await _settle()
        assert calls == [1]
        memory.after(TRIM_AFTER_BYTES)  # within the second: skipped
        await _settle()
        assert calls == [1]
        await asyncio.sleep(1.0)
        memory.after(TRIM_AFTER_BYTES)
        await _settle()
        assert calls == [1, 1]

    asyncio.run(scenario())


def test_glibc_malloc_trim_is_found_and_callable() -> None:
    assert platform.libc_ver()[0] == "glibc"  # the platform the gateway ships for (Debian)
    trim = _malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)
