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

import datetime
import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from gateway.observability.redaction import RedactEventDict, Redactor, scrub_exception


def get_logger(name: str) -> Any:
    """A structlog logger that carries its name in every line."""
    return structlog.get_logger(logger_name=name)


ACCESS_LOGGER = "veil.access"
_access: Any = None


def access_logger() -> Any:
    """The logger of the one line every request writes, assembled once per configuration:
    a lazy proxy re-resolves itself on every call (a sixth of the line's cost)."""
    return _access if _access is not None else get_logger(ACCESS_LOGGER)


# The fields of the request the current task is serving (request id, tenant, model, ...): set
# afresh by the request middleware, added to by later stages, merged into every line. One
# variable holding a dict, rather than one context variable per key, keeps this off the
# profile: it is read for every line and written a few times per request.
_REQUEST_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar("veil_request_fields",
                                                                default=None)


def start_request_fields(**fields: Any) -> None:
    """Begin a new request's fields in this task (dropping the previous request's)."""
    _REQUEST_FIELDS.set(fields)


def bind_request_fields(**fields: Any) -> None:
    """Add fields to the current request's; every later line of the request carries them."""
    current = _REQUEST_FIELDS.get()
    if current is None:
        _REQUEST_FIELDS.set(fields)
    else:
        current.update(fields)


def add_stdlib_logger_name(logger: WrappedLogger, method: str,
                           event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger_name"] = record.name
    return event_dict


_pid = os.getpid()


def _forked() -> None:
    global _pid  # noqa: PLW0603 (one value per process, refreshed in the child)
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)

_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}


class AddLineContext:
    """What every line carries: the current request's fields, the process id (which worker
    wrote it), the level and a UTC timestamp. One processor instead of four, because it runs
    for every line: the pid is read once per process (getpid is a system call), and the date
    and time of day are formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        fields = _REQUEST_FIELDS.get()
        if fields:  # a field given to the call wins over the request's
            event_dict = {**fields, **event_dict}
        event_dict.setdefault("pid", _pid)
        event_dict["level"] = _LEVEL_OF_METHOD.get(method, method)
        event_dict["timestamp"] = self._timestamp()
        return event_dict

    def _timestamp(self) -> str:
        """ISO 8601 with microseconds and a Z, as structlog's TimeStamper writes it."""
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{micros:06d}Z"


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "json",
                      correlation_key: bytes | None = None, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    level_number = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        AddLineContext(),
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
    global _access  # noqa: PLW0603 (rebuilt with the configuration it belongs to)
    _access = get_logger(ACCESS_LOGGER).bind()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number)
    # aiohttp's own access log would print raw paths and query strings; ours is structured.
    logging.getLogger("aiohttp.access").disabled = True
