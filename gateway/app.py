"""Build the aiohttp application from settings: routes, middlewares, lifecycle."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from aiohttp import web

from gateway.api import ENDPOINTS
from gateway.ingress.auth import Authenticator
from gateway.ingress.middleware import request_context
from gateway.ingress.ratelimit import RateLimiter
from gateway.observability.audit import AuditTrail
from gateway.observability.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.privacy.stage import PrivacyStage
from gateway.proxy.forward import Forwarder
from gateway.proxy.router import Router
from gateway.proxy.upstream import SessionFactory, UpstreamPool, default_session
from gateway.settings import Settings


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    metrics: Metrics
    pool: UpstreamPool
    router: Router
    pipeline: Pipeline
    audit: AuditTrail | None


GATEWAY = web.AppKey("gateway", Gateway)


def audit_path(path: str, worker: int | None) -> str:
    """With several workers each keeps its own chain: audit.jsonl -> audit.w0.jsonl, ..."""
    if worker is None:
        return path
    stem, dot, suffix = path.rpartition(".")
    return f"{stem}.w{worker}.{suffix}" if dot else f"{path}.w{worker}"


def build_app(settings: Settings, *, session_factory: SessionFactory = default_session,
              environ: Mapping[str, str] | None = None,
              worker: int | None = None) -> web.Application:
    metrics = Metrics()
    pool = UpstreamPool(settings, session_factory, environ)
    router = Router(settings)
    authenticator = Authenticator(settings, RateLimiter(), metrics)
    env = os.environ if environ is None else environ
    hash_env = settings.privacy.hash_key_env
    privacy = PrivacyStage(settings.privacy, metrics,
                           env[hash_env].encode() if hash_env else None, settings.logging) \
        if settings.privacy.enabled else None
    pipeline = Pipeline(settings, authenticator, privacy, router, Forwarder(pool, metrics),
                        metrics)
    audit = AuditTrail(audit_path(settings.audit.path, worker), settings.audit.key_file,
                       settings.audit.key_env, settings.audit.max_bytes, settings.audit.keep) \
        if settings.audit.enabled else None
    gateway = Gateway(settings, metrics, pool, router, pipeline, audit)
    app = web.Application(
        # The body limit is enforced by the pipeline with our own error; this is a backstop.
        client_max_size=settings.limits.max_body_bytes + 1,
        middlewares=[request_context(metrics=metrics, settings=settings, audit=audit)],
    )
    app[GATEWAY] = gateway
    for endpoint in ENDPOINTS:
        app.router.add_post(endpoint.path, functools.partial(pipeline.handle, endpoint=endpoint),
                            name=endpoint.name)
    app.router.add_get("/v1/models", list_models, name="models")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_page, name="metrics")
    app.cleanup_ctx.append(_upstream_sessions)
    app.cleanup_ctx.append(_detectors)
    app.cleanup_ctx.append(_audit_trail)
    return app


async def _audit_trail(app: web.Application) -> AsyncIterator[None]:
    audit = app[GATEWAY].audit
    if audit is not None:
        audit.open()
    yield
    if audit is not None:
        audit.close()


async def _detectors(app: web.Application) -> AsyncIterator[None]:
    privacy = app[GATEWAY].pipeline.privacy
    if privacy is not None:
        await privacy.engine.start()
    yield
    if privacy is not None:
        await privacy.engine.close()


async def _upstream_sessions(app: web.Application) -> AsyncIterator[None]:
    pool = app[GATEWAY].pool
    await pool.start()
    yield
    await pool.close()


async def list_models(request: web.Request) -> web.Response:
    """The models this caller may use, in a shape both the OpenAI and Anthropic SDKs read."""
    gateway = request.app[GATEWAY]
    caller = gateway.pipeline.authenticator.admit(request)
    models = gateway.router.visible_models(caller)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "veil",
             "type": "model", "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
            for m in models]
    return web.json_response({"object": "list", "data": data, "has_more": False,
                              "first_id": models[0] if models else None,
                              "last_id": models[-1] if models else None})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    privacy = gateway.pipeline.privacy
    ready = gateway.pool.started and (privacy is None or privacy.engine.ready)
    return web.json_response({"status": "ready" if ready else "starting"},
                             status=200 if ready else 503)


async def metrics_page(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})
