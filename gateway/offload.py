"""CPU work on a big request runs in a thread, so the event loop keeps serving everyone else.

Parsing, walking, masking and restoring are pure Python: run on the loop, a 1 MB prompt holds
every other client (and `/healthz`) for hundreds of milliseconds. In a thread the interpreter
hands the loop the GIL every switch interval (5 ms), so the loop keeps answering while the big
request takes its time. Small requests stay inline: a thread hand-off costs about 50 µs, more
than the work itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

OFF_LOOP_BYTES = 64 * 1024

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop_if_big(size: int, fn: Callable[P, T], *args: P.args,
                          **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)`, in a thread when `size` (bytes or characters of the work's
    input) is over OFF_LOOP_BYTES."""
    if size <= OFF_LOOP_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
