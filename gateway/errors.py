"""The gateway's own errors, each mapped to exactly one client-facing answer.

    GatewayError                      500 api_error
    ├── InvalidRequest                400 invalid_request_error   (names the field, never the value)
    ├── AuthenticationFailed          401 authentication_error
    ├── PermissionDenied              403 permission_error        (no policy applies)
    ├── NotFound                      404 invalid_request_error   (unknown URL, unknown model)
    ├── MethodNotAllowed              405 invalid_request_error
    ├── RequestTimeout                408 invalid_request_error   (body not received in time)
    ├── PayloadTooLarge               413 invalid_request_error
    ├── RateLimited                   429 rate_limit_error        (carries Retry-After)
    ├── UpstreamFailed                502 upstream_error          (every backend refused or broke)
    ├── ServiceUnavailable            503 service_unavailable
    └── UpstreamTimeout               504 upstream_timeout

Messages are written for the client and for logs alike, so they never contain request content.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """Base of every error the gateway answers with its own envelope."""

    status: ClassVar[int] = 500
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


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


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


class DetectorFailed(ServiceUnavailable):
    """Nothing is forwarded that was not fully scanned (unless the policy fails open)."""

    default_code = "detector_failed"

    def __init__(self) -> None:
        super().__init__("A detector failed; the request was not forwarded.")


class ScorerFailed(ServiceUnavailable):
    default_code = "scorer_failed"

    def __init__(self) -> None:
        super().__init__("The semantic scorer failed; the request was not forwarded.")
