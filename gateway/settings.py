"""config.yaml -> typed, validated settings.

Everything is checked at start: a gateway that would fail on its first request, or quietly run
with weaker settings than intended, must refuse to start instead. Unknown keys are errors.

Environment overrides use `VEIL__SECTION__KEY=value` (value parsed as YAML), e.g.
`VEIL__LISTEN__PORT=9000`; upstream credentials come only from the variables backends name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.errors import ConfigError, ConfigIssue
from gateway.yamlsource import YamlDocument, load_yaml, validate

WireFormat = Literal["openai", "anthropic"]
API_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_PREFIX = "VEIL__"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenSettings(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    workers: Annotated[int, Field(ge=1, le=256)] = 1


class LimitSettings(Strict):
    """Every limit has a default a production deployment can live with."""

    max_body_bytes: Annotated[int, Field(gt=0)] = 10 * 1024 * 1024
    max_response_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024
    max_concurrent_requests: Annotated[int, Field(gt=0)] = 1024
    request_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    body_read_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # Connections (gateway/ingress/connections.py): a request head (request line and headers)
    # must arrive whole within header_timeout_s, an idle keep-alive connection is closed after
    # idle_timeout_s, and a worker holds at most max_connections open connections,
    # max_connections_per_client of them from one client address.
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    idle_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    max_connections: Annotated[int, Field(gt=0)] = 4096
    max_connections_per_client: Annotated[int, Field(gt=0)] = 256
    shutdown_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # in-flight work finishes, or is cut


class RateLimit(Strict):
    requests_per_second: Annotated[float, Field(gt=0)]
    burst: Annotated[int, Field(ge=1)]
    # Tokens (as the upstream counts them in `usage`) per minute: a request is admitted while
    # any are left, and what its reply used is taken afterwards.
    tokens_per_minute: Annotated[int, Field(gt=0)] | None = None


class Budget(Strict):
    """Tokens (as the upstream counts them in `usage`) per calendar day and/or month, in UTC:
    a request is admitted while any are left, and what its reply used is taken afterwards."""

    tokens_per_day: Annotated[int, Field(gt=0)] | None = None
    tokens_per_month: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _some_period(self) -> Budget:
        if self.tokens_per_day is None and self.tokens_per_month is None:
            raise ValueError("a budget needs tokens_per_day or tokens_per_month")
        return self


class TenantSettings(Strict):
    models: list[str] = Field(default_factory=lambda: ["*"])
    rate_limit: RateLimit | None = None  # for each of the tenant's keys
    total_rate_limit: RateLimit | None = None  # for all of the tenant's keys together
    budget: Budget | None = None  # for each of the tenant's keys
    total_budget: Budget | None = None  # for all of the tenant's keys together

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class ApiKeySettings(Strict):
    """A client key, stored only as `sha256:<hex>` (keys are random, so a fast hash suffices).
    `models` and `budget` narrow what its tenant allows (a key never widens them): the models
    both list, and per period the smaller of the key's and the tenant's per-key budget."""

    name: str
    hash: str
    tenant: str
    models: list[str] | None = None
    budget: Budget | None = None

    def widens(self, tenant: TenantSettings) -> list[str]:
        """The models this key lists that its tenant may not use (config errors)."""
        return [m for m in self.models or () if m != "*" and not tenant.may_use(m)]

    @field_validator("hash")
    @classmethod
    def _hash_format(cls, value: str) -> str:
        if not API_KEY_HASH.match(value):
            raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits "
                             "(make one with `veil apikey new`)")
        return value


class BackendAttestation(Strict):
    """Evidence this backend must present (gateway/attestation). Its URL is the backend's own
    origin plus `evidence_path`, so the evidence comes over the TLS connection it binds."""

    evidence_path: str = "/.well-known/veil-attestation"
    refresh_s: Annotated[float, Field(ge=1)] = 300.0  # re-attest this often (and on key change)
    timeout_s: Annotated[float, Field(gt=0)] = 10.0


class HealthCheck(Strict):
    """An active probe: GET `path` on the backend every `interval_s`; a failed probe ejects the
    backend until one succeeds. Off by default: passive health (real requests) needs no
    traffic of its own, and some upstreams bill or rate-limit every call."""

    path: str = "/health"
    interval_s: Annotated[float, Field(ge=0.1)] = 10.0
    timeout_s: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not re.match(r"^/[A-Za-z0-9._~/-]*$", value):
            raise ValueError("must be a path starting with '/', without query or fragment")
        return value


class BackendSettings(Strict):
    name: str
    url: str
    format: WireFormat = "openai"
    api_key_env: str | None = None
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    pool_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    weight: Annotated[int, Field(ge=1, le=1000)] = 1  # share of traffic (weighted, least_busy)
    health_check: HealthCheck | None = None
    attestation: BackendAttestation | None = None

    @model_validator(mode="after")
    def _attested_over_tls(self) -> BackendSettings:
        if self.attestation is not None and not self.url.startswith("https://"):
            raise ValueError("an attested backend needs an https:// url (evidence is bound to "
                             "its TLS key)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        return value.rstrip("/")


class StateSettings(Strict):
    """The optional shared store (Redis, or a protocol-compatible server such as Valkey).
    Without `redis_url` every worker keeps its own state, as a single process needs."""

    redis_url: str | None = None  # redis://[user:password@]host:port/db, rediss:// for TLS
    timeout_s: Annotated[float, Field(gt=0, le=10)] = 0.25
    # Redis unreachable: rate limits and budgets counted in each process (local), or 503.
    rate_limits_on_failure: Literal["local", "closed"] = "local"
    # The secret every replica holds to seal stored-response mappings in Redis (at least 32
    # characters); without it stored responses stay in each process. With it, attestation is
    # shared too: evidence a replica received (sealed, re-verified by whoever adopts it) and
    # AMD KDS / Intel PCS collateral (gateway/state/shared_attestation.py).
    vault_key_env: str | None = None

    @model_validator(mode="after")
    def _vault_needs_store(self) -> StateSettings:
        if self.vault_key_env and not self.redis_url:
            raise ValueError("vault_key_env needs redis_url (the vault lives in Redis)")
        return self

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(redis|rediss|unix)://\S+$", value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class RoutingSettings(Strict):
    """How a model's backends share its traffic and when one is left alone.

    `balance`: `ordered` tries them in the order `models` lists them (a primary and its
    fallbacks); `weighted` spreads requests at random in proportion to `weight`; `least_busy`
    picks the one with the fewest requests in flight per unit of weight.
    A backend failing `eject_after_failures` times in a row (connection errors, timeouts, 5xx)
    is skipped for `eject_for_s`, then tried again: one more failure ejects it again. A 429 or
    a 503 with `Retry-After` leaves it alone for that long (at most `max_retry_after_s`).
    Failover draws on a retry budget: retries may add `retry_budget_ratio` of the requests
    (plus `retry_budget_min_per_s`), so an outage cannot multiply the load on what is left.
    """

    balance: Literal["ordered", "weighted", "least_busy"] = "ordered"
    eject_after_failures: Annotated[int, Field(ge=1)] = 5
    eject_for_s: Annotated[float, Field(gt=0)] = 30.0
    max_retry_after_s: Annotated[float, Field(gt=0)] = 60.0
    retry_budget_ratio: Annotated[float, Field(ge=0, le=10)] = 0.2
    retry_budget_min_per_s: Annotated[float, Field(ge=0)] = 10.0
    # The model whose backends hold conversations (OpenAI's Conversations API names no model
    # when one is created); None: the Conversations API and Responses' `conversation` refused.
    conversations_model: str | None = None


class PrivacySettings(Strict):
    """How detection runs; what is detected and what happens to it is the policies' business."""

    # Processes running spaCy NER beside the event loop; "auto": one per core.
    ner_workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    ner_start_timeout_s: Annotated[float, Field(gt=0)] = 120.0  # ready by then, or refuse
    ner_worker_max_rss_mb: Annotated[int, Field(ge=256)] = 1536  # recycled past this
    hash_key_env: str | None = None  # the secret behind the `hash` action (per-tenant HMAC)
    # Beta names forwarded in `anthropic-beta` / `OpenAI-Beta` beyond the ones Veil knows.
    allowed_betas: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_=.-]{0,99}$")]] = \
        Field(default_factory=list)
    # Stored Responses (`store: true`): who owns each, and its placeholder mapping, kept
    # encrypted in memory this long, for reading it back and continuing it.
    stored_response_ttl_s: Annotated[float, Field(gt=0)] = 24 * 3600.0
    stored_responses_max: Annotated[int, Field(ge=1)] = 100_000
    # Conversations (`/v1/conversations`): whose each is and its placeholder mapping, kept
    # encrypted this long after it was last used (the upstream keeps them until deleted).
    conversation_ttl_s: Annotated[float, Field(gt=0)] = 30 * 24 * 3600.0


