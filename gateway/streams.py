"""Reading a whole body with a hard limit. `StreamReader.read(n)` returns what is buffered (up
to n bytes), not the body: every bounded read of a peer's body goes through here."""

from __future__ import annotations

from aiohttp import StreamReader

from gateway.errors import BodyTooLarge


async def read_at_most(stream: StreamReader, limit: int) -> bytes:
    if stream.is_eof():  # all of it has arrived already (small bodies, usually): no waiting
        body = stream.read_nowait()
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
