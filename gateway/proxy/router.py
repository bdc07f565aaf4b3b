"""Which backends may serve a request: the caller's tenant must be allowed the model, and the
backend must speak the endpoint's wire format. Order is the order given in config."""

from __future__ import annotations

from typing import Protocol

from gateway.api import ApiRequest
from gateway.attestation.verifier import AttestationService
from gateway.errors import NoAttestedBackend, NotFound
from gateway.ingress.auth import Caller
from gateway.observability.logging import get_logger
from gateway.policy.schema import Policy
from gateway.settings import BackendSettings, Settings

log = get_logger("veil.route")


class Chosen(Protocol):
    """The policy a request is decided by, as routing needs it."""

    @property
    def policy(self) -> Policy: ...

    @property
    def digest(self) -> str: ...


class Router:
    def __init__(self, settings: Settings, attestation: AttestationService) -> None:
        self._settings = settings
        self._attestation = attestation
        self._backends = {b.name: b for b in settings.backends}

    def candidates(self, request: ApiRequest, caller: Caller) -> list[BackendSettings]:
        names = self._settings.models.get(request.model)
        if names is None or not caller.may_use(request.model):
            # Same answer for "no such model" and "not yours" (the tenant's or the key's):
            # existence is not disclosed.
            raise NotFound("The requested model does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        backends = [self._backends[n] for n in names
                    if self._backends[n].wire == request.endpoint.wire]
        if not backends:
            raise NotFound(f"The requested model is not served on {request.endpoint.path}.",
                           param="model", code="model_not_found")
        return backends

    def trusted(self, backends: list[BackendSettings], requires: tuple[str, ...],
                active: Chosen) -> tuple[list[BackendSettings], bool]:
        """The backends whose current, verified attestation meets every trust level the policy
        requires for this request's data and for the backend itself (`backends.<name>.require`),
        and whether that failed open. None -> refused here, never sent anywhere, unless the
        policy says `fail_mode: {evidence: open}` (then the configured order, logged and
        counted)."""
        own = active.policy.backends
        if not requires and not own:
            return backends, False
        trusted = [b for b in backends if self._attestation.meets(
            b.name, active.digest, requires + ((own[b.name].require,) if b.name in own else ()))]
        if trusted:
            return trusted, False
        if active.policy.fail_mode.evidence == "open":
            log.warning("attestation_failed_open", levels=list(requires))
            return backends, True
        raise NoAttestedBackend(", ".join(requires) or "their own required levels")

    def attestation_digest(self, backend: str) -> str | None:
        return self._attestation.digest(backend)

    def visible_models(self, caller: Caller) -> list[str]:
        return [m for m in self._settings.models if caller.may_use(m)]
