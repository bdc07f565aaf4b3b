"""Every exception the gateway defines, in one tree. The client-facing ones (`GatewayError`)
map each to exactly one answer: the OpenAI error envelope with a status, a type and a code.
The others never reach a client as they are; the tree says what each becomes.

    VeilError
    ├── GatewayError                   500 api_error              (the envelope; request id)
    │   ├── InvalidRequest             400 invalid_request_error  (names the field, never the value)
    │   │   ├── PolicyBlocked          400 sensitive_data_blocked (names the rule and types)
    │   │   ├── BadHttpRequest         400 bad_http_request       (not valid HTTP; the code says
    │   │   │                                                      which kind, bytes never echoed)
    │   │   └── HeadersTooLarge        431 headers_too_large      (a line too long, too many)
    │   ├── AuthenticationFailed       401 authentication_error
    │   ├── PermissionDenied           403 permission_error
    │   │   └── NoPolicyApplies        403 no_policy
    │   ├── NotFound                   404 invalid_request_error  (unknown URL, model, response)
    │   ├── ConversationBusy           409 invalid_request_error  (lost every mapping write)
    │   ├── MethodNotAllowed           405 invalid_request_error
    │   ├── RequestTimeout             408 invalid_request_error  (body not received in time)
    │   ├── PayloadTooLarge            413 invalid_request_error
    │   ├── UnsupportedMediaType       415 invalid_request_error  (a body that is not JSON)
    │   ├── RateLimited                429 rate_limit_error       (carries Retry-After)
    │   │   └── UpstreamRateLimited    429 upstream_rate_limited  (every backend said 429)
    │   ├── UpstreamRefused            4xx upstream_refused       (the backend's own 4xx, its
    │   │                                                         words restored for the client)
    │   ├── TransferCodingUnsupported  501 invalid_request_error  (a coding other than chunked)
    │   ├── UpstreamFailed             502 upstream_error         (every backend refused or broke)
    │   ├── ServiceUnavailable         503 service_unavailable
    │   │   ├── Overloaded             503 overloaded             (carries Retry-After)
    │   │   ├── TooManyConnections     503 too_many_connections   (a connection cap; Retry-After)
    │   │   ├── RateLimiterUnavailable 503 rate_limiter_unavailable (shared limits unreachable,
    │   │   │                                                     configured to fail closed)
    │   │   ├── VaultUnavailable       503 vault_unavailable      (a stored response's mapping
    │   │   │                                                     cannot be read: never guessed)
    │   │   ├── KeyUnavailable         503 key_unavailable        (a key in the HSM failed mid-run:
    │   │   │                                                     never a fallback to another key)
    │   │   ├── DetectorFailed         503 detector_failed        (unless the policy fails open)
    │   │   │   └── DetectionTimedOut  503 detection_timeout      (past the policy's limit)
    │   │   ├── ScorerFailed           503 scorer_failed          (unless the policy fails open)
    │   │   ├── UpstreamBusy           503 upstream_busy          (every backend resting on its
    │   │   │                                                     Retry-After)
    │   │   └── NoAttestedBackend      503 no_attested_backend    (unless it fails open)
    │   └── UpstreamTimeout            504 upstream_timeout
    ├── ConfigError                    a config, policy or cases file is wrong: start-up (or a
    │                                  reload) is refused, listing every issue with file:line
    ├── ConfigProblems (ValueError)    what a settings model's validator found, each at its own
    │                                  key: a ConfigError with one issue per finding, at its line
    ├── PluginError (LookupError)      a detector plugin (or the gazetteer's lists) does not
    │                                  load, or a plugin breaks its contract:
    │                                  a ConfigError when loading, DetectorFailed in a request
    ├── SignatureError                 a policy's .sig is missing or wrong: a ConfigError
    ├── EvidenceError                  a backend's evidence does not verify: no verdict, so the
    │   └── FetchError                 backend gets nothing that needs a trust level
    │                                  (NoAttestedBackend); FetchError: a remote party (the
    │                                  backend, a key set, AMD KDS, Intel PCS) could not be
    │                                  reached, presented another certificate, or sent too much.
    │                                  Their messages name what failed and the values measured:
    │                                  evidence is public by design, never a secret
    ├── RecordUnusable                 a record in the shared store no gateway wrote for that
    │                                  use (altered, planted, another's, too large): skipped
    │                                  and counted; the replica does that work itself
    ├── TokenError                     the PKCS#11 token (HSM) cannot be used: module missing,
    │                                  token not found, wrong PIN, a key label missing: a
    │                                  ConfigError at start (`veil serve`'s preflight)
    ├── CustodyError                   the sealed CKKS key cannot be opened: a ConfigError at
    │   │                              start (`veil serve`'s preflight)
    │   ├── KeyReleaseRefused          the key service released no key (refused, unreachable,
    │   │                              a reply that does not open, no report): no start
    │   └── KeysUnavailable            Redis, holding the shared epochs, did not answer in time:
    │                                  refused at start; later, the epoch loaded last is kept
    ├── ReleaseRefused                 `veil keys serve` refuses a release request: its status
    │                                  (400, 403, 503) and a reason for the gateway; the detail
    │                                  for the service's log only
    ├── ScorerError                    the scorer failed or answered what we will not decrypt:
    │   │                              ScorerFailed (or, failing open, no scores)
    │   └── TooManyChunks              a prompt past fhe.max_chunks embedding windows: likewise
    ├── CiphertextError (ValueError)   bytes that are not an expected ciphertext: refused before
    │                                  decryption (a ScorerError at the gateway, 400 at a scorer)
    ├── MissingKeys                    a scorer's keys lack a model's rotations: the scorer's 409,
    │                                  so the gateway re-sends keys
    ├── EmbeddingModelError            the pinned embedding model is missing or altered: start-up
    │   (RuntimeError)                 refused
    ├── WorkerStartFailed              NER workers did not become ready (in time): start-up
    │                                  refused, with the reason logged
    ├── StreamError                    an upstream stream cannot be relayed safely: the client's
    │   ├── SSEError                   stream ends with an error event (stream_interrupted)
    │   └── StreamFormatError
    ├── BodyTooLarge                   a bounded read went past its limit: PayloadTooLarge (a
    │                                  request) or UpstreamFailed (a reply)
    ├── FactAlreadySet (RuntimeError)  a stage recorded its outcome twice: a bug, 500
    ├── CasesFileRefused               a cases file a new case cannot be appended to as text
    │                                  (flow style, a link): nothing is written (the studio's
    │                                  409 cannot_append)
    └── StudioRefused                  a studio API request refused: its status, code and
                                       message become the studio's JSON error envelope

Messages are written for the client and for logs alike, so they never contain request content.
The one exception is an upstream's own words (`UpstreamRefused`, and the last backend's words
in `UpstreamFailed`), restored for the client like any reply: they go into the client's answer
only, never into a log line or the audit trail (which record the code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


class VeilError(Exception):
    """The root of every exception the gateway defines."""


class GatewayError(VeilError):
    """Base of every error the gateway answers with its own envelope."""

    status: int = 500  # a class's answer; UpstreamRefused's instances carry the backend's
    error_type: ClassVar[str] = "api_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}

    def envelope(self, request_id: str) -> dict[str, Any]:
        """The OpenAI error envelope, with the request id so a user can quote it to an operator."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
                "request_id": request_id,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ConversationBusy(GatewayError):
    """Requests into one conversation kept adding values at the same moment: this one lost the
    race to write the mapping each time. Nothing was forwarded; a retry will do."""

    status = 409
    error_type = "invalid_request_error"
    default_code = "conversation_busy"

    def __init__(self) -> None:
        super().__init__("Other requests into this conversation were being masked at the same "
                         "moment; nothing was forwarded. Retry the request.",
                         param="conversation", headers={"Retry-After": "1"})


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class BadHttpRequest(InvalidRequest):
    """Bytes that are not a valid HTTP/1.x request head, answered before any routing."""

    default_code = "bad_http_request"