class PolicySettings(Strict):
    """Which policy files decide. The first whose `applies_to` matches a request decides it;
    a request no policy applies to is refused. Paths are relative to the working directory."""

    files: list[str] = Field(min_length=1)
    require_signed_policies: bool = False
    public_key_file: str | None = None  # Ed25519 key that verifies the `.sig` files
    watch_interval_s: Annotated[float, Field(ge=0)] = 2.0  # 0: reload on SIGHUP only

    @model_validator(mode="after")
    def _key_for_signatures(self) -> PolicySettings:
        if self.require_signed_policies and not self.public_key_file:
            raise ValueError("require_signed_policies needs public_key_file")
        return self


class AuditSettings(Strict):
    """The tamper-evident audit trail (gateway/observability/audit.py)."""

    enabled: bool = False
    path: str = "var/audit.jsonl"
    key_env: str | None = None  # the HMAC key from this environment variable ...
    key_file: str | None = None  # ... or from this file (veil quickstart creates one)
    max_bytes: Annotated[int, Field(ge=4096)] = 50 * 1024 * 1024
    keep: Annotated[int, Field(ge=1, le=1000)] = 10
    # This replica's name in its chain's file name (audit.<replica>.jsonl), so replicas sharing
    # a volume keep one chain each; e.g. VEIL__AUDIT__REPLICA=$HOSTNAME.
    replica: str | None = None

    @field_validator("replica")
    @classmethod
    def _replica(cls, value: str | None) -> str | None:
        if value is not None and not NAME.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _key_source(self) -> AuditSettings:
        if self.enabled and not (self.key_env or self.key_file):
            raise ValueError("audit needs key_env or key_file")
        return self


