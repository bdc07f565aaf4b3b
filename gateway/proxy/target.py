"""Where a request goes on one backend, and under which model name: the backend's own
vocabulary (`upstream_models`, `format: azure-openai`) kept in one place, so the forwarder, the
health probes and the remote embedder address a backend alike.

Azure OpenAI serves chat completions, completions and embeddings per deployment:
`{url}/openai/deployments/{deployment}/{route}?api-version={api_version}`, the deployment
being the model's `upstream_models` entry (else the model's own name). Everything else
(Responses, their reads, conversations) is on its v1 API, OpenAI's own paths under `/openai`
(`{url}/openai/v1/responses`), which takes no api-version and the deployment as the body's
`model`.
"""

from __future__ import annotations

from urllib.parse import quote

import orjson

from gateway.api import ApiRequest
from gateway.settings import BackendSettings, HealthCheck

AZURE = "azure-openai"
AZURE_DEPLOYMENT_ROUTES = {"/v1/chat/completions": "chat/completions",
                           "/v1/completions": "completions", "/v1/embeddings": "embeddings"}
AZURE_V1 = "/openai/v1/"


def upstream_path(backend: BackendSettings, path: str, model: str) -> str:
    """The path (and query) on `backend` for the client's `path` (with its vetted query)."""
    if backend.format != AZURE:
        return path
    route = AZURE_DEPLOYMENT_ROUTES.get(path)
    if route is None:
        return "/openai" + path
    deployment = quote(backend.upstream_model(model), safe="")  # already a checked name
    return f"/openai/deployments/{deployment}/{route}?api-version={_api_version(backend)}"


def renames(backend: BackendSettings, request: ApiRequest) -> bool:
    """Whether this backend knows the request's model by another name: then its body says
    that name, and replies say the client's again."""
    return request.model in backend.upstream_models \
        and request.body.get("model") == request.model


def upstream_payload(backend: BackendSettings, request: ApiRequest,
                     payload: bytes | None) -> bytes | None:
    """The body as this backend must read it: `model` its own name for the model. `payload`
    is `request.body` serialized (masked): only the model differs."""
    if payload is None or not renames(backend, request):
        return payload
    return orjson.dumps({**request.body, "model": backend.upstream_models[request.model]})


def probe_path(backend: BackendSettings, check: HealthCheck) -> str:
    if backend.format != AZURE:
        return check.path or "/health"
    path = check.path or "/openai/models"
    if path.startswith(AZURE_V1):
        return path
    return f"{path}?api-version={_api_version(backend)}"


def embeddings_path(backend: BackendSettings, model: str) -> str:
    """Where the remote embedder (gateway/fhe) asks for vectors; `model` as the backend
    knows it (on azure-openai, the deployment)."""
    if backend.format != AZURE:
        return "/v1/embeddings"
    return (f"/openai/deployments/{quote(model, safe='')}/embeddings"
            f"?api-version={_api_version(backend)}")


def _api_version(backend: BackendSettings) -> str:
    return quote(backend.api_version or "", safe="")
