"""What `/readyz` answers: ready only when a request could be served end to end now, with a
JSON detail of what is missing, for the operator and the load balancer alike. It names
backends and policies (as `/metrics` does), never anything a client sent."""

from __future__ import annotations

from typing import Any

from gateway.policy.reload import PolicyHolder
from gateway.privacy.engine import DetectionEngine
from gateway.proxy.health import Health
from gateway.proxy.upstream import UpstreamPool
from gateway.settings import Settings


def readiness(settings: Settings, pool: UpstreamPool, engine: DetectionEngine,
              policies: PolicyHolder[Any], health: Health) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for model, names in settings.models.items():
        unusable = {n: why for n in names if (why := health.why_unusable(n)) is not None}
        models[model] = {"usable": [n for n in names if n not in unusable],
                         "unusable": unusable}
    checks = {
        "upstream_sessions": pool.started,
        "policies_loaded": policies.compiled,
        "detectors_alive": engine.ready,
        "every_model_has_a_usable_backend": all(m["usable"] for m in models.values()),
    }
    return {
        "status": "ready" if all(checks.values()) else "not_ready",
        "checks": checks,
        "policies": [{"name": a.policy.name, "digest": a.digest}
                     for a in policies.policies.policies],
        "models": models,
    }