class AttestationSettings(Strict):
    # Folder of AMD roots (amd_<product>.pem: ASK then ARK; amd_<product>_vlek.pem: ASVK then
    # ARK) replacing the ones shipped with the package: for an operator to rotate roots or add
    # a VLEK chain ahead of a release. (Tests pass their private roots to the service instead.)
    amd_roots_dir: str | None = None
    # Intel collateral saved from PCS (tcb_info_<fmspc>.json, qe_identity.json, chains, CRLs),
    # for TDX backends that send only their quote: fully offline verification.
    intel_collateral_dir: str | None = None
    # Where to fetch what evidence does not carry (VCEKs; TDX TCB Info, QE Identity, CRLs),
    # cached on disk; null: never fetch.
    amd_kds_url: str | None = "https://kdsintf.amd.com"
    intel_pcs_url: str | None = "https://api.trustedservices.intel.com"
    cache_dir: str | None = "var/attestation-cache"


class ScorerEndpoint(Strict):
    name: str
    url: str
    timeout_s: Annotated[float, Field(gt=0)] = 2.0


class FheSettings(Strict):
    """Encrypted semantic scoring (gateway/fhe): where the CKKS secret key is kept, sealed under
    a master key, and which scorers policies may name."""

    keys_dir: str = "var/fhe-keys"
    # Where the sealed epochs are kept: `dir` (keys_dir, this replica's own) or `redis`
    # (state.redis_url, one epoch for every replica; `veil keys init` imports keys_dir).
    keys_in: Literal["dir", "redis"] = "dir"
    master_key_env: str | None = None
    master_key_file: str | None = None
    scorers: list[ScorerEndpoint] = Field(default_factory=list)
    # Embeddings from an attested backend's /v1/embeddings instead of the local model: the
    # backend must have `attestation` (requests are pinned to its attested key) and serve
    # 384-dim vectors, the space the scorer's models were built in.
    embedding_backend: str | None = None
    embedding_model: str | None = None

    @model_validator(mode="after")
    def _master_key(self) -> FheSettings:
        if self.scorers and not (self.master_key_env or self.master_key_file):
            raise ValueError("scorers need master_key_env or master_key_file (the key that "
                             "seals the CKKS secret key at rest)")
        return self


