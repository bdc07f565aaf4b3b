"""config.yaml -> typed, validated settings.

Everything is checked at start: a gateway that would fail on its first request, or quietly run
with weaker settings than intended, must refuse to start instead. Unknown keys are errors.

Environment overrides use `VEIL__SECTION__KEY=value` (value parsed as YAML), e.g.
`VEIL__LISTEN__PORT=9000`; upstream credentials come only from the variables backends name.
An error in an overridden value is reported as coming from its variable.

Relative paths (`PATH_SETTINGS`), in the file or in an override, are relative to the config
file's folder, so `veil serve --config /etc/veil/config.yaml` means the same from any working
directory. Settings built in code (`Settings.model_validate`) have no file: their paths are used
as given, relative to the working directory.

`veil config schema` prints the JSON Schema of this format (checked in as config.schema.json).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.errors import ConfigError, ConfigIssue, ConfigProblems
from gateway.keys.release import KeyName as ReleasedKey
from gateway.yamlsource import KeyPath, YamlDocument, load_yaml, validate

WireFormat = Literal["openai", "anthropic"]  # what a client speaks to an endpoint
# What a backend speaks: azure-openai is OpenAI's wire format behind Azure's paths and key.
BackendFormat = Literal["openai", "anthropic", "azure-openai"]
API_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_PREFIX = "VEIL__"
UPSTREAM_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")  # vLLM's org/name too
AZURE_API_VERSION = re.compile(r"^20\d\d-[01]\d-[0-3]\d(-preview)?$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an RFC 9110 token
# Printable ASCII, no blank at either end: nothing aiohttp would refuse or a peer fold.
HEADER_VALUE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,4094}[\x21-\x7e])?$")
# A key's label in the token (CKA_LABEL); each version of it is one object, CKA_ID its number.
HsmLabel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
# Set by the gateway itself (credentials, framing, its request id) or vetted from the client.
GATEWAY_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "host", "content-length",
                             "content-type", "accept", "accept-encoding", "user-agent",
                             "x-veil-request-id", "anthropic-version", "anthropic-beta",
                             "openai-beta"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def one_source(*options: tuple[KeyPath, str | None]) -> list[tuple[KeyPath, str]]:
    """One secret, one place: more than one of its options set is an error at each extra."""
    given = [where for where, value in options if value]
    return [(where, f"only one of {', '.join(str(w[-1]) for w, _ in options)} (also "
                    f"{given[0][-1]})") for where in given[1:]]



class ListenSettings(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    # Serve HTTPS with this certificate chain and key (PEM); unset: plain HTTP (behind a TLS
    # front end). Needed by self_attestation: its evidence binds this certificate's key.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @model_validator(mode="after")
    def _cert_and_key(self) -> ListenSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


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
    traffic of its own, and some upstreams bill or rate-limit every call. Without a path:
    `/health`, or `/openai/models` on azure-openai (which has no health route); azure-openai
    probes carry its api-version, except on its v1 API (`/openai/v1/...`)."""

    path: str | None = None
    interval_s: Annotated[float, Field(ge=0.1)] = 10.0
    timeout_s: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^/[A-Za-z0-9._~/-]*$", value):
            raise ValueError("must be a path starting with '/', without query or fragment")
        return value


class HeaderValue(Strict):
    """A static header's value: from an environment variable (read at start, for anything
    secret) or written here (only for what is not). Never logged either way."""

    env: str | None = None
    value: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> HeaderValue:
        if (self.env is None) == (self.value is None):
            raise ValueError("give exactly one of env (a variable's name) or value")
        if self.value is not None and not HEADER_VALUE.match(self.value):
            raise ValueError("value must be printable ASCII, without blanks at either end")
        return self


