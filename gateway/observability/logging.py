"""structlog as the only logging path: JSON lines on stderr.

Our own loggers use structlog's native fast path (a filtering bound logger: calls below the
level cost nothing; one JSON render per line). Standard-library loggers (aiohttp, asyncio,
libraries) are rendered through the same processor chain by a ProcessorFormatter, so every line
passes the same redaction whatever produced it.

Bodies are never passed to a logger. The chain still drops values under keys that name
credentials or content, as a second line of defence for any call site that gets it wrong.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

SENSITIVE_KEYS = frozenset({
    "authorization", "api_key", "x-api-key", "cookie", "set-cookie", "password", "secret",
    "token", "body", "content", "messages", "prompt", "input", "completion", "arguments",
    "headers",
})


def get_logger(name: str) -> Any:
    """A structlog logger that carries its name in every line."""
    return structlog.get_logger(logger_name=name)


class DropSensitiveKeys:
    """Replace values under sensitive keys (at any depth) with a marker that keeps only type and
    length, so an operator sees that something was there without seeing it."""

    __slots__ = ()

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        return _scrub(event_dict)


def _scrub(mapping: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in mapping.items():
        if key.lower() in SENSITIVE_KEYS and value is not None:
            mapping[key] = f"[REDACTED:KEY:len={len(str(value))}]"
        elif isinstance(value, dict):
            mapping[key] = _scrub(dict(value))
    return mapping


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


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    level_number = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_pid,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        DropSensitiveKeys(),
    ]
    renderer: Processor = (structlog.processors.JSONRenderer(serializer=_json) if fmt == "json"
                           else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[add_stdlib_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number)
    # aiohttp's own access log would print raw paths and query strings; ours is structured.
    logging.getLogger("aiohttp.access").disabled = True