class LoggingSettings(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    # With a key, redaction markers carry `:h=<hmac>` so equal values can be correlated.
    correlation_key_env: str | None = None


class Settings(Strict):
    listen: ListenSettings = ListenSettings()
    limits: LimitSettings = LimitSettings()
    logging: LoggingSettings = LoggingSettings()
    audit: AuditSettings = AuditSettings()
    attestation: AttestationSettings = AttestationSettings()
    fhe: FheSettings = FheSettings()
    default_rate_limit: RateLimit = RateLimit(requests_per_second=50, burst=100)
    routing: RoutingSettings = RoutingSettings()
    state: StateSettings = StateSettings()
    privacy: PrivacySettings = PrivacySettings()
    policies: PolicySettings
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    # More keys, in a file of their own that is reloaded on change (add and revoke without a
    # restart); checked every api_keys_watch_interval_s (0: read at start only).
    api_keys_file: str | None = None
    api_keys_watch_interval_s: Annotated[float, Field(ge=0)] = 2.0
    backends: list[BackendSettings]
    models: dict[str, list[str]]

    @model_validator(mode="after")
    def _references(self) -> Settings:
        problems: list[str] = []
        backend_names = [b.name for b in self.backends]
        dupes = sorted({n for n in backend_names if backend_names.count(n) > 1})
        if dupes:
            problems.append(f"backends: duplicate names {dupes}")
        for model, names in self.models.items():
            if not names:
                problems.append(f"models.{model}: needs at least one backend")
            problems += [f"models.{model}: unknown backend {n!r} (known: {backend_names})"
                         for n in names if n not in backend_names]
        conversations = self.routing.conversations_model
        if conversations is not None and conversations not in self.models:
            problems.append(f"routing.conversations_model: {conversations!r} is not in models")
        fhe_backend = self.fhe.embedding_backend
        if fhe_backend is not None and not any(b.name == fhe_backend and b.attestation
                                               for b in self.backends):
            problems.append(f"fhe.embedding_backend: {fhe_backend!r} must be a backend with "
                            "attestation (embeddings are as sensitive as the prompt)")
        if self.fhe.keys_in == "redis" and not self.state.redis_url:
            problems.append("fhe.keys_in: redis needs state.redis_url (the epochs live there)")
        for key in self.api_keys:
            if key.tenant not in self.tenants:
                problems.append(f"api_keys: key {key.name!r} names unknown tenant {key.tenant!r}")
            elif key.widens(self.tenants[key.tenant]):
                problems.append(f"api_keys: key {key.name!r} lists models its tenant may not "
                                f"use: {key.widens(self.tenants[key.tenant])}")
        hashes = [k.hash for k in self.api_keys]
        if len(set(hashes)) != len(hashes):
            problems.append("api_keys: the same key hash is listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def backend(self, name: str) -> BackendSettings:
        return next(b for b in self.backends if b.name == name)


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, override from the environment, validate; raise `ConfigError` listing every issue.
    Parses and validates only: the policies, plugins and keys the settings name are read by
    `gateway.preflight`, which `veil serve` runs."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError([ConfigIssue(doc.file, None, "", "top level must be a mapping")])
    _apply_env_overrides(doc, os.environ if environ is None else environ)
    settings = validate(doc, Settings)
    _check_credentials(doc, settings, os.environ if environ is None else environ)
    return settings


def _apply_env_overrides(doc: YamlDocument, environ: Mapping[str, str]) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        target: Any = doc.data
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError([ConfigIssue(f"${name}", None, ".".join(keys),
                                               "cannot override inside a non-mapping value")])
        try:
            target[keys[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError([ConfigIssue(f"${name}", None, ".".join(keys),
                                           "value is not valid YAML")]) from None


def _check_credentials(doc: YamlDocument, settings: Settings, environ: Mapping[str, str]) -> None:
    """A backend that names a credential variable must get it: never fall back to no auth."""
    issues = [
        ConfigIssue(doc.file, doc.position(("backends", i, "api_key_env")),
                    f"backends[{i}].api_key_env",
                    f"environment variable {b.api_key_env} is not set or empty")
        for i, b in enumerate(settings.backends)
        if b.api_key_env and not environ.get(b.api_key_env)
    ]
    secrets = ((("logging", "correlation_key_env"), settings.logging.correlation_key_env, 16),
               (("privacy", "hash_key_env"), settings.privacy.hash_key_env, 16),
               (("state", "vault_key_env"), settings.state.vault_key_env, 32))
    for field_path, env_name, least in secrets:
        if env_name and len(environ.get(env_name, "")) < least:
            issues.append(ConfigIssue(doc.file, doc.position(field_path), ".".join(field_path),
                                      f"environment variable {env_name} must hold at least "
                                      f"{least} characters of secret"))
    if issues:
        raise ConfigError(issues)