class BackendSettings(Strict):
    name: str
    url: str
    format: BackendFormat = "openai"
    api_key_env: str | None = None
    # azure-openai only, and required there: the api-version of its deployment routes.
    api_version: str | None = None
    # Client model -> the name this backend knows it by (azure-openai: the deployment); the
    # client sees its own name back in replies.
    upstream_models: dict[str, str] = Field(default_factory=dict)
    # Sent with every request to this backend, e.g. OpenAI-Organization: {env: OPENAI_ORG}.
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    pool_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    weight: Annotated[int, Field(ge=1, le=1000)] = 1  # share of traffic (weighted, least_busy)
    health_check: HealthCheck | None = None
    attestation: BackendAttestation | None = None

    @model_validator(mode="after")
    def _attested_over_tls(self) -> BackendSettings:
        if self.attestation is not None and not self.url.startswith("https://"):
            raise ConfigProblems([(("url",), "an attested backend needs an https:// url "
                                             "(evidence is bound to its TLS key)")])
        return self

    @model_validator(mode="after")
    def _azure(self) -> BackendSettings:
        if self.format != "azure-openai":
            if self.api_version is not None:
                raise ValueError("api_version is for format: azure-openai only")
            return self
        if self.api_version is None or not AZURE_API_VERSION.match(self.api_version):
            raise ValueError("format: azure-openai needs api_version, a date such as "
                             "2024-10-21 (or 2025-04-01-preview)")
        if re.search(r"/openai(/|$)", self.url):
            raise ValueError("an azure-openai url is the resource's endpoint "
                             "(https://NAME.openai.azure.com), without /openai/...")
        bad = [m for m, d in self.upstream_models.items() if not NAME.match(d)]
        if bad:
            raise ValueError(f"upstream_models {bad}: an Azure deployment name is 1-64 letters, "
                             "digits, '.', '_' or '-'")
        return self

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_as_written(cls, value: object) -> object:
        """`api_version: 2024-10-21` unquoted is a YAML date: the date as written."""
        return value.isoformat() if isinstance(value, datetime.date) else value

    @field_validator("upstream_models")
    @classmethod
    def _upstream_models(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [m for m, name in value.items() if not UPSTREAM_MODEL.match(name)]
        if bad:
            raise ValueError(f"{bad}: an upstream model name is 1-256 letters, digits or "
                             "'._:/@+-'")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, HeaderValue]) -> dict[str, HeaderValue]:
        names = [n.lower() for n in value]
        for name in value:
            if not HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name (letters, digits, "
                                 "!#$%&'*+.^_`|~-)")
            if name.lower() in HOP_BY_HOP:
                raise ValueError(f"{name!r} is a hop-by-hop header (per connection, not per "
                                 "backend)")
            if name.lower() in GATEWAY_HEADERS:
                raise ValueError(f"{name!r} is set by the gateway itself (credentials come from "
                                 "api_key_env; protocol headers are vetted from the client)")
            if names.count(name.lower()) > 1:
                raise ValueError(f"{name!r} is given twice (header names ignore case)")
        return value

    @property
    def wire(self) -> WireFormat:
        """The wire format it serves clients in: azure-openai serves the OpenAI endpoints."""
        return "anthropic" if self.format == "anthropic" else "openai"

    def upstream_model(self, model: str) -> str:
        return self.upstream_models.get(model, model)

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
    vault_key_hsm_label: HsmLabel | None = None  # ... or derived by this key in the `hsm` token

    @model_validator(mode="after")
    def _vault_needs_store(self) -> StateSettings:
        problems = one_source((("vault_key_env",), self.vault_key_env),
                              (("vault_key_hsm_label",), self.vault_key_hsm_label))
        if (self.vault_key_env or self.vault_key_hsm_label) and not self.redis_url:
            problems.append((("vault_key_env",) if self.vault_key_env
                             else ("vault_key_hsm_label",),
                             "needs redis_url (the vault lives in Redis)"))
        if problems:
            raise ConfigProblems(problems)
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
    hash_key_hsm_label: HsmLabel | None = None  # ... or this key in the `hsm` token

    @model_validator(mode="after")
    def _one_hash_key(self) -> PrivacySettings:
        problems = one_source((("hash_key_env",), self.hash_key_env),
                              (("hash_key_hsm_label",), self.hash_key_hsm_label))
        if problems:
            raise ConfigProblems(problems)
        return self

    @property
    def has_hash_key(self) -> bool:
        return bool(self.hash_key_env or self.hash_key_hsm_label)
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
    a request no policy applies to is refused. Paths are relative to the config file's folder."""

    files: list[str] = Field(min_length=1)
    require_signed_policies: bool = False
    public_key_file: str | None = None  # Ed25519 key that verifies the `.sig` files
    watch_interval_s: Annotated[float, Field(ge=0)] = 2.0  # 0: reload on SIGHUP only

    @model_validator(mode="after")
    def _key_for_signatures(self) -> PolicySettings:
        if self.require_signed_policies and not self.public_key_file:
            raise ConfigProblems([(("require_signed_policies",), "needs public_key_file")])
        return self


