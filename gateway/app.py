"""Build the aiohttp application from settings: routes, middlewares, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import os
import signal
import threading
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from opentelemetry.sdk.trace.export import SpanExporter
from redis.asyncio import Redis

from gateway.api import ENDPOINTS
from gateway.attestation.agent import EVIDENCE_PATH, ReportSource
from gateway.attestation.levels import TrustLevel
from gateway.attestation.self_evidence import SelfEvidence, self_evidence
from gateway.attestation.transport import Transport
from gateway.attestation.trust_roots import Roots
from gateway.attestation.verifier import AttestationService
from gateway.errors import AuthenticationFailed
from gateway.fhe.epochs import key_epochs
from gateway.fhe.remote_embed import RemoteEmbedder
from gateway.fhe.semantic import SemanticScorer
from gateway.fhe.semantic import SessionFactory as ScorerSessionFactory
from gateway.fhe.semantic import default_session as default_scorer_session
from gateway.ingress.auth import QUOTA, TOKEN_QUOTA, Authenticator
from gateway.ingress.budgets import Budgets
from gateway.ingress.keys_file import load_keys, watch_keys
from gateway.ingress.middleware import request_context
from gateway.ingress.ratelimit import RateLimiter
from gateway.ingress.shared_ratelimit import SharedRateLimiter
from gateway.inspection import Inspector
from gateway.keys.released import release_keys
from gateway.keys.sources import GatewayKeys
from gateway.memory import MemoryReturn
from gateway.observability.audit import AuditTrail
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import Tracing, build_tracing
from gateway.pipeline import Pipeline
from gateway.plugins import plugin_entities
from gateway.policy.active import PolicySet, load_policy_set
from gateway.policy.reload import PolicyHolder, run_watcher
from gateway.privacy.conversations import Conversations, ConversationStore
from gateway.privacy.engine import DetectionEngine
from gateway.privacy.stored import ResponseStore, StoredResponses
from gateway.protect import CompiledSet, compile_set
from gateway.proxy.balance import Balancer
from gateway.proxy.budget import RetryBudget
from gateway.proxy.forward import Forwarder
from gateway.proxy.health import Health
from gateway.proxy.probe import run_probes
from gateway.proxy.router import Router
from gateway.proxy.upstream import SessionFactory, UpstreamPool, default_session
from gateway.readiness import readiness
from gateway.resources import Resources, model_object
from gateway.settings import Settings
from gateway.state.conversations import SharedConversations
from gateway.state.redis_store import connect
from gateway.state.shared_attestation import SharedAttestation
from gateway.state.stored_responses import SharedStoredResponses

log = get_logger("veil.server")


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    metrics: Metrics
    pool: UpstreamPool
    policies: PolicyHolder[CompiledSet]
    attestation: AttestationService
    router: Router
    pipeline: Pipeline
    audit: AuditTrail | None
    redis: Redis | None  # the shared store, when state.redis_url is set
    tracing: Tracing | None  # when tracing.enabled
    keys: GatewayKeys  # the secrets, and the HSM session if any (closed with the app)


GATEWAY = web.AppKey("gateway", Gateway)


def audit_path(path: str, worker: int | None, replica: str | None = None) -> str:
    """One chain per replica and per worker: audit.jsonl -> audit.<replica>.w0.jsonl, ..."""
    parts = [p for p in (replica, f"w{worker}" if worker is not None else None) if p]
    if not parts:
        return path
    stem, dot, suffix = path.rpartition(".")
    tag = ".".join(parts)
    return f"{stem}.{tag}.{suffix}" if dot else f"{path}.{tag}"


@dataclass(frozen=True)
class Outbound:
    """Every way out of the gateway, each one seam that tests (or an operator's own
    networking) can replace: model traffic (one session per backend), attestation (evidence,
    key sets, AMD KDS, Intel PCS, and the trusted roots they are judged by), the scorer."""

    model_sessions: SessionFactory = default_session
    attestation: Transport | None = None  # None: the network
    attestation_roots: Roots | None = None  # None: the roots pinned in the package
    scorer_session: ScorerSessionFactory = default_scorer_session
    spans: SpanExporter | None = None  # None: OTLP/HTTP to tracing.endpoint (when enabled)


def build_app(settings: Settings, *, outbound: Outbound = Outbound(),
              environ: Mapping[str, str] | None = None, worker: int | None = None,
              policies: PolicySet | None = None,
              platform: ReportSource | None = None,
              released: Mapping[str, bytes] | None = None) -> web.Application:
    """`policies`: already loaded by the preflight (else loaded here); `platform`: what makes
    the gateway's own reports for `self_attestation` and key release (None: configfs-tsm);
    `released`: the keys a key service released (None, with `key_release`: asked for here,
    before anything is built that could use a key)."""
    if settings.key_release is not None and released is None:
        released = release_keys(settings, platform)
    metrics = Metrics()
    pool = UpstreamPool(settings, outbound.model_sessions, environ)
    redis = connect(settings.state.redis_url, settings.state.timeout_s) \
        if settings.state.redis_url else None
    authenticator = _authenticator(settings, metrics, redis)
    env = os.environ if environ is None else environ
    keys = GatewayKeys(settings, env, released)
    privacy = settings.privacy
    engine = DetectionEngine(
        None if privacy.ner_workers == "auto" else privacy.ner_workers,
        log_level=settings.logging.level, log_format=settings.logging.format,
        ner_start_timeout_s=privacy.ner_start_timeout_s,
        ner_max_rss_mb=privacy.ner_worker_max_rss_mb,
        on_restart=lambda reason: metrics.ner_restarts.labels(reason).inc())
    hash_secret = keys.hash_key()

    async def compiled(policy_set: PolicySet) -> CompiledSet:
        ready = compile_set(policy_set, hash_secret)
        await engine.prepare(ready.selections)  # a policy never meets a detector not ready
        return ready

    holder = PolicyHolder(settings.policies, functools.partial(
        load_policy_set, settings.policies, hash_secret=hash_secret is not None,
        plugin_entities=plugin_entities), compiled, metrics, initial=policies)
    vault_secret = keys.vault_secret()
    attestation = AttestationService(settings, functools.partial(_trust_levels, holder),
                                     metrics, transport=outbound.attestation,
                                     roots=outbound.attestation_roots,
                                     shared=_shared_attestation(settings, redis, vault_secret,
                                                                metrics))
    holder.on_reload.append(attestation.policies_changed)
    own_evidence = self_evidence(settings, functools.partial(_in_force, holder), platform)
    router = Router(settings, attestation)
    semantic = SemanticScorer(settings.fhe, metrics,
                              _remote_embedder(settings, pool, attestation),
                              outbound.scorer_session,
                              key_epochs(settings, redis, metrics, keys.fhe_master())) \
        if settings.fhe.scorers \
        else None
    stored, conversations = _mapping_stores(settings, redis, vault_secret, metrics)
    health = Health([b.name for b in settings.backends], settings.routing, metrics)
    routing = settings.routing
    tracing = build_tracing(settings.tracing, env, outbound.spans)
    forwarder = Forwarder(pool, metrics, attestation, health=health,
                          balancer=Balancer(routing, health),
                          budget=RetryBudget(routing.retry_budget_ratio,
                                             routing.retry_budget_min_per_s),
                          tracing=tracing)
    inspector = Inspector(engine, semantic, on_detector_failure=metrics.detector_failed)
    pipeline = Pipeline(settings, authenticator, holder, inspector, router, forwarder, metrics,
                        stored, conversations)
    audit = AuditTrail(audit_path(settings.audit.path, worker, settings.audit.replica),
                       keys.audit, settings.audit.max_bytes, settings.audit.keep) \
        if settings.audit.enabled else None
    gateway = Gateway(settings, metrics, pool, holder, attestation, router, pipeline, audit,
                      redis, tracing, keys)
    app = web.Application(
        # The body limit is enforced by the pipeline with our own error; this is a backstop.
        client_max_size=settings.limits.max_body_bytes + 1,
        middlewares=[request_context(metrics=metrics, settings=settings, audit=audit,
                                     memory=MemoryReturn(), tracing=tracing)],
    )
    app[GATEWAY] = gateway
    _routes(app.router, pipeline, Resources(pipeline))
    _own_routes(app.router, settings, env, own_evidence)
    app.on_response_prepare.append(_server_header)
    app.on_shutdown.append(_stopping)
    app.cleanup_ctx.append(_stopped)
    app.cleanup_ctx.append(_keys_closed)  # after everything that may still use a key
    app.cleanup_ctx.append(_tracing)  # flushed after every request's span has ended
    app.cleanup_ctx.append(_shared_store)  # closed last: attestation uses it until it stops
    app.cleanup_ctx.append(_metrics_sync)
    app.cleanup_ctx.append(_upstream_sessions)
    app.cleanup_ctx.append(_detectors)
    app.cleanup_ctx.append(_policy_reloads)
    app.cleanup_ctx.append(_attestation)
    app.cleanup_ctx.append(_health_probes)
    app.cleanup_ctx.append(_audit_trail)
    app.cleanup_ctx.append(_key_reloads)
    return app


def _own_routes(router: web.UrlDispatcher, settings: Settings, env: Mapping[str, str],
                own_evidence: SelfEvidence | None) -> None:
    """What the gateway answers about itself: health, readiness, metrics, its evidence."""
    router.add_get("/healthz", healthz, name="healthz")
    if own_evidence is not None:
        router.add_get(EVIDENCE_PATH, own_evidence.handle, name="self_attestation")
    router.add_get("/readyz", readyz, name="readyz")
    metrics_token = settings.metrics.token_env
    router.add_get("/metrics", functools.partial(
        metrics_page, token=env[metrics_token].encode() if metrics_token else None),
        name="metrics")


def _routes(router: web.UrlDispatcher, pipeline: Pipeline, resources: Resources) -> None:
    for endpoint in ENDPOINTS:
        router.add_post(endpoint.path, functools.partial(pipeline.handle, endpoint=endpoint),
                        name=endpoint.name)
    router.add_get("/v1/models", list_models, name="models")
    router.add_get("/v1/models/{model_id:.+}", resources.model, name="model")
    response = "/v1/responses/{response_id}"
    router.add_get(response, resources.response, name="responses_retrieve")
    router.add_get(response + "/input_items", resources.input_items,
                   name="responses_input_items")
    router.add_delete(response, resources.delete, name="responses_delete")
    conversation = "/v1/conversations/{conversation_id}"
    router.add_get(conversation, resources.conversation, name="conversations_retrieve")
    router.add_delete(conversation, resources.delete_conversation, name="conversations_delete")
    router.add_get(conversation + "/items", resources.conversation_items,
                   name="conversations_items_list")
    router.add_get(conversation + "/items/{item_id}", resources.conversation_item,
                   name="conversations_item")
    router.add_delete(conversation + "/items/{item_id}", resources.conversation_item,
                      name="conversations_item_delete")


def _authenticator(settings: Settings, metrics: Metrics, redis: Redis | None) -> Authenticator:
    """Keys from config.yaml and the keys file; rate limits and budgets shared through Redis,
    if any."""
    shared = SharedRateLimiter(redis, settings.state, metrics) if redis is not None else None
    file_keys = load_keys(settings.api_keys_file, settings.tenants, settings.api_keys) \
        if settings.api_keys_file else []
    return Authenticator(settings, RateLimiter(), metrics, shared, file_keys,
                         budgets=Budgets(metrics, redis, settings.state))


def _mapping_stores(settings: Settings, redis: Redis | None, secret: bytes | None,
                    metrics: Metrics) -> tuple[ResponseStore, ConversationStore]:
    """Stored responses' and conversations' placeholder mappings: shared by every replica
    when Redis and the vault's key are configured (one secret, keys of their own), else this
    process's own."""
    privacy, state = settings.privacy, settings.state
    if redis is not None and secret is not None:
        return (SharedStoredResponses(redis, secret, privacy.stored_response_ttl_s,
                                      state.timeout_s, metrics),
                SharedConversations(redis, secret, privacy.conversation_ttl_s, state.timeout_s,
                                    metrics))
    return (StoredResponses(privacy.stored_response_ttl_s, privacy.stored_responses_max),
            Conversations(privacy.conversation_ttl_s, privacy.stored_responses_max))


