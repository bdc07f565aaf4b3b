"""Reads of what the gateway or the upstream keeps: a model (`GET /v1/models/{id}`), a stored
response (`GET /v1/responses/{id}`), its input items, and its deletion; a conversation
(`/v1/conversations/{id}`), its items, and their deletion.

A stored response or a conversation is reachable only by the tenant that created it through
this gateway (the upstream keeps every tenant's under the gateway's one credential), only on
the backend that holds it, and comes back restored with the placeholder mapping it was made
with. Query parameters are checked against their vocabulary; nothing else is forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from gateway.api import ApiRequest, openai
from gateway.api.headers import forwarded_headers
from gateway.api.structure import IDENTIFIER
from gateway.errors import InvalidRequest, NotFound
from gateway.ingress.middleware import REQUEST_ID
from gateway.observability.facts import FACTS, Routed
from gateway.pipeline import Held, Pipeline
from gateway.privacy.vault import Vault

INCLUDE = re.compile(r"[a-z_]+(?:\.[a-z_]+){0,4}")
BOOL = re.compile(r"true|false")
COUNT = re.compile(r"\d{1,9}")
RETRIEVE_QUERY = {"include": INCLUDE, "include[]": INCLUDE, "stream": BOOL,
                  "starting_after": COUNT, "include_obfuscation": BOOL}
ITEMS_QUERY = {"include": INCLUDE, "include[]": INCLUDE, "after": IDENTIFIER,
               "limit": COUNT, "order": re.compile(r"asc|desc")}
ITEM_QUERY = {"include": INCLUDE, "include[]": INCLUDE}


@dataclass(frozen=True)
class Resources:
    pipeline: Pipeline

    async def model(self, request: web.Request) -> web.Response:
        """One model, if this caller may use it; the same 404 as a model that does not exist."""
        caller = await self.pipeline.authenticator.admit(request)
        request[FACTS].admitted(caller.tenant, caller.key_name)
        model = request.match_info["model_id"]
        if model not in self.pipeline.router.visible_models(caller):
            raise NotFound("The requested model does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return web.json_response(model_object(model))

    async def response(self, request: web.Request) -> web.StreamResponse:
        query = _vetted(request.query, RETRIEVE_QUERY)
        stream = ("stream", "true") in query
        return await self._response(request, "GET", "", query, stream)

    async def input_items(self, request: web.Request) -> web.StreamResponse:
        return await self._response(request, "GET", "/input_items",
                                    _vetted(request.query, ITEMS_QUERY), False)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        response = await self._response(request, "DELETE", "", _vetted(request.query, {}),
                                        False)
        if response.status == 200:
            await self.pipeline.stored.forget(request.match_info["response_id"])
        return response

    async def conversation(self, request: web.Request) -> web.StreamResponse:
        return await self._conversation(request, "GET", _vetted(request.query, {}))

    async def delete_conversation(self, request: web.Request) -> web.StreamResponse:
        response = await self._conversation(request, "DELETE", _vetted(request.query, {}))
        if response.status == 200:
            await self.pipeline.conversations.forget(request.match_info["conversation_id"])
        return response

    async def conversation_items(self, request: web.Request) -> web.StreamResponse:
        return await self._conversation(request, "GET", _vetted(request.query, ITEMS_QUERY))

    async def conversation_item(self, request: web.Request) -> web.StreamResponse:
        """One item (GET), or its deletion (DELETE: the upstream answers with the
        conversation); the item's id is checked like every other before it is forwarded."""
        if not IDENTIFIER.fullmatch(request.match_info["item_id"]):
            raise NotFound("No item with that id.", param="item_id", code="item_not_found")
        return await self._conversation(request, request.method,
                                        _vetted(request.query, ITEM_QUERY))

    async def _response(self, request: web.Request, method: str, suffix: str,
                        query: list[tuple[str, str]], stream: bool) -> web.StreamResponse:
        caller = await self.pipeline.authenticator.admit(request)
        request[FACTS].admitted(caller.tenant, caller.key_name)
        response_id = request.match_info["response_id"]
        held = await self._owned(response_id, caller.tenant)
        return await self._forward(request, method, f"/v1/responses/{response_id}{suffix}",
                                   query, stream=stream, held=held)

    async def _conversation(self, request: web.Request, method: str,
                            query: list[tuple[str, str]]) -> web.StreamResponse:
        caller = await self.pipeline.authenticator.admit(request)
        request[FACTS].admitted(caller.tenant, caller.key_name)
        held = await self.pipeline.conversation(request.match_info["conversation_id"],
                                                caller.tenant)
        return await self._forward(request, method, request.path, query, stream=False,
                                   held=held)

    async def _forward(self, request: web.Request, method: str, path: str,
                       query: list[tuple[str, str]], *, stream: bool,
                       held: Held) -> web.StreamResponse:
        pipeline = self.pipeline
        facts = request[FACTS]
        headers = forwarded_headers("openai", request.headers,
                                    frozenset(pipeline.settings.privacy.allowed_betas))
        api_request = ApiRequest(openai.RESPONSES, "", stream, {}, headers=headers)
        path += f"?{urlencode(query)}" if query else ""
        backend = pipeline.settings.backend(held.backend)
        vault = Vault(entries=held.entries)
        reply = await pipeline.forwarder.open(api_request, [backend], None, request[REQUEST_ID],
                                              method=method, path=path, restore=vault.restore)
        facts.sent(Routed(backend.name, pipeline.router.attestation_digest(backend.name)))
        response, _ = await pipeline.relay(request, api_request, reply, vault)
        return response

    async def _owned(self, response_id: str, tenant: str) -> Held:
        stored = await self.pipeline.stored.get(response_id, tenant) \
            if IDENTIFIER.fullmatch(response_id) else None
        if stored is None:
            raise NotFound("No response with that id was stored through this gateway for you "
                           "(it may have expired, or been created through another gateway "
                           "process).", code="response_not_found")
        return Held(stored.backend, stored.entries)


def model_object(model: str) -> dict[str, object]:
    """A model in a shape both the OpenAI and the Anthropic SDKs read."""
    return {"id": model, "object": "model", "created": 0, "owned_by": "veil", "type": "model",
            "display_name": model, "created_at": "1970-01-01T00:00:00Z"}


def _vetted(query: Mapping[str, str], allowed: Mapping[str, re.Pattern[str]]
            ) -> list[tuple[str, str]]:
    """The query, every parameter known and every value within its vocabulary; a 400 naming
    the parameter otherwise (its value is never quoted)."""
    items = list(query.items())
    if len(items) > 64:
        raise InvalidRequest("Too many query parameters.", code="invalid_query")
    for name, value in items:
        pattern = allowed.get(name)
        if pattern is None:
            supported = ", ".join(sorted(allowed)) or "none"
            raise InvalidRequest(f"A query parameter is not supported here (supported: "
                                 f"{supported}).", code="invalid_query")
        if not pattern.fullmatch(value):
            raise InvalidRequest(f"Query parameter '{name}' has a value outside its "
                                 "vocabulary.", param=name, code="invalid_query")
    return items
