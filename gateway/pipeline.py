"""The path of one model request, stage by stage: ingress, route, policy, detect + decide +
mask, upstream, restore. Semantic scoring and attestation-aware routing slot in here."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from gateway.api import ApiRequest, Endpoint
from gateway.api.model_name import renamed_body, renaming
from gateway.api.replies import StreamRestore, checked, restore_body
from gateway.api.structure import IDENTIFIER
from gateway.errors import (
    ConversationBusy,
    InvalidRequest,
    NotFound,
    RequestTimeout,
    UnsupportedMediaType,
    UpstreamFailed,
    UpstreamTimeout,
)
from gateway.ingress.auth import Authenticator
from gateway.ingress.body import decode_json_object, read_body
from gateway.ingress.middleware import POLICY_HEADER, REQUEST_ID
from gateway.ingress.usage import UsageCounter
from gateway.inspection import Inspector, Reading
from gateway.observability.facts import FACTS, Routed
from gateway.observability.logging import bind_request_fields
from gateway.observability.metrics import Metrics
from gateway.offload import off_loop_if_big
from gateway.policy.reload import PolicyHolder
from gateway.privacy.conversations import ConversationStore
from gateway.privacy.stored import ResponseStore
from gateway.privacy.vault import Entry, Vault
from gateway.protect import CompiledSet, Protection, admit, protect
from gateway.proxy.forward import Forwarder, UpstreamReply
from gateway.proxy.relay import STREAM_BROKE, Rewrite, relay_body, relay_stream
from gateway.proxy.router import Router
from gateway.proxy.target import renames
from gateway.settings import BackendSettings, Settings


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    authenticator: Authenticator
    policies: PolicyHolder[CompiledSet]
    inspector: Inspector
    router: Router
    forwarder: Forwarder
    metrics: Metrics
    stored: ResponseStore
    conversations: ConversationStore

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        facts = request[FACTS]

        # ingress: who is calling (and within their rate), bounded body, strict JSON, the
        # declared structure (types, vocabularies, every piece of data found), vetted headers
        caller = await self.authenticator.admit(request)
        facts.admitted(caller.tenant, caller.key_name)
        _require_json(request)
        raw = await self._body(request)
        facts.body_bytes = len(raw)
        api_request = self._conversations_model(await off_loop_if_big(
            len(raw), self._parse, endpoint, raw, request.headers))

        # route: backends the tenant may use for this model, in configured order (a
        # continued stored response or conversation: only the backend that holds it)
        backends = self.router.candidates(api_request, caller)
        held = await self._held(request, api_request, caller.tenant)
        if held is not None:
            backends = _holding(backends, held)
        facts.parsed(api_request.model, api_request.stream)
        facts.stage("ingress")

        # policy: taken once, so a reload never changes the rules under this request
        compiled = self.policies.current.select(caller.tenant, endpoint.name, api_request.model)
        facts.chose(compiled.digest)
        scan = api_request.scan
        attachments = admit(scan.attachments, scan.unknown, compiled.policy)

        # inspect, then protect: findings and scores gathered first, the decision pure
        texts = scan.texts if compiled.scans else []
        detections, scores = await self.inspector.inspect(
            Reading(*scan.for_detection(texts)), compiled)
        facts.stage("detect")
        masking = functools.partial(protect, texts, compiled, detections, scores,
                                    tenant=caller.tenant, attachments=attachments,
                                    keyed=endpoint.keyed_placeholders)
        protection = await self._masked(len(raw), masking, held, caller.tenant)
        facts.protected(protection.facts())  # a blocked request's too: audit, metrics, trace
        if protection.blocked:
            raise protection.refusal()
        usage = UsageCounter(hide=api_request.stream
                             and api_request.endpoint.ask_for_usage(api_request.body))
        payload = await off_loop_if_big(len(raw), _written, api_request, protection.texts)
        facts.stage("mask")
        backends, failed_open = self.router.trusted(backends, protection.decision.requires,
                                                    compiled)

        # upstream: the gateway's own credentials, failing over while nothing has reached the
        # client; then restore: placeholders -> original values, in the body or event by event
        vault = protection.vault
        reply, response, response_id = await self._answered(
            request, api_request, backends, payload, vault=vault, usage=usage,
            stamp={POLICY_HEADER: compiled.digest}, failed_open=failed_open)
        facts.sent(self._routed(reply, failed_open))
        if response_id is not None and response.status == 200:
            await self._remember(api_request, response_id, caller.tenant, reply.backend.name,
                                 vault.entries())
        used = usage.seen
        if used is not None:
            facts.used(used)
            await self.authenticator.spend(request, caller, used.total_tokens)
        facts.stage("relay")
        return response

    async def _answered(self, request: web.Request, api_request: ApiRequest,
                        backends: list[BackendSettings], payload: bytes, *, vault: Vault,
                        usage: UsageCounter, stamp: dict[str, str], failed_open: bool
                        ) -> tuple[UpstreamReply, web.StreamResponse, str | None]:
        """The reply relayed. Fail over before the first byte reaches the client (a whole
        reply that breaks while it is read has reached no one yet: the next backend gets the
        request, within the retry budget, unless the endpoint keeps state upstream, where a
        second try could store a second response)."""
        facts, endpoint, left = request[FACTS], api_request.endpoint, backends
        while True:
            reply = await self.forwarder.open(api_request, left, payload, request[REQUEST_ID],
                                              path=_upstream_path(request, endpoint),
                                              restore=vault.restore, retrying=left is not backends)
            facts.stage("upstream")
            bind_request_fields(model=api_request.model, stream=api_request.stream,
                                backend=reply.backend.name)
            try:
                # restore: placeholders -> original values, in the body or event by event
                response, response_id = await self.relay(request, api_request, reply, vault,
                                                         stamp=stamp, usage=usage)
            except (UpstreamFailed, UpstreamTimeout):
                left = [b for b in left if b is not reply.backend]
                if left and not endpoint.keeps_state and self.forwarder.may_retry():
                    continue
                facts.sent(self._routed(reply, failed_open))
                raise
            return reply, response, response_id

    def _routed(self, reply: UpstreamReply, failed_open: bool) -> Routed:
        name = reply.backend.name
        return Routed(name, self.router.attestation_digest(name), failed_open)

    async def relay(self, request: web.Request, api_request: ApiRequest, reply: UpstreamReply,
                    vault: Vault, *, stamp: dict[str, str] | None = None,
                    usage: UsageCounter | None = None
                    ) -> tuple[web.StreamResponse, str | None]:
        """Relay the upstream's answer restored with `vault`; also the id a stateful API gave
        it (Responses), so it can be read back and continued. A reply that breaks while it is
        read counts against its backend's health; a client that goes away does not."""
        ok: bool | None = None
        named = api_request.model if renames(reply.backend, api_request) else None
        try:
            relayed = await self._relay(request, api_request, reply.response, vault,
                                        stamp=stamp, usage=usage, named=named)
        except (UpstreamFailed, UpstreamTimeout):
            ok = False
            raise
        else:
            ok = STREAM_BROKE not in relayed[0]
            reply.span.replied(relayed[0])
        finally:
            self.forwarder.finished(reply, ok)
        return relayed

    async def _relay(self, request: web.Request, api_request: ApiRequest,
                     upstream: aiohttp.ClientResponse, vault: Vault, *,
                     stamp: dict[str, str] | None, usage: UsageCounter | None,
                     named: str | None) -> tuple[web.StreamResponse, str | None]:
        """`named`: the client's model name, to put back where the backend wrote its own."""
        endpoint = api_request.endpoint
        restoring = len(vault) > 0 and endpoint.restores_reply
        observing = restoring or endpoint.keeps_state
        if api_request.stream and upstream.status == 200 \
                and upstream.content_type == "text/event-stream":
            restore = StreamRestore(endpoint, vault, api_request.json_reply) \
                if observing else None
            rewrite: Rewrite = restore.rewrite if restore else checked
            if named is not None:
                rewrite = renaming(rewrite, named)
            response = await relay_stream(request, api_request, upstream, request[REQUEST_ID],
                                          rewrite=usage.observing(rewrite) if usage else rewrite,
                                          stamp=stamp)
            return response, restore.response_id if restore else None
        transform = functools.partial(restore_body, vault=vault) if restoring else None
        if named is not None:
            transform = functools.partial(renamed_body, model=named,
                                          vault=vault if restoring else None)
        body = await relay_body(upstream, self.settings.limits.max_response_bytes, transform,
                                usage.observe_reply if usage else None)
        return body, _reply_id(body.body) if endpoint.keeps_state else None

    def _parse(self, endpoint: Endpoint, raw: bytes, headers: Mapping[str, str]
               ) -> ApiRequest:
        return endpoint.parse(decode_json_object(raw), headers,
                              frozenset(self.settings.privacy.allowed_betas))

    def _conversations_model(self, api_request: ApiRequest) -> ApiRequest:
        """Creating a conversation or adding to one names no model: its requests go to the
        backends of `routing.conversations_model`, if the operator named one."""
        if api_request.endpoint.conversation not in ("creates", "in_path"):
            return api_request
        return dataclasses.replace(api_request, model=self._conversations_enabled())

    def _conversations_enabled(self) -> str:
        model = self.settings.routing.conversations_model
        if model is None:
            raise InvalidRequest(
                "Conversations are not enabled on this gateway (routing.conversations_model); "
                "send the history in 'input' or use 'previous_response_id'.",
                param="conversation", code="conversations_disabled")
        return model

    async def _held(self, request: web.Request, api_request: ApiRequest,
                    tenant: str) -> Held | None:
        """What the upstream keeps that this request continues, which must be this tenant's:
        a stored response (`previous_response_id`) or a conversation (in the path, or the
        body's `conversation`). Its mapping seeds this request's placeholders."""
        endpoint, body = api_request.endpoint, api_request.body
        if endpoint.conversation == "in_path":
            return await self.conversation(request.match_info["conversation_id"], tenant)
        named = body.get("conversation") if endpoint.conversation == "in_body" else None
        if named is not None:
            if body.get("previous_response_id") is not None:
                raise InvalidRequest("'conversation' and 'previous_response_id' cannot both be "
                                     "given.", param="conversation")
            return await self.conversation(
                named if isinstance(named, str) else str(named.get("id")), tenant)
        previous = body.get("previous_response_id")
        if not endpoint.keeps_state or not isinstance(previous, str):
            return None
        stored = await self.stored.get(previous, tenant)
        if stored is None:
            raise InvalidRequest(
                "'previous_response_id' names no response this gateway stored for you (it may "
                "have expired, or been created through another gateway process).",
                param="previous_response_id", code="previous_response_not_found")
        return Held(stored.backend, stored.entries)

    async def conversation(self, conversation_id: str, tenant: str) -> Held:
        """The tenant's conversation of that id, or 404 (another tenant's is not found)."""
        self._conversations_enabled()
        found = await self.conversations.get(conversation_id, tenant) \
            if IDENTIFIER.fullmatch(conversation_id) else None
        if found is None:
            raise NotFound("No conversation with that id was created through this gateway for "
                           "you (it may have expired or been deleted).", param="conversation",
                           code="conversation_not_found")
        return Held(found.backend, found.entries, conversation_id, found.version)

    async def _masked(self, size: int, masking: functools.partial[Protection],
                      held: Held | None, tenant: str) -> Protection:
        """The decision and the masked texts, seeded with what `held` maps. A conversation's
        mapping grown by this request is written back before anything is forwarded, naming
        the version it grew from: if another request wrote first, mask again from theirs."""
        for _ in range(CONVERSATION_WRITE_ATTEMPTS):
            protection: Protection = await off_loop_if_big(
                size, masking, seed=held.entries if held is not None else ())
            if protection.blocked:
                return protection  # nothing written: the caller refuses it
            if held is None or held.conversation is None or \
                    len(protection.vault) == len(held.entries):
                return protection
            if await self.conversations.put(held.conversation, tenant, held.backend,
                                            protection.vault.entries(), held.version):
                return protection
            held = await self.conversation(held.conversation, tenant)
        raise ConversationBusy

    async def _remember(self, api_request: ApiRequest, reply_id: str, tenant: str,
                        backend: str, entries: list[Entry]) -> None:
        """A new conversation's record, or a stored response's (a request into a conversation
        wrote its record before it went upstream)."""
        kind = api_request.endpoint.conversation
        if kind == "creates" and IDENTIFIER.fullmatch(reply_id):
            await self.conversations.put(reply_id, tenant, backend, entries, None)
        elif kind in ("", "in_body") and _stores(api_request):
            await self.stored.remember(reply_id, tenant, backend, entries)

    async def _body(self, request: web.Request) -> bytes:
        limits = self.settings.limits
        if request.content.is_eof():  # already buffered whole: nothing left to wait for
            return await read_body(request, limits.max_body_bytes)
        try:
            async with asyncio.timeout(limits.body_read_timeout_s):
                return await read_body(request, limits.max_body_bytes)
        except TimeoutError:
            raise RequestTimeout("Request body was not received in time.") from None