def _shared_attestation(settings: Settings, redis: Redis | None, secret: bytes | None,
                        metrics: Metrics) -> SharedAttestation | None:
    """Evidence and collateral shared by every replica when Redis and the vault's key are
    configured (the key seals them: only gateways can write what another adopts)."""
    state = settings.state
    if redis is None or secret is None:
        return None
    return SharedAttestation(redis, secret, state.timeout_s, metrics)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Our name only: aiohttp's default names Python's and its own versions, which tell an
    attacker which advisories to try. And the caller's quota, on every answer to a known key
    (streams too: this runs as their headers leave). On Anthropic's routes the request id
    also as `request-id`, the header Anthropic's SDKs read into `_request_id` and errors."""
    response.headers[hdrs.SERVER] = "veil"
    if request.path.startswith("/v1/messages") and "X-Request-ID" in response.headers:
        response.headers["request-id"] = response.headers["X-Request-ID"]
    for key in (QUOTA, TOKEN_QUOTA):
        quota = request.get(key)
        if quota is not None:
            response.headers.update(quota.headers())


async def _stopping(_: web.Application) -> None:
    log.info("stopping")  # no new connections from here; requests in flight finish


async def _stopped(_: web.Application) -> AsyncIterator[None]:
    yield
    log.info("stopped")  # the last line a worker writes: every resource is closed


