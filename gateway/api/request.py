"""What the rest of the gateway knows about a request, independent of its wire format."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.api.fields import optional_bool, require_str
from gateway.settings import WireFormat

DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
FORWARDED_HEADERS: dict[WireFormat, tuple[str, ...]] = {
    "openai": ("OpenAI-Beta",),
    "anthropic": ("anthropic-version", "anthropic-beta"),
}


@dataclass(frozen=True)
class ApiRequest:
    endpoint: Endpoint
    model: str
    stream: bool
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)  # allow-listed client headers


@dataclass(frozen=True)
class Endpoint:
    """One client-facing route: its path, wire format, metric label and body validator."""

    path: str
    wire: WireFormat
    name: str
    validate: Callable[[dict[str, Any]], None]
    streams: bool = True

    def parse(self, body: dict[str, Any], client_headers: Mapping[str, str]) -> ApiRequest:
        model = require_str(body, "model")
        self.validate(body)
        stream = optional_bool(body, "stream") if self.streams else False
        return ApiRequest(self, model, stream, body, self.forwardable(client_headers))

    def forwardable(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """Protocol-version headers an upstream needs; an allow-list, so nothing else (cookies,
        the client's credentials, hop-by-hop headers) can slip through."""
        allowed = FORWARDED_HEADERS[self.wire]
        headers = {name: client_headers[name] for name in allowed if name in client_headers}
        if self.wire == "anthropic":
            headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
        return headers
