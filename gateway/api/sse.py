"""Incremental Server-Sent Events decoding: bytes as they arrive in, whole events out.

Events are relayed one by one as soon as they are complete, never after the whole stream; only
the bytes of the event still being received are held.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import SSEError


@dataclass(frozen=True)
class SSEEvent:
    raw: bytes  # the event's lines, LF-terminated, without the blank separator line

    @property
    def event(self) -> str | None:
        for line in self.raw.split(b"\n"):
            if line.startswith(b"event:"):
                return line[6:].strip().decode("utf-8", "replace")
        return None

    @property
    def data(self) -> str:
        parts = [line[5:].removeprefix(b" ") for line in self.raw.split(b"\n")
                 if line.startswith(b"data:")]
        return b"\n".join(parts).decode("utf-8", "replace")

    def encode(self) -> bytes:
        return self.raw + b"\n"


class SSEDecoder:
    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = b""
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk
        held_cr = buffer.endswith(b"\r")  # may be the first half of a CRLF split across chunks
        if held_cr:
            buffer = buffer[:-1]
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *complete, rest = buffer.split(b"\n\n")
        self._buffer = rest + (b"\r" if held_cr else b"")
        if len(self._buffer) > self._max:
            raise SSEError(f"an upstream event exceeded {self._max} bytes")
        return [SSEEvent(raw.lstrip(b"\n") + b"\n") for raw in complete if raw.strip(b"\n")]

    def pending(self) -> bytes:
        """Bytes of an unfinished event (non-empty at EOF means the stream was cut)."""
        return self._buffer.strip(b"\r\n")