class HeadersTooLarge(InvalidRequest):
    status = 431
    default_code = "headers_too_large"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamRateLimited(RateLimited):
    default_code = "upstream_rate_limited"

    def __init__(self, wait_s: float) -> None:
        seconds = max(1, math.ceil(wait_s))
        super().__init__(f"Every backend for this model is rate limited; retry after {seconds} s.",
                         headers={"Retry-After": str(seconds)})


class UpstreamRefused(GatewayError):
    """A backend refused the request itself (a 4xx other than 401/403/429): another backend
    would too, so it is not retried. The status is the backend's."""

    status = 400
    error_type = "invalid_request_error"
    default_code = "upstream_refused"

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
class TransferCodingUnsupported(GatewayError):
    status = 501
    error_type = "invalid_request_error"
    default_code = "unsupported_transfer_coding"


class UpstreamFailed(GatewayError):
    status = 502
    error_type = "upstream_error"
    default_code = "upstream_unavailable"


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "upstream_timeout"
    default_code = "upstream_timeout"


class PolicyBlocked(InvalidRequest):
    """400 naming the rule and the entity types found (never the values)."""

    default_code = "sensitive_data_blocked"

    def __init__(self, rule: str, entities: list[str]) -> None:
        found = f": it contains {', '.join(entities)}" if entities else ""
        super().__init__(f"Request blocked by policy (rule {rule}){found}.")
        self.rule = rule


