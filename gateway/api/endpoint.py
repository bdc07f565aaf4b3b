"""One client-facing route as one object: its path, wire format, the declared structure of its
body, how its streamed replies are restored, how a stream ends and how it reports an error.
Adding an endpoint is writing one of these in its wire-format module and listing it in
`gateway.api.ENDPOINTS`; the pipeline, the router and the relay only ever read these fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.api.headers import forwarded_headers
from gateway.api.sse import SSEEvent
from gateway.api.structure import Node, Scan, walk_body
from gateway.settings import WireFormat

if TYPE_CHECKING:
    from gateway.api.replies import EventRestore
    from gateway.privacy.vault import Vault


def _never(body: dict[str, Any]) -> bool:
    return False


def _same(envelope: dict[str, Any]) -> dict[str, Any]:
    return envelope


@dataclass(frozen=True)
class ApiRequest:
    endpoint: Endpoint
    model: str
    stream: bool
    body: dict[str, Any]
    scan: Scan = field(default_factory=Scan)  # the body's data, attachments, unknown fields
    headers: Mapping[str, str] = field(default_factory=dict)  # vetted client headers

    @property
    def json_reply(self) -> bool:
        """Whether the client asked for the reply as a JSON document."""
        return self.endpoint.json_reply(self.body)


@dataclass(frozen=True)
class Endpoint:
    path: str
    wire: WireFormat
    name: str  # the route's name in metrics, audit records and policies' `applies_to.routes`
    structure: Node
    # Restores a streamed reply, event by event; None: the endpoint never streams.
    events: Callable[[Vault, bool], EventRestore] | None
    is_terminal: Callable[[SSEEvent], bool] = lambda event: True
    stream_error: Callable[[str, str], bytes] = lambda message, request_id: b""
    error_body: Callable[[dict[str, Any]], dict[str, Any]] = _same
    json_reply: Callable[[dict[str, Any]], bool] = _never
    restores_reply: bool = True  # False: replies carry no text (vectors, token counts)
    keeps_state: bool = False  # the upstream stores the reply under an id (Responses)
    # Placeholders keyed per tenant (the same value alike in every request), where nothing is
    # restored and requests must stay comparable: embeddings (gateway/privacy/vault.py).
    keyed_placeholders: bool = False
    # Its part in a conversation the upstream keeps (gateway/privacy/conversations.py):
    # "creates" one, adds to the one "in_path", or to the one its body may name ("in_body").
    # The first two name no model: the pipeline routes them to `routing.conversations_model`.
    conversation: Literal["", "creates", "in_path", "in_body"] = ""
    # Its streams report usage only when asked (`stream_options.include_usage`): the gateway
    # asks for every stream, and hides the answer from a client that did not.
    asks_usage: bool = False

    @property
    def streams(self) -> bool:
        return self.events is not None

    def parse(self, body: dict[str, Any], client_headers: Mapping[str, str],
              allowed_betas: frozenset[str] = frozenset()) -> ApiRequest:
        """Check the body against the declared structure (400 naming the field otherwise),
        collect its data, and vet the protocol headers that will be forwarded."""
        scan = walk_body(self.structure, body)
        stream = body.get("stream") is True and self.streams
        headers = forwarded_headers(self.wire, client_headers, allowed_betas)
        model = body["model"] if self.conversation in ("", "in_body") else ""
        return ApiRequest(self, model, stream, body, scan, headers)

    def ask_for_usage(self, body: dict[str, Any]) -> bool:
        """Ask the upstream for a stream's usage in `body` (to be forwarded); True when the
        client did not ask itself, so the usage chunk is the gateway's to hide."""
        if not self.asks_usage:
            return False
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False
        body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                  "include_usage": True}
        return True