class AuditSettings(Strict):
    """The tamper-evident audit trail (gateway/observability/audit.py)."""

    enabled: bool = False
    path: str = "var/audit.jsonl"
    key_env: str | None = None  # the HMAC key from this environment variable ...
    key_file: str | None = None  # ... or from this file (veil quickstart creates one)
    key_hsm_label: HsmLabel | None = None  # ... or this key in the `hsm` token, MACs made there
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
        problems = one_source((("key_env",), self.key_env), (("key_file",), self.key_file),
                              (("key_hsm_label",), self.key_hsm_label))
        if problems:
            raise ConfigProblems(problems)
        return self


class OcspResponder(Strict):
    """How one OCSP responder (by the URL certificates name in their AIA) is asked. GET (RFC
    6960 A.1) has no nonce, so one certificate is always one URL; POST sends the request as
    the body, with a fresh nonce the response must echo when `nonce` is set."""

    method: Literal["get", "post"] = "post"
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # else the AIA's URL
    nonce: bool = True

    @model_validator(mode="after")
    def _nonce_needs_post(self) -> OcspResponder:
        if self.method == "get" and self.nonce:
            raise ValueError("a nonce needs method: post (a GET request carries none)")
        return self


# NVIDIA's SDK asks its OCSP service by POST over HTTPS, with a 32-byte nonce.
NVIDIA_OCSP = {"http://ocsp.ndis.nvidia.com": OcspResponder(
    method="post", url="https://ocsp.ndis.nvidia.com/", nonce=True)}


class AttestationSettings(Strict):
    # Folder of AMD roots (amd_<product>.pem: ASK then ARK; amd_<product>_vlek.pem: ASVK then
    # ARK) replacing the ones shipped with the package: for an operator to rotate roots or add
    # a VLEK chain ahead of a release. (Tests pass their private roots to the service instead.)
    # The ARK's CRLs saved from AMD KDS may be kept there too (amd_<product>.crl,
    # amd_<product>_vlek.crl, DER): used instead of fetching them, still checked.
    amd_roots_dir: str | None = None
    # Intel collateral saved from PCS (tcb_info_<fmspc>.json, qe_identity.json, chains, CRLs),
    # for TDX backends that send only their quote: fully offline verification.
    intel_collateral_dir: str | None = None
    # Where to fetch what evidence does not carry (VCEKs, the ARK's CRLs; TDX TCB Info, QE
    # Identity, CRLs), cached on disk; null: never fetch (SEV-SNP then needs the CRL files).
    amd_kds_url: str | None = "https://kdsintf.amd.com"
    intel_pcs_url: str | None = "https://api.trustedservices.intel.com"
    cache_dir: str | None = "var/attestation-cache"
    # OCSP responders asked other than by GET to the AIA's URL (the default for any not here).
    ocsp_responders: dict[str, OcspResponder] = Field(default_factory=lambda: dict(NVIDIA_OCSP))


class SelfAttestationSettings(Strict):
    """The gateway's own evidence for its clients (gateway/attestation/self_evidence.py): its
    SEV-SNP or TDX report from the kernel's configfs-tsm, bound to the client's nonce, the key
    of `listen.tls_cert_file` and the policies in force, at GET
    /.well-known/veil-attestation. Off by default (the path is then a 404); when on, a gateway
    with no `tsm_root` (not in a confidential VM) refuses to start. `key_release` makes its
    reports through the same platform settings (tsm_root, vcek_file, intel_collateral_dir),
    whether or not `enabled`."""

    enabled: bool = False
    tsm_root: str = "/sys/kernel/config/tsm/report"
    vcek_file: str | None = None  # SNP: when the host puts no certificate table in auxblob
    intel_collateral_dir: str | None = None  # TDX: Intel PCS collateral sent with the quote


