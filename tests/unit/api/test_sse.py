from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.sse import SSEDecoder, SSEEvent
from gateway.errors import SSEError

STREAM = (b'data: {"a": 1}\n\n'
          b"event: content_block_delta\ndata: {\"b\": 2}\n\n"
          b": keep-alive comment\n\n"
          b"data: line one\ndata: line two\n\n"
          b"data: [DONE]\n\n")


def decode(chunks: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    return [e.raw for chunk in chunks for e in decoder.feed(chunk)]


def test_events_and_fields() -> None:
    events = SSEDecoder().feed(STREAM)
    assert [e.event for e in events] == [None, "content_block_delta", None, None, None]
    assert events[1].data == '{"b": 2}'
    assert events[3].data == "line one\nline two"
    assert events[4].encode() == b"data: [DONE]\n\n"


def test_crlf_and_incomplete_tail() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r\n\r") == []
    assert [e.data for e in decoder.feed(b"\ndata: y\r\n")] == ["x"]
    assert decoder.pending() == b"data: y"


def test_oversized_event_is_an_error() -> None:
    with pytest.raises(SSEError):
        SSEDecoder(max_event_bytes=10).feed(b"data: " + b"x" * 20)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20),
       st.booleans())
def test_any_split_gives_the_same_events(cuts: list[int], crlf: bool) -> None:
    stream = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode(chunks) == decode([STREAM])


def test_event_without_data() -> None:
    assert SSEEvent(b"event: ping\n").data == ""
