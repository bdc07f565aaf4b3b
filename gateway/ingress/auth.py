"""Client API keys -> tenants.

Keys are compared by their SHA-256 digest: config holds only digests, and a dictionary lookup on
the digest of a random key leaks nothing useful through timing. The client's credential is used
here and nowhere else; it is never forwarded upstream.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from aiohttp import web

from gateway.errors import AuthenticationFailed, RateLimited
from gateway.ingress.budgets import Allowance, Budgets, allowances
from gateway.ingress.ratelimit import Quota, RateLimiter
from gateway.ingress.shared_ratelimit import SharedRateLimiter
from gateway.observability.logging import bind_request_fields
from gateway.observability.metrics import Metrics
from gateway.settings import ApiKeySettings, RateLimit, Settings, TenantSettings

KEY_PREFIX = "veil-"
QUOTA = web.RequestKey("quota", Quota)  # the caller's quota, for the x-ratelimit-* headers
TOKEN_QUOTA = web.RequestKey("token_quota", Quota)  # ... and its tokens, if it counts them
# The token buckets (name, tokens per minute) a reply's usage is to be taken from.
METER = web.RequestKey("meter", tuple[tuple[str, int], ...])


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name (for logs and metrics), the tenant it belongs to, the
    models the key narrows the tenant's to (None: the tenant's) and its token budgets."""

    key_name: str
    key_hash: str
    tenant: str
    tenant_settings: TenantSettings
    models: tuple[str, ...] | None = None
    budgets: tuple[Allowance, ...] = ()

    def may_use(self, model: str) -> bool:
        return self.tenant_settings.may_use(model) and (
            self.models is None or "*" in self.models or model in self.models)


def caller_of(key: ApiKeySettings, tenant: TenantSettings) -> Caller:
    budgets = allowances("key", key.hash, tenant.budget, key.budget) + \
        allowances("tenant", _tenant_bucket(key.tenant), tenant.total_budget)
    return Caller(key.name, key.hash, key.tenant, tenant,
                  tuple(key.models) if key.models is not None else None, budgets)


def hash_api_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Authenticator:
    """Authenticate the caller, then apply its rate limits and budgets: the ingress stage's
    admission."""

    def __init__(self, settings: Settings, limiter: RateLimiter, metrics: Metrics,
                 shared: SharedRateLimiter | None = None,
                 file_keys: list[ApiKeySettings] | None = None, *,
                 budgets: Budgets | None = None) -> None:
        self._settings = settings
        self._budgets = budgets or Budgets(metrics)
        self._by_hash: dict[str, Caller] = {}
        self._limiter = limiter
        self._shared = shared  # when set (state.redis_url), limits hold across replicas
        self._metrics = metrics
        self._default_limit = settings.default_rate_limit
        # Keys already verified, so the hot path does not re-hash them; only valid keys enter,
        # and the cache is bounded by the number of configured keys.
        self._verified: dict[str, Caller] = {}
        self.use_keys(file_keys or [])

    def use_keys(self, file_keys: list[ApiKeySettings]) -> None:
        """The keys in force: config.yaml's and the keys file's. Verified keys are forgotten,
        so one just revoked stops working with the next request."""
        tenants = self._settings.tenants
        self._by_hash = {k.hash: caller_of(k, tenants[k.tenant])
                         for k in [*self._settings.api_keys, *file_keys]}
        self._verified = {}

    async def admit(self, request: web.Request) -> Caller:
        caller = self.authenticate(request)
        bind_request_fields(tenant=caller.tenant, key_name=caller.key_name)
        tenant = caller.tenant_settings
        limits = [(caller.key_hash, tenant.rate_limit or self._default_limit)]
        if tenant.total_rate_limit is not None:
            limits.append((_tenant_bucket(caller.tenant), tenant.total_rate_limit))
        try:
            request[QUOTA] = await self._take(*limits[0])
            for bucket, limit in limits[1:]:
                await self._take(bucket, limit)
            meter = tuple((bucket, limit.tokens_per_minute) for bucket, limit in limits
                          if limit.tokens_per_minute is not None)
            for bucket, per_minute in meter:
                tokens = await self._tokens_left(bucket, per_minute)
                if TOKEN_QUOTA not in request:  # the key's own when it has one, as OpenAI's
                    request[TOKEN_QUOTA] = tokens
            await self._budgets.check(caller.budgets)
        except RateLimited:
            self._metrics.rate_limited.labels(caller.tenant).inc()
            raise
        if meter:
            request[METER] = meter
        return caller

    async def spend(self, request: web.Request, caller: Caller, tokens: int) -> None:
        """Take the tokens a reply used from the buckets that admitted it, if they count
        tokens, and from the caller's budgets."""
        for bucket, per_minute in request.get(METER, ()):
            if self._shared is not None:
                await self._shared.spend_tokens(bucket, per_minute, tokens)
            else:
                self._limiter.spend_tokens(bucket, per_minute, tokens)
        await self._budgets.spend(caller.budgets, tokens)

    async def _tokens_left(self, bucket: str, per_minute: int) -> Quota:
        if self._shared is not None:
            return await self._shared.tokens_left(bucket, per_minute)
        return self._limiter.tokens_left(bucket, per_minute)

    async def _take(self, bucket: str, limit: RateLimit) -> Quota:
        if self._shared is not None:
            return await self._shared.check(bucket, limit)
        return self._limiter.check(bucket, limit)

    def authenticate(self, request: web.Request) -> Caller:
        """Accept `Authorization: Bearer` (OpenAI SDK) or `x-api-key` (Anthropic SDK)."""
        key = _presented_key(request)
        if key is None:
            raise AuthenticationFailed(
                "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
        caller = self._verified.get(key)
        if caller is None:
            caller = self._by_hash.get(hash_api_key(key))
            if caller is None:
                raise AuthenticationFailed("Invalid API key.")
            self._verified[key] = caller
        return caller


def _tenant_bucket(tenant: str) -> str:
    """A tenant's own bucket, named by a digest (Redis learns no tenant names)."""
    return "tenant:sha256:" + hashlib.sha256(tenant.encode("utf-8")).hexdigest()


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None