class KeyReleaseSettings(Strict):
    """Attested key release (gateway/keys/released.py): at start, before anything uses a key,
    the gateway proves itself to `veil keys serve` with its own SEV-SNP or TDX evidence (the
    platform `self_attestation` names: tsm_root, vcek_file, intel_collateral_dir), bound to
    the service's nonce, the key of `listen.tls_cert_file` and an ephemeral key, and receives
    the `keys` named here into memory only. Refused, unreachable, or no evidence: no start."""

    url: Annotated[str, Field(pattern=r"^https://[^/?#\s]+/?$")]  # the key service's origin
    ca_file: str | None = None  # the CA its TLS certificate must chain to (None: the system's)
    # The service's identity (X25519 public key, base64, as `veil keys seal` prints it): only
    # the holder of its private half can make a reply that opens, whoever terminates TLS.
    service_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
    keys: list[ReleasedKey] = Field(min_length=1)
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0

    @field_validator("keys")
    @classmethod
    def _distinct(cls, value: list[ReleasedKey]) -> list[ReleasedKey]:
        if len(set(value)) != len(value):
            raise ValueError("each key once")
        return value


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
    master_key_hsm_label: HsmLabel | None = None  # ... or this AES key in the `hsm` token
    scorers: list[ScorerEndpoint] = Field(default_factory=list)
    # Embeddings from an attested backend's /v1/embeddings instead of the local model: the
    # backend must have `attestation` (requests are pinned to its attested key) and serve
    # 384-dim vectors, the space the scorer's models were built in.
    embedding_backend: str | None = None
    embedding_model: str | None = None
    # The gateway's own embedder: `minilm` (the model itself, ~0.4 ms a token, the better
    # judge: AUC 0.998 against 0.984 on tests/bench/paraphrases.yaml) or `static` (a table
    # distilled from MiniLM, ~100x faster; kept in embedder_cache_dir, built by `veil scorer
    # distill` or at first start; its cosines run lower, so thresholds differ). The scorer's
    # models must be built with the same one (`veil scorer build --embedder`); a mismatch is
    # refused. minilm stays the default so existing models and thresholds keep their meaning.
    embedder: Literal["static", "minilm"] = "minilm"
    embedder_cache_dir: str = "var/fhe-embedder"
    # The whole prompt is scored in windows of `chunk_tokens` (MiniLM's 128-token training
    # length: at 256 a protected paragraph among filler scores far lower), neighbours sharing
    # `chunk_overlap_tokens`. A prompt needing more than `max_chunks` windows is refused
    # (per the policy's fail_mode.scorer), never scored on a part of itself.
    chunk_tokens: Annotated[int, Field(ge=16, le=256)] = 128
    chunk_overlap_tokens: Annotated[int, Field(ge=0, le=64)] = 16
    max_chunks: Annotated[int, Field(ge=1, le=1024)] = 64
    # Queries for one (scorer, model) arriving within `batch_window_ms` share one encrypted
    # pass, up to `max_batch` a ciphertext (gateway/fhe/batching.py); 0: a request's own
    # windows are packed together, never with another request's.
    batch_window_ms: Annotated[float, Field(ge=0, le=100)] = 2.0
    max_batch: Annotated[int, Field(ge=1, le=8)] = 8

    @model_validator(mode="after")
    def _master_key(self) -> FheSettings:
        problems = one_source((("master_key_env",), self.master_key_env),
                              (("master_key_file",), self.master_key_file),
                              (("master_key_hsm_label",), self.master_key_hsm_label))
        if problems:
            raise ConfigProblems(problems)
        if self.master_key_hsm_label and self.keys_in == "redis":
            raise ConfigProblems([(("master_key_hsm_label",), "works with keys_in: dir only "
                                   "(the shared store seals with a key held in memory)")])
        if 2 * self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ConfigProblems([(("chunk_overlap_tokens",), "must be under half of "
                                                              "chunk_tokens")])
        return self