async def _keys_closed(app: web.Application) -> AsyncIterator[None]:
    yield
    app[GATEWAY].keys.close()


async def _key_reloads(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    settings = gateway.settings
    if not settings.api_keys_file or not settings.api_keys_watch_interval_s:
        yield
        return
    async with _running(watch_keys(
            settings.api_keys_file, settings.api_keys_watch_interval_s, settings.tenants,
            settings.api_keys, gateway.pipeline.authenticator.use_keys)):
        yield


@contextlib.asynccontextmanager
async def _running(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """`work` as a background task for as long as the block runs; cancelled and awaited at
    its end, so nothing of it outlives the application."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    yield
    tracing = app[GATEWAY].tracing
    if tracing is not None:
        await asyncio.to_thread(tracing.close)  # waits for the last export


async def _shared_store(app: web.Application) -> AsyncIterator[None]:
    yield
    redis = app[GATEWAY].redis
    if redis is not None:
        await redis.aclose()


async def _audit_trail(app: web.Application) -> AsyncIterator[None]:
    audit = app[GATEWAY].audit
    if audit is not None:
        audit.open()
    yield
    if audit is not None:
        audit.close()


async def _detectors(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.policies.start()
    semantic = gateway.pipeline.inspector.semantic
    if semantic is not None:
        await semantic.start()
    yield
    await gateway.pipeline.inspector.engine.close()
    if semantic is not None:
        await semantic.close()


def _remote_embedder(settings: Settings, pool: UpstreamPool,
                     attestation: AttestationService) -> RemoteEmbedder | None:
    name = settings.fhe.embedding_backend
    if name is None:
        return None
    return RemoteEmbedder(settings.backend(name), settings.fhe.embedding_model or "default",
                          lambda: pool.headers[name], attestation.pin, pool.session)


def _in_force(policies: PolicyHolder[CompiledSet]) -> list[tuple[str, str]]:
    return [(active.loaded.name, active.digest) for active in policies.policies.policies]


def _trust_levels(policies: PolicyHolder[CompiledSet]) -> list[tuple[str, str, TrustLevel]]:
    return policies.policies.trust_levels()


async def _attestation(app: web.Application) -> AsyncIterator[None]:
    """Attest every backend that must be attested, in the background, for as long as we run."""
    service = app[GATEWAY].attestation
    await service.start()
    yield
    await service.close()


async def _health_probes(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    async with _running(run_probes(gateway.settings.backends, gateway.pool,
                                   gateway.attestation, gateway.pipeline.forwarder.health)):
        yield


async def _policy_reloads(app: web.Application) -> AsyncIterator[None]:
    """Reload on SIGHUP (where this loop may own signals: the main thread) and on change."""
    policies = app[GATEWAY].policies
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(policies.reload("sighup"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # Signals belong to the main thread (tests run the app in others); Windows has no SIGHUP.
    handles_sighup = hasattr(signal, "SIGHUP") and \
        threading.current_thread() is threading.main_thread()
    if handles_sighup:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    watcher = loop.create_task(run_watcher(policies))
    yield
    watcher.cancel()
    if handles_sighup:
        loop.remove_signal_handler(signal.SIGHUP)
    for task in (watcher, *tasks):
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _metrics_sync(app: web.Application) -> AsyncIterator[None]:
    async with _running(app[GATEWAY].metrics.run_sync()):
        yield


async def _upstream_sessions(app: web.Application) -> AsyncIterator[None]:
    pool = app[GATEWAY].pool
    await pool.start()
    yield
    await pool.close()


async def list_models(request: web.Request) -> web.Response:
    """The models this caller may use, in a shape both the OpenAI and Anthropic SDKs read."""
    gateway = request.app[GATEWAY]
    caller = await gateway.pipeline.authenticator.admit(request)
    models = gateway.router.visible_models(caller)
    data = [model_object(m) for m in models]
    return web.json_response({"object": "list", "data": data, "has_more": False,
                              "first_id": models[0] if models else None,
                              "last_id": models[-1] if models else None})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    detail = readiness(gateway.settings, gateway.pool, gateway.pipeline.inspector.engine,
                       gateway.policies, gateway.pipeline.forwarder.health)
    return web.json_response(detail, status=200 if detail["status"] == "ready" else 503)


async def metrics_page(request: web.Request, *, token: bytes | None = None) -> web.Response:
    """With `metrics.token_env` set, only for `Authorization: Bearer <its value>`, compared in
    constant time; anything else is a 401 in the usual envelope."""
    if token is not None:
        given = request.headers.get(hdrs.AUTHORIZATION, "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, b"Bearer " + token):
            raise AuthenticationFailed("/metrics needs Authorization: Bearer <metrics token>.",
                                       code="invalid_metrics_token",
                                       headers={hdrs.WWW_AUTHENTICATE: "Bearer"})
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})