def _written(api_request: ApiRequest, texts: Sequence[str] | None) -> bytes:
    """The body to forward: the masked texts written back into it, serialized."""
    api_request.scan.write(texts or ())
    return orjson.dumps(api_request.body)


@dataclass(frozen=True)
class Held:
    """State the upstream keeps that a request continues: on which backend, and the mapping
    its placeholders were made with; for a conversation, its id and the mapping's version."""

    backend: str
    entries: list[Entry]
    conversation: str | None = None
    version: str | None = None


CONVERSATION_WRITE_ATTEMPTS = 8  # each failure means another request wrote: bounded


def _upstream_path(request: web.Request, endpoint: Endpoint) -> str | None:
    """The client's path where the route names a resource (its id already checked against
    the ones this gateway keeps); no query is forwarded."""
    return request.path if "{" in endpoint.path else None


def _holding(backends: list[BackendSettings], held: Held) -> list[BackendSettings]:
    holding = [b for b in backends if b.name == held.backend]
    if not holding:
        param = "conversation" if held.conversation else "previous_response_id"
        raise InvalidRequest(f"The state named by '{param}' is held by a backend that does "
                             "not serve this model.", param=param,
                             code="conversation_not_found" if held.conversation
                             else "previous_response_not_found")
    return holding


def _stores(api_request: ApiRequest) -> bool:
    return api_request.endpoint.keeps_state and api_request.body.get("store") is not False


def _require_json(request: web.Request) -> None:
    """Every body this gateway reads is JSON: one sent as something else (a form, plain text,
    nothing) was not meant for it, or is meant to slip past a parser that trusts the type."""
    kind = request.content_type  # aiohttp: application/octet-stream when none was sent
    if kind != "application/json" and not (kind.startswith("application/")
                                            and kind.endswith("+json")):
        raise UnsupportedMediaType("Content-Type must be application/json.")


def _reply_id(body: object) -> str | None:
    if not isinstance(body, bytes):
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = parsed.get("id") if isinstance(parsed, dict) else None
    return found if isinstance(found, str) else None
