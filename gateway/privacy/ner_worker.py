"""One NER worker process: `python -m gateway.privacy.ner_worker --log-level info`.

It loads spaCy and Presidio once, says it is ready, then answers jobs one at a time over its
standard input and output: frames of a 4-byte big-endian length and a JSON document.

    worker -> gateway   {"ready": true, "pid": 1234}
    gateway -> worker   {"texts": ["...", ...]}
    worker -> gateway   {"spans": [[[start, end, entity, score], ...], ...], "cpu": s, "rss": b}
                        or {"error": "<exception type>"}   (never the message: it may quote text)

The gateway sends documents (short texts joined, long ones chunked: `gateway.privacy.batching`);
they go through spaCy's `pipe` together, so a batch of many requests costs far less than their
sum. The worker reads until its input closes, so it ends with the gateway process,
however that ends: it can never be left behind.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import orjson

from gateway.privacy.batching import batched_many
from gateway.privacy.spans import Span

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


def read_frame(stream: BinaryIO) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None  # the gateway is gone
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError("frame too large")
    return orjson.loads(stream.read(length))


def write_frame(stream: BinaryIO, document: Any) -> None:
    body = orjson.dumps(document)
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


WORKER_NICENESS = 10
SAFETY_CHUNK = 500_000  # the gateway sends documents of ~100 KB; spaCy refuses 1,000,000


def analyse(detect_many: Callable[[Sequence[str]], list[list[Span]]],
            texts: Sequence[str]) -> list[list[Span]]:
    """Every text: short ones joined, any still too long for spaCy chunked, all the documents
    through NER at once."""
    return batched_many(detect_many, texts, chunk=SAFETY_CHUNK)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def serve(source: BinaryIO, sink: BinaryIO,
          detect_many: Callable[[Sequence[str]], list[list[Span]]]) -> None:
    write_frame(sink, {"ready": True, "pid": os.getpid()})
    while (job := read_frame(source)) is not None:
        started = time.process_time()
        try:
            found = analyse(detect_many, job["texts"])
        except Exception as exc:  # the type only: a message may quote the text
            write_frame(sink, {"error": type(exc).__name__})
            continue
        write_frame(sink, {
            "spans": [[[s.start, s.end, s.entity, s.score] for s in spans] for spans in found],
            "cpu": time.process_time() - started, "rss": rss_bytes()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="json")
    args = parser.parse_args()
    # The protocol owns standard output: whatever a library prints goes to standard error.
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    from gateway.observability.logging import configure_logging  # noqa: PLC0415
    from gateway.privacy.presidio import PresidioDetector  # noqa: PLC0415

    configure_logging(args.log_level, args.log_format)
    # Below the gateway's event loop: a busy core then still answers `/healthz` and relays
    # streams at once, and NER takes whatever CPU is left (all of it, under load).
    os.nice(WORKER_NICENESS)
    detector = PresidioDetector()
    detector.detect("warm up")
    serve(sys.stdin.buffer, protocol, detector.detect_many)


if __name__ == "__main__":
    main()
