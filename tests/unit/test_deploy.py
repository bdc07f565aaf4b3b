"""The deployment files: the Dockerfile passes hadolint, every manifest validates against the
Kubernetes schemas (strict, offline), the ConfigMap's config passes the gateway's own
preflight, and the Deployment keeps the properties the README promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.preflight import preflight
from gateway.settings import LimitSettings, load_settings

ROOT = Path(__file__).parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
K8S = "1.37.0"


def resources() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    return next(r for r in resources() if r["kind"] == kind)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info",
                             str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_runs_unprivileged_from_a_second_stage() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2
    assert "USER 10001:10001" in lines
    final = lines[lines.index(stages[1]):]
    assert not any("apt-get" in line or "gcc" in line for line in final)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    if path.name == "kustomization.yaml":
        listed = yaml.safe_load(path.read_text())["resources"]
        assert sorted(listed) == sorted(p.name for p in MANIFESTS
                                        if p.name not in ("kustomization.yaml",
                                                          "secret.example.yaml"))
        return
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_the_configmaps_config_passes_the_preflight(tmp_path: Path) -> None:
    data = by_kind("ConfigMap")["data"]
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(data["api-keys.yaml"])
    config = tmp_path / "config.yaml"
    config.write_text(data["config.yaml"]
                      .replace("/etc/veil/policies/", f"{ROOT / 'policies'}/")
                      .replace("/etc/veil/keys/api-keys.yaml", str(keys_file)))
    environ = dict(by_kind("Secret")["stringData"])
    settings = load_settings(config, environ)
    assert settings.state.redis_url == environ["VEIL__STATE__REDIS_URL"].split(" ")[0]
    preflight(config, settings, environ)
    named = {b.api_key_env for b in settings.backends} | {
        settings.audit.key_env, settings.state.vault_key_env}
    assert named <= set(environ)  # every credential the config names comes from the Secret


def test_the_deployment_is_locked_down_and_probed() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "privileged": False, "capabilities": {"drop": ["ALL"]}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= set(container["resources"])
    assert pod["terminationGracePeriodSeconds"] > LimitSettings().shutdown_timeout_s  # drain first
    assert by_kind("PodDisruptionBudget")["spec"]["minAvailable"] < \
        by_kind("Deployment")["spec"]["replicas"]
