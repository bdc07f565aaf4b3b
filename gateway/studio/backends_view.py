"""The Backends view: every backend of the config, and for the attested ones what the gateway's
own verifier decides about them now.

The studio attests them itself, with the gateway's `AttestationService` built as `veil serve`
builds it (the same settings, the trust levels of the policies the gateway's loader loads), so
each verdict shown, met or not and until when, is the one a gateway started now would route
by; the reasons a level is not met come from the same checks (verdicts.level_problems), and
what was measured is the evidence object the verdict was reached on. It does not read
another gateway's shared evidence: it asks the backends, over their pinned TLS connection.
"Re-attest now" wakes the backend's own attestation loop, so there is never a second one.

Nothing secret is shown: backends' API key variables and headers are left out, URLs lose user
info and query, tokens are counted, not shown, and a failure's reason is the one the gateway
logs (an EvidenceError's message, written to be shown, else only the exception's type).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from gateway.attestation.evidence import Evidence
from gateway.attestation.levels import TrustLevel
from gateway.attestation.offline import rim_ids
from gateway.attestation.verifier import AttestationService, Standing
from gateway.errors import ConfigError
from gateway.observability.metrics import Metrics
from gateway.plugins import plugin_entities
from gateway.policy.active import PolicySet, load_policy_set
from gateway.settings import BackendSettings, Settings
from gateway.studio.context import STUDIO_KEY, Studio

MIN_WAIT_S = 30.0  # "Re-attest now" waits this long at least for the attestation to end


class PoliciesInForce:
    """The policies as the gateway's loader loads them now; when the files stop loading, the
    last set that did stays in force (as in a gateway, whose reload keeps it) and the error
    is shown."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.loaded: PolicySet | None = None
        self.error: str | None = None

    def reload(self) -> bool:
        """Whether the trust levels in force changed."""
        hash_env = self._settings.privacy.hash_key_env
        try:
            loaded = load_policy_set(self._settings.policies,
                                     hash_secret=bool(hash_env and os.environ.get(hash_env)),
                                     plugin_entities=plugin_entities)
        except ConfigError as exc:
            self.error = str(exc)
            return False
        before = self.levels()
        self.loaded, self.error = loaded, None
        return self.levels() != before

    def levels(self) -> list[tuple[str, str, TrustLevel]]:
        return self.loaded.trust_levels() if self.loaded is not None else []

    def described(self) -> list[dict[str, str]]:
        return self.loaded.describe() if self.loaded is not None else []


@dataclass(frozen=True)
class Attesting:
    service: AttestationService
    policies: PoliciesInForce


ATTESTING_KEY = web.AppKey("backends_attesting", Attesting)


def setup(app: web.Application) -> None:
    """Before the app starts: the service, attesting in the background while the studio runs."""
    settings = app[STUDIO_KEY].settings
    policies = PoliciesInForce(settings)
    policies.reload()
    app[ATTESTING_KEY] = Attesting(AttestationService(settings, policies.levels, Metrics()),
                                   policies)
    app.cleanup_ctx.append(_attesting)


async def _attesting(app: web.Application) -> AsyncIterator[None]:
    service = app[ATTESTING_KEY].service
    await service.start()
    yield
    await service.close()


def routes(_studio: Studio) -> list[web.RouteDef]:
    return [web.get("/api/backends", _list), web.post("/api/backends/attest", _attest)]


async def _list(request: web.Request) -> web.Response:
    attesting = request.app[ATTESTING_KEY]
    settings = request.app[STUDIO_KEY].settings
    return web.json_response({
        "now": time.time(),  # the browser counts down from it: its clock may differ
        "policies": attesting.policies.described(),
        "policy_error": attesting.policies.error,
        "backends": [backend_json(b, attesting) for b in settings.backends]})