class LoggingSettings(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    # With a key, redaction markers carry `:h=<hmac>` so equal values can be correlated.
    correlation_key_env: str | None = None


class MetricsSettings(Strict):
    """/metrics (Prometheus). With `token_env`, scrapers must send `Authorization: Bearer
    <the variable's value>` (16+ characters; else 401); without, /metrics is open: bind the
    gateway to loopback or a private network."""

    token_env: str | None = None


class TracingSettings(Strict):
    """OpenTelemetry traces (gateway/observability/tracing.py), exported over OTLP/HTTP. Off by
    default: nothing is exported and a client's `traceparent` is neither continued nor
    forwarded. Spans carry names and counts from configuration only, never request content."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # the collector's OTLP/HTTP traces URL
    service_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = "veil"
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0  # of traces, by trace id
    # Headers for the collector (its credential, say), as `name=value,name2=value2` in this
    # environment variable: never in the config file.
    headers_env: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0  # for one export

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        return value


class HsmSettings(Strict):
    """A PKCS#11 token (an HSM, a cloud HSM or KMS's PKCS#11 library, SoftHSM2) holding the keys
    that `*_hsm_label` settings name (gateway/keys/token.py). The PIN comes from `pin_env` only:
    a PIN in the file would be one more secret readable on the host."""

    module: str  # the vendor's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
    token_label: str | None = None  # the token, by label ...
    slot: Annotated[int, Field(ge=0)] | None = None  # ... or by slot id
    pin_env: str  # the user PIN, from this environment variable

    @model_validator(mode="after")
    def _one_token(self) -> HsmSettings:
        if (self.token_label is None) == (self.slot is None):
            raise ConfigProblems([(("token_label",), "give token_label or slot (one of them)")])
        return self


class Settings(Strict):
    """Veil gateway configuration (config.yaml). Unknown keys are errors; any value can be
    overridden from the environment as VEIL__SECTION__KEY; relative paths are relative to the
    config file's folder."""

    listen: ListenSettings = ListenSettings()
    metrics: MetricsSettings = MetricsSettings()
    limits: LimitSettings = LimitSettings()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()
    audit: AuditSettings = AuditSettings()
    attestation: AttestationSettings = AttestationSettings()
    self_attestation: SelfAttestationSettings = SelfAttestationSettings()
    fhe: FheSettings = FheSettings()
    hsm: HsmSettings | None = None
    key_release: KeyReleaseSettings | None = None
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
        problems = self._backend_problems() + self._upstream_models() + self._key_problems()
        conversations = self.routing.conversations_model
        if conversations is not None and conversations not in self.models:
            problems.append((("routing", "conversations_model"),
                             f"{conversations!r} is not in models"))
        fhe_backend = self.fhe.embedding_backend
        if fhe_backend is not None and not any(b.name == fhe_backend and b.attestation
                                               for b in self.backends):
            problems.append((("fhe", "embedding_backend"),
                             f"{fhe_backend!r} must be a backend with attestation (embeddings "
                             "are as sensitive as the prompt)"))
        if self.self_attestation.enabled and self.listen.tls_cert_file is None:
            problems.append((("self_attestation", "enabled"),
                             "needs listen.tls_cert_file (the evidence binds its key)"))
        if self.fhe.keys_in == "redis" and not self.state.redis_url:
            problems.append((("fhe", "keys_in"),
                             "redis needs state.redis_url (the epochs live there)"))
        if self.hsm is None:
            problems += [(where, "needs the hsm section (the token holding the key)")
                         for where, label in self.hsm_labels().items() if label]
        problems += self._secret_sources()
        if problems:
            raise ConfigProblems(problems)
        return self

    def released(self, secret: ReleasedKey) -> bool:
        """Whether the key service releases this secret (key_release.keys)."""
        return self.key_release is not None and secret in self.key_release.keys

    def _secret_sources(self) -> list[tuple[KeyPath, str]]:
        """A secret that is needed has a source, and a released one no other."""
        audit, fhe, state = self.audit, self.fhe, self.state
        others: dict[ReleasedKey, tuple[KeyPath, ...]] = {
            "audit": tuple(("audit", k) for k in ("key_env", "key_file", "key_hsm_label")
                           if getattr(audit, k)),
            "hash": tuple(("privacy", k) for k in ("hash_key_env", "hash_key_hsm_label")
                          if getattr(self.privacy, k)),
            "vault": tuple(("state", k) for k in ("vault_key_env", "vault_key_hsm_label")
                           if getattr(state, k)),
            "fhe": tuple(("fhe", k) for k in ("master_key_env", "master_key_file",
                                              "master_key_hsm_label") if getattr(fhe, k))}
        problems: list[tuple[KeyPath, str]] = []
        if audit.enabled and not (others["audit"] or self.released("audit")):
            problems.append((("audit", "enabled"), "audit needs key_env, key_file, "
                                                   "key_hsm_label or key_release.keys: [audit]"))
        if fhe.scorers and not (others["fhe"] or self.released("fhe")):
            problems.append((("fhe", "scorers"), "scorers need master_key_env, master_key_file, "
                                                 "master_key_hsm_label or key_release.keys: "
                                                 "[fhe] (the key that seals the CKKS secret key "
                                                 "at rest)"))
        if self.key_release is None:
            return problems
        if self.listen.tls_cert_file is None:
            problems.append((("key_release", "url"), "needs listen.tls_cert_file (the evidence "
                                                     "binds its key)"))
        for i, secret in enumerate(self.key_release.keys):
            problems += [(where, f"{secret} is released by the key service (key_release.keys"
                                 f"[{i}]): one source only") for where in others[secret]]
        if self.released("vault") and not state.redis_url:
            problems.append((("key_release", "keys"), "vault needs state.redis_url (the vault "
                                                      "lives in Redis)"))
        return problems

    def hsm_labels(self) -> dict[KeyPath, str | None]:
        """Every secret that may live in the token, by its setting."""
        return {("audit", "key_hsm_label"): self.audit.key_hsm_label,
                ("privacy", "hash_key_hsm_label"): self.privacy.hash_key_hsm_label,
                ("fhe", "master_key_hsm_label"): self.fhe.master_key_hsm_label,
                ("state", "vault_key_hsm_label"): self.state.vault_key_hsm_label}

    def _backend_problems(self) -> list[tuple[KeyPath, str]]:
        """Backend names are unique, and every model names known ones."""
        names = [b.name for b in self.backends]
        problems: list[tuple[KeyPath, str]] = [
            (("backends", i, "name"),
             f"duplicate name {name!r} (also backends[{names.index(name)}])")
            for i, name in enumerate(names) if names.index(name) != i]
        for model, listed in self.models.items():
            if not listed:
                problems.append((("models", model), "needs at least one backend"))
            problems += [(("models", model, j), f"unknown backend {n!r} (known: {names})")
                         for j, n in enumerate(listed) if n not in names]
        return problems

    def _key_problems(self) -> list[tuple[KeyPath, str]]:
        """Every key names a known tenant, and no key is listed twice."""
        problems: list[tuple[KeyPath, str]] = [
            (("api_keys", i, "tenant"), f"unknown tenant {key.tenant!r}")
            for i, key in enumerate(self.api_keys) if key.tenant not in self.tenants]
        problems += [(("api_keys", i, "models"), f"key {key.name!r} lists models its tenant "
                      f"may not use: {key.widens(self.tenants[key.tenant])}")
                     for i, key in enumerate(self.api_keys)
                     if key.tenant in self.tenants and key.widens(self.tenants[key.tenant])]
        hashes = [k.hash for k in self.api_keys]
        problems += [(("api_keys", i, "hash"), "the same key hash is listed twice (also "
                      f"api_keys[{hashes.index(h)}])")
                     for i, h in enumerate(hashes) if hashes.index(h) != i]
        return problems

    def _upstream_models(self) -> list[tuple[KeyPath, str]]:
        """A mapping names a model this backend serves; an azure-openai backend knows every
        model it serves by a deployment name (its mapping, else the model's own name)."""
        problems: list[tuple[KeyPath, str]] = []
        for i, b in enumerate(self.backends):
            for model in b.upstream_models:
                where: KeyPath = ("backends", i, "upstream_models", model)
                if model not in self.models:
                    problems.append((where, f"{model!r} is not in models"))
                elif b.name not in self.models[model]:
                    problems.append((where, f"models.{model} does not list backend "
                                            f"{b.name!r}"))
            if b.format == "azure-openai":
                problems += [(("models", m), f"azure-openai backend {b.name!r} needs "
                              f"upstream_models.{m} (the deployment: the model's name is not "
                              "one)")
                             for m, names in self.models.items()
                             if b.name in names and m not in b.upstream_models
                             and not NAME.match(m)]
        return problems

    def backend(self, name: str) -> BackendSettings:
        return next(b for b in self.backends if b.name == name)


def otlp_headers(text: str) -> dict[str, str]:
    """`name=value,name2=value2` (OTEL_EXPORTER_OTLP_HEADERS' form, values percent-encoded);
    ValueError naming the item's position, never its text (it is usually a credential)."""
    headers: dict[str, str] = {}
    for i, item in enumerate(text.split(","), 1):
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name.strip()) or not value.strip():
            raise ValueError(f"item {i} is not name=value")
        headers[name.strip()] = unquote(value.strip())
    return headers


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, override from the environment, validate; raise `ConfigError` listing every issue.
    Parses and validates only: the policies, plugins and keys the settings name are read by
    `gateway.preflight`, which `veil serve` runs."""
    env = os.environ if environ is None else environ
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError([ConfigIssue(doc.file, None, "", "top level must be a mapping")])
    _apply_env_overrides(doc, env)
    settings = relative_to(validate(doc, Settings), Path(path).parent)
    _check_credentials(doc, settings, env)
    return settings


# Every setting that names a file or folder (a list, or one path, or None).
PATH_SETTINGS: tuple[tuple[str, ...], ...] = (
    ("policies", "files"), ("policies", "public_key_file"), ("api_keys_file",),
    ("listen", "tls_cert_file"), ("listen", "tls_key_file"), ("key_release", "ca_file"),
    ("self_attestation", "vcek_file"), ("self_attestation", "intel_collateral_dir"),
    ("audit", "path"), ("audit", "key_file"),
    ("attestation", "amd_roots_dir"), ("attestation", "intel_collateral_dir"),
    ("attestation", "cache_dir"),
    ("fhe", "keys_dir"), ("fhe", "master_key_file"), ("fhe", "embedder_cache_dir"),
)


def relative_to(settings: Settings, base_dir: Path) -> Settings:
    """`settings` with every relative path in `PATH_SETTINGS` (defaults included: a default is
    what the file would say) taken as relative to `base_dir`; absolute paths unchanged."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for path in PATH_SETTINGS:
        holder = getattr(settings, path[0]) if len(path) == 2 else settings
        if holder is None:  # an optional section left out
            continue
        value = _joined(base_dir, getattr(holder, path[-1]))
        if len(path) == 2:
            sections.setdefault(path[0], {})[path[1]] = value
        else:
            top[path[0]] = value
    for section, fields in sections.items():
        top[section] = getattr(settings, section).model_copy(update=fields)
    return settings.model_copy(update=top)


