"""structlog as the only logging path: JSON lines on stderr.

Our own loggers use structlog's native fast path (a filtering bound logger: calls below the
level cost nothing; one JSON render per line). Standard-library loggers (aiohttp, asyncio,
libraries) are rendered through the same processor chain by a ProcessorFormatter, so every line
passes the same redaction whatever produced it.

Bodies are never passed to a logger. The chain still redacts, just before rendering, by key
and by value, and reduces exceptions to type and frames (see `redaction`): a second line of
defence for any call site, ours or a library's, that gets it wrong. It is on at every level.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from gateway.observability.redaction import RedactEventDict, Redactor, scrub_exception


def get_logger(name: str) -> Any:
    """A structlog logger that carries its name in every line."""
    return structlog.get_logger(logger_name=name)


def add_stdlib_logger_name(logger: WrappedLogger, method: str,
                           event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger_name"] = record.name
    return event_dict


def add_pid(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """With several workers, tells which process wrote the line."""
    event_dict.setdefault("pid", os.getpid())
    return event_dict


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "json",
                      correlation_key: bytes | None = None, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    level_number = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_pid,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        scrub_exception,
        RedactEventDict(Redactor(correlation_key)),
    ]
    renderer: Processor = (structlog.processors.JSONRenderer(serializer=_json) if fmt == "json"
                           else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[add_stdlib_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number)
    # aiohttp's own access log would print raw paths and query strings; ours is structured.
    logging.getLogger("aiohttp.access").disabled = True
