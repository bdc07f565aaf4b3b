"""A gateway config with three backends for the Backends view: `good` serves the test AMD's
SEV-SNP evidence with the measurement the policy allows, `wrong` the same evidence with another
measurement, both over TLS on loopback like tests/integration/test_attested_routing.py's
confidential backends (reused from there); `plain` has no attestation, and an API key variable
and a header whose values must never reach the page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.attestation_ca import MRTD, tls_context
from tests.integration.test_attested_routing import (
    LEVEL,
    POLICY,
    ConfidentialBackend,
    attested,
    roots_dir,
)
from tests.servers import ServerThread

TDX_LEVEL = "confidential-tdx"  # no backend here runs TDX: never met
SECRET_ENV = "VEIL_STUDIO_TEST_UPSTREAM_KEY"
SECRET_VALUE = "sk-upstream-secret-never-shown-0123"
SECRET_HEADER = "org-secret-header-never-shown"
URL_PASSWORD = "url-password-never-shown"
STUDIO_POLICY: dict[str, Any] = {**POLICY, "trust_levels": {
    **POLICY["trust_levels"], TDX_LEVEL: {"max_age_s": 600, "tdx": {"mrtd": [MRTD.hex()]}}}}


@dataclass
class Backends:
    config: Path
    machines: dict[str, ConfidentialBackend]  # good, wrong


@contextmanager
def three_backends(directory: Path) -> Iterator[Backends]:
    contexts = {name: tls_context(directory, name) for name in ("good", "wrong")}
    machines = {"good": ConfidentialBackend(contexts["good"][1]),
                "wrong": ConfidentialBackend(contexts["wrong"][1], measurement=bytes(48))}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(ServerThread(m.app(), ssl_context=contexts[name][0]))
                   for name, m in machines.items()}
        amd = directory / "amd"
        amd.mkdir()
        (directory / "policy.yaml").write_text(yaml.safe_dump(STUDIO_POLICY, sort_keys=False))
        plain = {"name": "plain", "url": f"http://user:{URL_PASSWORD}@127.0.0.1:9/v1",
                 "api_key_env": SECRET_ENV, "headers": {"X-Org": {"value": SECRET_HEADER}}}
        config = directory / "config.yaml"
        config.write_text(yaml.safe_dump({
            "backends": [attested("good", servers["good"].url),
                         attested("wrong", servers["wrong"].url), plain],
            "models": {"test-model": ["good", "wrong", "plain"]},
            "policies": {"files": ["policy.yaml"], "watch_interval_s": 0},
            "attestation": {"amd_roots_dir": roots_dir(amd), "amd_kds_url": None,
                            "intel_pcs_url": None, "cache_dir": "cache"}}, sort_keys=False))
        yield Backends(config, machines)


__all__ = ["LEVEL", "SECRET_ENV", "SECRET_HEADER", "SECRET_VALUE", "TDX_LEVEL", "URL_PASSWORD",
           "Backends", "three_backends"]
