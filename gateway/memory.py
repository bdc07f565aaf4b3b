"""Give memory back to the system after a big request.

A large body leaves the C allocator (glibc's malloc) holding the pages it used: Python frees
the objects, but glibc keeps the freed heap for reuse, and after one big allocation raises its
mmap threshold, so later big ones come from that heap too. A gateway's RSS then stays at its
largest request's mark for good, and an orchestrator that watches RSS sees a leak.
`malloc_trim(0)` hands the free pages back; it takes milliseconds, so it runs in a thread,
once the request is done, at most once a second.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Callable

TRIM_AFTER_BYTES = 1024 * 1024  # a body this big is worth trimming after
MIN_INTERVAL_S = 1.0


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryReturn:
    def __init__(self, trim: Callable[[], object] | None = None) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._last = 0.0
        self._pending: asyncio.Task[object] | None = None
        self.trims = 0

    def after(self, body_bytes: int) -> None:
        """A request of `body_bytes` has been answered: trim soon if it was big."""
        trim = self._trim
        if trim is None or body_bytes < TRIM_AFTER_BYTES:
            return
        if self._pending is not None and not self._pending.done():
            return
        now = time.monotonic()
        if now - self._last < MIN_INTERVAL_S:
            return
        self._last = now
        self._pending = asyncio.get_running_loop().create_task(self._run(trim))

    async def _run(self, trim: Callable[[], object]) -> object:
        await asyncio.sleep(0.05)  # let the request's objects go first
        self.trims += 1
        return await asyncio.to_thread(trim)
