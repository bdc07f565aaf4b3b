"""Which backends may serve a request: the caller's tenant must be allowed the model, and the
backend must speak the endpoint's wire format. Order is the order given in config."""

from __future__ import annotations

from gateway.api import ApiRequest
from gateway.errors import NotFound
from gateway.ingress.auth import Caller
from gateway.settings import BackendSettings, Settings


class Router:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._backends = {b.name: b for b in settings.backends}

    def candidates(self, request: ApiRequest, caller: Caller) -> list[BackendSettings]:
        names = self._settings.models.get(request.model)
        if names is None or not caller.tenant_settings.may_use(request.model):
            # Same answer for "no such model" and "not yours": existence is not disclosed.
            raise NotFound("The requested model does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        backends = [self._backends[n] for n in names
                    if self._backends[n].format == request.endpoint.wire]
        if not backends:
            raise NotFound(f"The requested model is not served on {request.endpoint.path}.",
                           param="model", code="model_not_found")
        return backends

    def visible_models(self, caller: Caller) -> list[str]:
        return [m for m in self._settings.models if caller.tenant_settings.may_use(m)]