async def _attest(request: web.Request) -> web.Response:
    """Re-read the policies (a level edited since shows at once, as a gateway's reload does),
    then attest the backend afresh and answer with what it holds after."""
    attesting = request.app[ATTESTING_KEY]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "invalid_request", "the body must be JSON")
    name = body.get("backend") if isinstance(body, dict) else None
    if not isinstance(name, str):
        return _error(400, "invalid_request", 'the body must be {"backend": NAME}')
    backend = next((b for b in request.app[STUDIO_KEY].settings.backends if b.name == name),
                   None)
    if backend is None:
        return _error(404, "not_found", f"no backend named {name!r} in the config")
    if backend.attestation is None:
        return _error(409, "not_attested", f"backend {name!r} has no attestation to run")
    if await asyncio.to_thread(attesting.policies.reload):  # files, and Sigstore bundles
        attesting.service.policies_changed()
    wait_s = max(MIN_WAIT_S, 3 * backend.attestation.timeout_s)
    try:
        await attesting.service.attest_now(name, wait_s)
    except TimeoutError:
        return _error(504, "timeout", f"the attestation did not end within {wait_s:.0f} s; "
                      "it goes on in the background")
    return web.json_response(backend_json(backend, attesting))


def backend_json(backend: BackendSettings, attesting: Attesting) -> dict[str, Any]:
    attestation = backend.attestation
    shown: dict[str, Any] = {
        "name": backend.name, "url": shown_url(backend.url), "format": backend.format,
        "attestation": None if attestation is None else {
            "evidence_path": attestation.evidence_path, "refresh_s": attestation.refresh_s,
            "timeout_s": attestation.timeout_s}}
    standing = attesting.service.standing(backend.name)
    if standing is None:
        return {**shown, "status": "not-attested", "verdict": None}
    service = attesting.service
    met = [service.meets(backend.name, level.policy, (level.level,))
           for level in standing.levels]  # what a request asks, so what the gateway decides
    return {**shown, "status": status(standing, met),
            "verdict": standing_json(standing, met, attesting.policies)}


def status(standing: Standing, met: list[bool]) -> str:
    """attested: a trust level in force is met; unmet: the evidence verified but meets none;
    verified: it verified, and no policy in force defines a level; refused: no verdict (the
    last attestation failed); pending: not attested yet."""
    if standing.evidence is None:
        return "refused" if standing.error is not None else "pending"
    if not met:
        return "verified"
    return "attested" if any(met) else "unmet"


def standing_json(standing: Standing, met: list[bool], policies: PoliciesInForce
                  ) -> dict[str, Any]:
    named = {p["digest"]: p for p in policies.described()}
    return {
        "error": standing.error, "source": standing.source,
        "checked_at": standing.checked_at, "next_check_at": standing.next_check_at,
        "levels": [{"policy": named.get(level.policy, {}).get("name", level.policy),
                    "policy_file": named.get(level.policy, {}).get("file"),
                    "digest": level.policy, "level": level.level,
                    "met": is_met, "until": _time(level.until),
                    "problems": list(level.problems)}
                   for level, is_met in zip(standing.levels, met, strict=True)],
        "releases": list(standing.releases),
        "measured": None if standing.evidence is None else measured(standing.evidence)}


def measured(evidence: Evidence) -> dict[str, Any]:
    """What the evidence showed, as `veil attest verify` names it (each part's `values`)."""
    kinds = []
    snp = tdx = None
    if evidence.snp is not None:
        kinds.append("SEV-SNP")
        snp = {**evidence.snp.values(), "guest_policy": f"0x{evidence.snp.report.policy:x}"}
    if evidence.tdx is not None:
        kinds.append("TDX")
        tdx = evidence.tdx.values()
    gpus = [{"index": gpu.index, "certificate_serial": gpu.serial, **rim_ids(gpu.evidence),
             "measurements": {str(i): v.hex() for i, v in
                              sorted(gpu.evidence.measurements.items())}}
            for gpu in evidence.gpus]
    if gpus:
        kinds.append(f"NVIDIA GPU x{len(gpus)}")
    if evidence.tokens:
        kinds.append("token")
    return {"kinds": kinds, "sev_snp": snp, "tdx": tdx, "gpus": gpus, "gpu_count": len(gpus),
            "tokens": len(evidence.tokens),
            "report_data": evidence.expected_nonce,  # the nonce and the TLS key, bound
            "tls_certificate_sha256": evidence.certificate_sha256.hex(),
            "digest": evidence.digest, "verified_at": evidence.verified_at,
            "endorsements_until": _time(evidence.not_after())}


def shown_url(url: str) -> str:
    """Without user info, query or fragment: what may carry a credential."""
    return str(URL(url).with_user(None).with_query(None).with_fragment(None))


def _time(at: float | None) -> float | None:
    return at if at is not None and math.isfinite(at) else None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": code, "code": code}},
                             status=status)
