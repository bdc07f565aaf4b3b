"""structlog processors that keep sensitive data out of every log line, at every level.

They run last before the renderer, on our own lines and on standard-library records alike:

- by key: values under keys that name credentials or content (authorization, api keys,
  cookies, messages, prompts, completions, tool arguments, bodies) become markers;
- by value: the fast pattern detectors run over every other string value, so an email, a card
  number or a key that slipped into a message is replaced where it stands;
- exceptions: rendered as type and frames only. Their messages are dropped, because they quote
  request data (a JSONDecodeError message contains the document).

A marker keeps what an operator needs to reason about the event, never the value:
`[REDACTED:EMAIL:len=20]`, with `:h=<8 hex>` (HMAC under a configured key) when correlation
across lines is wanted.
"""

from __future__ import annotations

import hashlib
import hmac
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from structlog.types import EventDict, WrappedLogger

from gateway.privacy.patterns import PatternDetector

SENSITIVE_KEYS = frozenset({
    "authorization", "proxy-authorization", "api_key", "apikey", "x-api-key", "cookie",
    "set-cookie", "password", "passwd", "secret", "token", "access_token", "refresh_token",
    "body", "content", "messages", "message_content", "prompt", "prompts", "input", "inputs",
    "completion", "completions", "output", "arguments", "tool_arguments", "headers", "text",
    "system", "instructions",
})
# Values the gateway itself produces or has already vetted: no need to scan them. The request
# id is screened when accepted (ingress.middleware.request_id_for); the model is bound only
# after routing matched it against config; event names of our own lines are code literals;
# `listen` is the address the gateway itself listens on (configuration, which the IP-address
# pattern would otherwise hide from the operator who set it), written only by its start line.
TRUSTED_KEYS = frozenset({
    "level", "timestamp", "logger_name", "pid", "route", "method", "status", "duration_ms",
    "backend", "tenant", "key_name", "stream", "outcome", "elapsed_ms", "error_type", "where",
    "request_id", "model", "listen",
})

# On our own lines the event name is a code literal too.
_OWN_LINE_TRUSTED = TRUSTED_KEYS | {"event"}


class Redactor:
    """Replace sensitive values with markers; the work of the processors below."""

    __slots__ = ("_detector", "_key")

    def __init__(self, correlation_key: bytes | None = None) -> None:
        self._detector = PatternDetector()
        self._key = correlation_key

    def marker(self, kind: str, value: str) -> str:
        tag = f"[REDACTED:{kind}:len={len(value)}"
        if self._key is not None:
            digest = hmac.new(self._key, value.encode("utf-8", "surrogatepass"),
                              hashlib.sha256).hexdigest()[:8]
            tag += f":h={digest}"
        return tag + "]"

    def text(self, value: str) -> str:
        spans = self._detector.detect(value)
        if not spans:
            return value
        out, last = [], 0
        for span in spans:
            out.append(value[last:span.start])
            out.append(self.marker(span.entity, value[span.start:span.end]))
            last = span.end
        out.append(value[last:])
        return "".join(out)

    def value(self, key: str, value: Any) -> Any:
        if key.lower() in SENSITIVE_KEYS and value is not None:
            return self.marker("KEY", value if isinstance(value, str) else repr(value))
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {str(k): self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(key, v) for v in value]
        return value


class RedactEventDict:
    __slots__ = ("_redactor",)

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        foreign = "_record" in event_dict  # a standard-library record: its message is free text
        if not foreign and _OWN_LINE_TRUSTED.issuperset(event_dict):
            return event_dict  # our own line with only vetted fields (the access line)
        redactor = self._redactor
        for key in event_dict.keys() - TRUSTED_KEYS:
            if key.startswith("_") or (key == "event" and not foreign):
                continue
            event_dict[key] = redactor.value(key, event_dict[key])
        return event_dict


def _frames(tb: TracebackType | None) -> list[str]:
    return [f"{frame.filename}:{frame.lineno} in {frame.name}"
            for frame in traceback.extract_tb(tb)]


def scrub_exception(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """exc_info -> {"exception": {"type", "frames", "cause"}}; messages never rendered."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info is True:
        import sys  # noqa: PLC0415 (only on this rare path)

        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        exc = exc_info[1]
        event_dict["exception"] = {
            "type": exc_info[0].__name__,
            "frames": _frames(exc_info[2]),
            "cause": type(exc.__cause__ or exc.__context__).__name__
            if exc is not None and (exc.__cause__ or exc.__context__) else None,
        }
    event_dict.pop("stack_info", None)
    event_dict.pop("stack", None)
    return event_dict
