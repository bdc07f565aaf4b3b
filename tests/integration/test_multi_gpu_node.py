"""An 8-GPU node through the real gateway: `veil attest agent` in the VM (its report from the
test AMD, its GPUs' evidence from a stand-in for NVIDIA's `nvattest` printing one entry per
GPU, each signed by that GPU's own key over the nonce it is asked with), the model server on
the same origin, and NVIDIA's OCSP responder on loopback answering about each GPU's
certificate. Data needing the level reaches the node only while all eight GPUs meet it; one
GPU off, and the reason names it."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from gateway.app import GATEWAY, Outbound
from gateway.attestation.agent import AgentSettings, build_agent_app
from gateway.attestation.nvattest import Nvattest
from gateway.attestation.nvidia import certificate_serial
from tests.attestation_ca import OCSP_URL, tls_context
from tests.integration.test_attest_agent import PlatformStandIn
from tests.integration.test_attest_agent_gpu import install
from tests.integration.test_attested_routing import (
    POLICY,
    VENDORS,
    ConfidentialBackend,
    attested,
    chat,
    policy_digest,
    refusals,
    roots_dir,
    wait_attested,
    wait_until,
)
from tests.servers import ServerThread, gateway_for, settings_for

REPO = Path(__file__).parents[2]
GPUS = 8
GOOD = b"\x11" * 48
LEVEL = "confidential-hgx"
RULES = {**POLICY, "routing": {"personal": {"require": LEVEL}},
         "trust_levels": {LEVEL: {"max_age_s": 600,
                                  "sev-snp": POLICY["trust_levels"]["confidential-cpu"]["sev-snp"],
                                  "nvidia-gpu": {"count": GPUS,
                                                 "measurements": {1: [GOOD.hex()]}}}}}

NODE_TOOL = """#!{python}
# Stands in for nvattest on an HGX node: every GPU of gpus.json answers the nonce it is asked.
import base64, json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from cryptography.hazmat.primitives import serialization
from tests.attestation_ca import spdm_evidence
here = Path(__file__).parent
nonce = bytes.fromhex(sys.argv[sys.argv.index("--nonce") + 1])
evidences = []
for gpu in json.loads((here / "gpus.json").read_text()):
    key = serialization.load_pem_private_key(gpu["key"].encode(), None)
    evidence = spdm_evidence(key, nonce, {{1: bytes.fromhex(gpu["measurement"])}})
    evidences.append({{"arch": "HOPPER", "nonce": nonce.hex(),
                      "evidence": base64.b64encode(evidence).decode(),
                      "certificate": base64.b64encode(gpu["chain"].encode()).decode()}})
