"""The path of one model request, stage by stage: ingress, route, policy, detect + decide +
mask, upstream, restore. Semantic scoring and attestation-aware routing slot in here."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import orjson
from aiohttp import web

from gateway.api import Endpoint
from gateway.api.replies import StreamRestore, restore_body
from gateway.errors import RequestTimeout
from gateway.ingress.auth import Authenticator
from gateway.ingress.body import decode_json_object, read_body
from gateway.ingress.middleware import POLICY_HEADER, REQUEST_ID
from gateway.observability.facts import FACTS
from gateway.observability.logging import bind_request_fields
from gateway.observability.metrics import Metrics
from gateway.policy.reload import PolicyHolder
from gateway.privacy.stage import PrivacyStage
from gateway.proxy.forward import Forwarder
from gateway.proxy.relay import relay_body, relay_stream
from gateway.proxy.router import Router
from gateway.settings import Settings


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    authenticator: Authenticator
    policies: PolicyHolder
    privacy: PrivacyStage
    router: Router
    forwarder: Forwarder
    metrics: Metrics

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        request_id = request[REQUEST_ID]
        facts = request[FACTS]
        limits = self.settings.limits

        # ingress: who is calling (and within their rate), bounded body, strict JSON, types
        caller = self.authenticator.admit(request)
        facts.tenant = caller.tenant
        raw = await self._body(request)
        api_request = endpoint.parse(decode_json_object(raw), request.headers)

        # route: backends the tenant may use for this model, in configured order
        backends = self.router.candidates(api_request, caller)
        facts.model, facts.stream = api_request.model, api_request.stream
        facts.stage("ingress")

        # policy: taken once, so a reload never changes the rules under this request
        active = self.policies.current.select(caller.tenant, endpoint.name, api_request.model)
        facts.policy = active.digest

        # detect + decide: every text the request carries, rewritten before anything leaves
        vault, decision = await self.privacy.protect(api_request, active, caller.tenant, facts)
        backends, failed_open = self.router.trusted(backends, decision.requires, active)
        if failed_open:
            facts.rule = "fail_mode.evidence=open"
        restoring = len(vault) > 0

        # upstream: the gateway's own credentials; fail over before the first byte
        payload = orjson.dumps(api_request.body)
        reply = await self.forwarder.open(api_request, backends, payload, request_id)
        facts.backend = reply.backend.name
        facts.attestation = self.router.attestation_digest(reply.backend.name)
        facts.stage("upstream")
        bind_request_fields(model=api_request.model, stream=api_request.stream,
                            backend=reply.backend.name)

        # restore: placeholders -> original values, in the body or event by event
        upstream = reply.response
        if api_request.stream and upstream.status == 200 \
                and upstream.content_type == "text/event-stream":
            rewrite = StreamRestore(api_request.endpoint, vault).rewrite if restoring else None
            response = await relay_stream(request, api_request, upstream, request_id,
                                          rewrite=rewrite, stamp={POLICY_HEADER: active.digest})
        else:
            transform = functools.partial(restore_body, vault=vault) if restoring else None
            response = await relay_body(upstream, limits.max_response_bytes, transform)
        facts.stage("relay")
        return response

    async def _body(self, request: web.Request) -> bytes:
        limits = self.settings.limits
        if request.content.is_eof():  # already buffered whole: nothing left to wait for
            return await read_body(request, limits.max_body_bytes)
        try:
            async with asyncio.timeout(limits.body_read_timeout_s):
                return await read_body(request, limits.max_body_bytes)
        except TimeoutError:
            raise RequestTimeout("Request body was not received in time.") from None