class NoPolicyApplies(PermissionDenied):
    default_code = "no_policy"

    def __init__(self) -> None:
        super().__init__("No policy applies to this tenant, route and model; the request was "
                         "not forwarded.")


class Overloaded(ServiceUnavailable):
    default_code = "overloaded"

    def __init__(self) -> None:
        super().__init__("The gateway is at its concurrency limit; retry shortly.",
                         headers={"Retry-After": "1"})


class TooManyConnections(ServiceUnavailable):
    default_code = "too_many_connections"

    def __init__(self) -> None:
        super().__init__("The gateway holds as many connections as it allows (in all or from "
                         "this client address); retry shortly.", headers={"Retry-After": "1"})


class DetectorFailed(ServiceUnavailable):
    """Nothing is forwarded that was not fully scanned (unless the policy fails open)."""

    default_code = "detector_failed"

    def __init__(self, detector: str, reason: str) -> None:
        """`detector` and `reason` are for `veil_detector_failures_total` (never shown to the
        client): a detector's name and one of metrics.DETECTOR_FAILURE_REASONS."""
        super().__init__("A detector failed; the request was not forwarded.")
        self.detector = detector
        self.reason = reason


class DetectionTimedOut(DetectorFailed):
    default_code = "detection_timeout"

    def __init__(self, limit_s: float) -> None:
        ServiceUnavailable.__init__(self, f"Detection took longer than the policy allows "
                                          f"({limit_s:g} s); the request was not forwarded.")
        self.detector, self.reason = "", "timeout"  # counted per detector still running


class ScorerFailed(ServiceUnavailable):
    default_code = "scorer_failed"

    def __init__(self) -> None:
        super().__init__("The semantic scorer failed; the request was not forwarded.")


class RateLimiterUnavailable(ServiceUnavailable):
    default_code = "rate_limiter_unavailable"

    def __init__(self) -> None:
        super().__init__("The shared rate limiter cannot be reached; the request was not "
                         "forwarded.", headers={"Retry-After": "1"})


class VaultUnavailable(ServiceUnavailable):
    default_code = "vault_unavailable"

    def __init__(self) -> None:
        super().__init__("The shared store of placeholder mappings cannot be reached; the "
                         "request was not forwarded.", headers={"Retry-After": "1"})


class KeyUnavailable(ServiceUnavailable):
    """A key held in the HSM could not be used for this request (the token was removed, its
    session lost, the device failed): the request is refused, never served under another key."""

    default_code = "key_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class UpstreamBusy(ServiceUnavailable):
    default_code = "upstream_busy"

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        headers = {"Retry-After": str(max(1, math.ceil(wait_s)))} if wait_s is not None else {}
        super().__init__(message, headers=headers)