print(json.dumps({{"evidences": evidences, "result_code": 0, "result_message": "Ok"}}))
"""


def node_tool(directory: Path, measurements: dict[int, bytes]) -> Nvattest:
    """The stand-in nvattest for GPUs 0..7 of the test NVIDIA (GOOD unless `measurements`)."""
    tool = install(directory, NODE_TOOL.format(python=sys.executable, repo=str(REPO)))
    gpus = []
    for index in range(GPUS):
        key, leaf = VENDORS.nvidia.device(index)
        gpus.append({"key": key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode(),
                     "chain": VENDORS.nvidia.chain_pem(leaf).decode(),
                     "measurement": measurements.get(index, GOOD).hex()})
    (directory / "gpus.json").write_text(json.dumps(gpus))
    return Nvattest(str(tool))


@dataclass
class NodeResponder:
    """NVIDIA's OCSP service for the test NVIDIA's GPUs (POST, nonce echoed): good, except for
    the serials in `revoked`."""

    revoked: set[int] = field(default_factory=set)
    asked: list[int] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.post)
        return app

    async def post(self, request: web.Request) -> web.Response:
        asked = ocsp.load_der_ocsp_request(await request.read())
        self.asked.append(asked.serial_number)
        cert = next(leaf for _, leaf in VENDORS.nvidia.devices
                    if leaf.serial_number == asked.serial_number)
        nonce = None
        with contextlib.suppress(x509.ExtensionNotFound):
            nonce = asked.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        status = "revoked" if asked.serial_number in self.revoked else "good"
        return web.Response(body=VENDORS.nvidia.ocsp(status=status, cert=cert, nonce=nonce),
                            content_type="application/ocsp-response")


@dataclass
class Node:
    """The VM: the agent (evidence) and the model server on one TLS origin."""

    tmp_path: Path
    measurements: dict[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.context, certificate = tls_context(self.tmp_path, "vm")
        self.model = ConfidentialBackend(certificate)
        self.platform = PlatformStandIn()
        self.app = build_agent_app(AgentSettings(self.tmp_path / "vm.crt"), self.platform,
                                   node_tool(self.tmp_path / "bin", self.measurements))
        self.app.router.add_post("/v1/chat/completions", self.model.chat)


def node_settings(tmp_path: Path, node_url: str, responder_url: str) -> Any:
    return settings_for([attested("node", node_url)], policy=RULES, attestation={
        "amd_kds_url": None, "intel_pcs_url": None, "amd_roots_dir": roots_dir(tmp_path),
        "cache_dir": str(tmp_path / "cache"),
        "ocsp_responders": {OCSP_URL: {"method": "post", "url": responder_url + "/"}}})


def serial(index: int) -> str:
    return certificate_serial(VENDORS.nvidia.device(index)[1])


def test_an_eight_gpu_node_meets_the_level_and_receives_the_data(tmp_path: Path) -> None:
    node, responder = Node(tmp_path), NodeResponder()
    with ServerThread(responder.app()) as ocsp_server, \
            ServerThread(node.app, ssl_context=node.context) as vm:
        settings = node_settings(tmp_path, vm.url, ocsp_server.url)
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            service = wait_attested(gw, "node", LEVEL)
            for _ in range(2):
                assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
            assert service.digest("node") is not None
    assert node.model.served == 2
    every_gpu = {VENDORS.nvidia.device(i)[1].serial_number for i in range(GPUS)}
    assert every_gpu <= set(responder.asked)  # each GPU's own certificate, checked


def test_one_gpu_off_its_measurement_keeps_the_node_from_the_level_naming_it(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    node, responder = Node(tmp_path, measurements={5: b"\x99" * 48}), NodeResponder()
    with ServerThread(responder.app()) as ocsp_server, \
            ServerThread(node.app, ssl_context=node.context) as vm:
        settings = node_settings(tmp_path, vm.url, ocsp_server.url)
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            service = gw.app[GATEWAY].attestation
            wait_until(lambda: service.digest("node") is not None)  # verified, level unmet
            assert not service.meets("node", policy_digest(gw), (LEVEL,))
            refused = chat(gw.url, "mail jane.roe@example.com")
    assert refused.status_code == 503
    assert node.model.served == 0
    logged = capfd.readouterr().err
    assert "gpu_level_not_met" in logged
    assert f"GPU 5 (certificate serial {serial(5)}): GPU measurement 1 {'99' * 48} is not " \
           "allowed" in logged
    assert "GPU 4 (" not in logged  # the others meet it


def test_one_revoked_gpu_refuses_the_node_naming_it(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    revoked = VENDORS.nvidia.device(2)[1].serial_number
    node, responder = Node(tmp_path), NodeResponder(revoked={revoked})
    with ServerThread(responder.app()) as ocsp_server, \
            ServerThread(node.app, ssl_context=node.context) as vm:
        settings = node_settings(tmp_path, vm.url, ocsp_server.url)
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            wait_until(lambda: refusals(gw, "node") >= 1)
            assert gw.app[GATEWAY].attestation.digest("node") is None
            refused = chat(gw.url, "mail jane.roe@example.com")
    assert refused.status_code == 503
    assert node.model.served == 0
    assert (f'"reason":"nvidia-gpu: GPU 2 (certificate serial {serial(2)}): certificate '
            "'Test GH100 attestation key' is revoked (key_compromise)\"") in capfd.readouterr().err