def _joined(base_dir: Path, value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list):
        return [str(base_dir / v) for v in value]
    return None if value is None else str(base_dir / value)  # an absolute value stays itself


def _apply_env_overrides(doc: YamlDocument, environ: Mapping[str, str]) -> None:
    """Set each `VEIL__SECTION__KEY` into `doc`, remembering which variable set what."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        if not keys:
            raise ConfigError([ConfigIssue(f"${name}", None, "", "names no setting")])
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
        doc.overridden[tuple(keys)] = name


def _check_credentials(doc: YamlDocument, settings: Settings, environ: Mapping[str, str]) -> None:
    """A backend that names a credential variable must get it: never fall back to no auth.
    Each issue points at the line (or override) that names the variable."""
    issues = [
        doc.issue(("backends", i, "api_key_env"),
                  f"environment variable {b.api_key_env} is not set or empty")
        for i, b in enumerate(settings.backends)
        if b.api_key_env and not environ.get(b.api_key_env)
    ]
    for i, b in enumerate(settings.backends):
        for header, source in b.headers.items():
            if source.env is None:
                continue
            problem = _header_env_problem(environ.get(source.env, ""))
            if problem:
                issues.append(doc.issue(("backends", i, "headers", header, "env"),
                                        f"environment variable {source.env} {problem}"))
    secrets: tuple[tuple[KeyPath, str | None, int], ...] = (
        (("logging", "correlation_key_env"), settings.logging.correlation_key_env, 16),
        (("privacy", "hash_key_env"), settings.privacy.hash_key_env, 16),
        (("state", "vault_key_env"), settings.state.vault_key_env, 32),
        (("metrics", "token_env"), settings.metrics.token_env, 16),
        (("hsm", "pin_env"), settings.hsm.pin_env if settings.hsm else None, 4))
    for field_path, env_name, least in secrets:
        if env_name and len(environ.get(env_name, "")) < least:
            issues.append(doc.issue(field_path, f"environment variable {env_name} must hold at "
                                                f"least {least} characters of secret"))
    tracing = settings.tracing
    if tracing.enabled and tracing.headers_env:
        problem = _otlp_headers_problem(environ.get(tracing.headers_env, ""))
        if problem:
            issues.append(doc.issue(("tracing", "headers_env"), f"environment variable "
                                    f"{tracing.headers_env} {problem}"))
    if issues:
        raise ConfigError(issues)


def _header_env_problem(value: str) -> str | None:
    """What keeps a variable's value from being a header value (the value is never quoted)."""
    if not value:
        return "is not set or empty"
    if not HEADER_VALUE.match(value):
        return "must be printable ASCII without blanks at either end (it is a header value)"
    return None


def _otlp_headers_problem(text: str) -> str | None:
    if not text:
        return "is not set or empty"
    try:
        otlp_headers(text)
    except ValueError as exc:
        return f"must list name=value headers separated by commas: {exc}"
    return None