class NoAttestedBackend(ServiceUnavailable):
    default_code = "no_attested_backend"

    def __init__(self, needed: str) -> None:
        super().__init__(f"The policy requires trust level {needed} and no backend for this "
                         "model has attested to it; the request was not forwarded.")


# --- never a client's answer as they are ---------------------------------------------------

@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    position: Position | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.position:
            where += f":{self.position.line}:{self.position.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(VeilError):
    """One or more problems in a YAML file; `str()` lists them all, one per line."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class ConfigProblems(VeilError, ValueError):
    """What a model validator found, each at its own key path (relative to the model checked),
    so each is reported at the line of the entry that is wrong, not at the model's first line.
    A ValueError, so pydantic carries it through validation."""

    def __init__(self, found: Sequence[tuple[tuple[str | int, ...], str]]) -> None:
        self.found = list(found)
        super().__init__("; ".join(
            "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
            + f": {message}" for path, message in self.found))


class PluginError(VeilError, LookupError):
    """A named plugin could not be found, loaded or does not implement the contract (a
    LookupError, which is what the policy loader expects of `plugin_entities`)."""


class SignatureError(VeilError):
    """A policy file is unsigned, its signature is malformed, or it does not verify."""


class EvidenceError(VeilError):
    """The evidence is malformed, does not verify, or does not meet the trust level."""


class FetchError(EvidenceError):
    """Something the verification needs could not be fetched."""


class RecordUnusable(VeilError):
    """A shared-store record that does not open for its use, or is not well formed."""


class TokenError(VeilError):
    """The PKCS#11 token cannot be opened or lacks a key the configuration names. `setting`:
    the `hsm` setting at fault (module, token_label, slot, pin_env), for the config's line."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class CustodyError(VeilError):
    """No key, a wrong master key, or a sealed file that was tampered with."""


class KeyReleaseRefused(CustodyError):
    """The key service did not release the gateway's keys (refused its evidence, could not be
    reached, answered something else), or the gateway could not make its evidence: it does not
    start."""


class ReleaseRefused(VeilError):
    """The key service refuses a release request: `reason` is what the gateway is told (which
    step failed), `detail` what the service's log keeps (what would help a forger)."""

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail or reason


class KeysUnavailable(CustodyError):
    """The shared store holding the key epochs (Redis) failed or did not answer in time."""


class ScorerError(VeilError):
    """The scorer could not be reached, refused, or answered something we will not decrypt."""


class TooManyChunks(ScorerError):
    """A prompt needing more embedding windows than fhe.max_chunks: refused, never scored on
    a part of itself."""

    def __init__(self, chunks: int, limit: int) -> None:
        super().__init__(f"the prompt needs {chunks} embedding windows, over fhe.max_chunks "
                         f"({limit})")


class CiphertextError(VeilError, ValueError):
    """Bytes that are not a ciphertext this protocol expects: refused before decryption."""


class MissingKeys(VeilError):
    """The epoch's keys lack a rotation this model needs (a model deployed after they came)."""


class EmbeddingModelError(VeilError, RuntimeError):
    """The pinned model or tokenizer is missing or not the file we pinned."""


class WorkerStartFailed(VeilError):
    """NER workers did not become ready, or not within their start time."""


class StreamError(VeilError):
    """An upstream stream the gateway cannot relay safely."""


class SSEError(StreamError):
    """The upstream stream is not valid SSE (an event grew past the limit)."""


class StreamFormatError(StreamError):
    """An upstream event this gateway cannot restore safely."""


class BodyTooLarge(VeilError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


class FactAlreadySet(VeilError, RuntimeError):
    """A stage recorded its outcome twice: a bug, so the record cannot say two things."""


class CasesFileRefused(VeilError):
    """A case appended at the end of this file would not load as its last case."""


class StudioRefused(VeilError):
    """A studio API request that gets an answer other than success; `extra` adds fields to
    the error object (a broken file's issues, each at its line and column)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
