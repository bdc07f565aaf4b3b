"""`veil attest agent` with NVIDIA's `nvattest` on PATH: a stand-in script prints what the real
tool prints (`collect-evidence --device gpu --nonce <hex>`: base64 SPDM transcript and PEM
chain per GPU), from the test NVIDIA signing over the nonce it is given, or NVIDIA's genuine
recorded H100 evidence (whose nonce is fixed: that tests the plumbing, not freshness). The
agent's document is then verified by the gateway's own evidence verifier."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.attestation.agent import EVIDENCE_PATH, AgentSettings, build_agent_app, gpu_source
from gateway.attestation.binding import binding, spki_sha256
from gateway.attestation.collateral import CollateralStore
from gateway.attestation.evidence import Evidence, EvidenceVerifier, Fetched
from gateway.attestation.nvattest import Nvattest, find_nvattest, parts_from_output
from gateway.attestation.nvidia import nvidia_root, verify_gpu_evidence
from gateway.attestation.snp import SnpReport
from gateway.attestation.stapling import OcspStapler
from gateway.attestation.tdx import Collateral, TdxQuote
from gateway.attestation.transport import NetworkTransport
from gateway.attestation.trust_roots import Roots
from gateway.errors import EvidenceError
from gateway.settings import AttestationSettings, OcspResponder
from tests.attestation_ca import OCSP_URL, self_signed
from tests.integration.test_attest_agent import PlatformStandIn
from tests.integration.test_attested_routing import VENDORS
from tests.integration.test_ocsp_responder import Responder
from tests.servers import ServerThread

REPO = Path(__file__).parents[2]
NVIDIA_DATA = REPO / "tests" / "data" / "attestation" / "nvidia"
AT = datetime(2025, 1, 1, tzinfo=UTC)
MEASUREMENT = b"\x22" * 48

FAKE_SIGNING_TOOL = """#!{python}
# Stands in for nvattest: the test NVIDIA's GPU, answering the nonce it is asked with.
import base64, json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.attestation_ca import spdm_evidence
here = Path(__file__).parent
(here / "asked").write_text(" ".join(sys.argv[1:]))
nonce = bytes.fromhex(sys.argv[sys.argv.index("--nonce") + 1])
key = serialization.load_pem_private_key((here / "gpu.key").read_bytes(), None)
evidence = spdm_evidence(key, nonce, {{1: bytes.fromhex({measurement!r})}})
print(json.dumps({{"evidences": [{{"arch": "HOPPER", "nonce": nonce.hex(),
    "evidence": base64.b64encode(evidence).decode(),
    "certificate": base64.b64encode((here / "gpu.pem").read_bytes()).decode()}}],
    "result_code": 0, "result_message": "Ok"}}))
"""

FAKE_RECORDED_TOOL = """#!/bin/sh
# Stands in for nvattest: prints evidence recorded from a genuine H100.
echo "$@" > "$(dirname "$0")/asked"
cat "$(dirname "$0")/recorded.json"
"""

FAKE_BROKEN_TOOL = """#!/bin/sh
echo "NVML: no GPU in confidential-computing mode" >&2
exit 3
"""


def install(directory: Path, script: str) -> Path:
    directory.mkdir(exist_ok=True)
    tool = directory / "nvattest"
    tool.write_text(script)
    tool.chmod(0o755)
    return tool


def signing_tool(directory: Path) -> Nvattest:
    tool = install(directory, FAKE_SIGNING_TOOL.format(python=sys.executable, repo=str(REPO),
                                                       measurement=MEASUREMENT.hex()))
    nvidia = VENDORS.nvidia
    (directory / "gpu.key").write_bytes(nvidia.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "gpu.pem").write_bytes(nvidia.chain_pem())
    found = find_nvattest(str(directory))
    assert found is not None
    assert found.path == str(tool)
    return found


def recorded_tool(directory: Path) -> Nvattest:
    raw = bytes.fromhex((NVIDIA_DATA / "hopperAttestationReport.txt").read_text().strip())
    chain = (NVIDIA_DATA / "hopper_cert_chain_case1.txt").read_bytes()
    install(directory, FAKE_RECORDED_TOOL)
    (directory / "recorded.json").write_text(json.dumps({
        "evidences": [{"arch": "HOPPER", "nonce": raw[4:36].hex(),
                       "evidence": base64.b64encode(raw).decode(),
                       "certificate": base64.b64encode(chain).decode()}],
        "result_code": 0, "result_message": "Ok"}))
    found = find_nvattest(str(directory))
    assert found is not None
    return found


class Agent:
    """The agent app on 127.0.0.1 with a test certificate; `ask` fetches one document."""

    def __init__(self, tmp_path: Path, gpu: Nvattest | None) -> None:
        cert = self_signed("vm")[1]
        self.certificate = cert.public_bytes(serialization.Encoding.DER)
        (tmp_path / "vm.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.platform = PlatformStandIn()
        self.app = build_agent_app(AgentSettings(tmp_path / "vm.crt"), self.platform, gpu)

    def ask(self, server: ServerThread, nonce: bytes) -> httpx.Response:
        return httpx.get(f"{server.url}{EVIDENCE_PATH}?nonce={nonce.hex()}", timeout=30)

    def bound(self, nonce: bytes) -> bytes:
        return binding(nonce, spki_sha256(self.certificate))

    def verify(self, body: bytes, nonce: bytes, roots: Roots) -> Evidence:
        """What the gateway does with the document it fetched."""
        verifier = EvidenceVerifier(roots, NoCollateral(), clock=AT.timestamp)
        fetched = Fetched(body, self.bound(nonce), hashlib.sha256(self.certificate).digest())
        return asyncio.run(verifier.verify(fetched))


class NoCollateral:
    """Nothing the agent should have sent; revocation data as AMD KDS and NVIDIA's responder
    would answer for the test vendors (an agent without --staple-ocsp staples none: the
    gateway asks)."""

    async def vcek(self, report: SnpReport) -> bytes:
        raise AssertionError("the agent sent the VCEK")

    async def tdx(self, quote: TdxQuote) -> Collateral:
        raise AssertionError("no TDX here")

    async def amd_crl(self, product: str, kind: str) -> bytes:
        return VENDORS.amd.crl(kind)

    async def ocsp(self, cert: x509.Certificate, issuer: x509.Certificate,
                   responder: str) -> bytes:
        assert responder == OCSP_URL
        return VENDORS.nvidia.ocsp(cert=cert)


def test_gpu_evidence_is_bound_to_the_nonce_and_verifies_at_the_gateway(
        tmp_path: Path) -> None:
    tool = signing_tool(tmp_path / "bin")
    agent = Agent(tmp_path, tool)
    nonce = os.urandom(32)
    with ServerThread(agent.app) as server:
        answer = agent.ask(server, nonce)
    assert answer.status_code == 200, answer.text
    formats = [part["format"] for part in answer.json()["evidence"]]
    assert formats == ["sev-snp", "nvidia-gpu"]
    bound = agent.bound(nonce)
    assert (tmp_path / "bin" / "asked").read_text() == \
        f"collect-evidence --device gpu --nonce {bound[:32].hex()}"
    evidence = agent.verify(answer.content, nonce, VENDORS.roots())
    assert evidence.snp is not None
    assert evidence.snp.report.report_data == bound
    assert [gpu.evidence.requester_nonce for gpu in evidence.gpus] == [bound[:32]]
    assert evidence.gpus[0].evidence.measurements == {1: MEASUREMENT}
    # The same document presented for another nonce is a replay.
    with pytest.raises(EvidenceError, match="not bound to this nonce"):
        agent.verify(answer.content, os.urandom(32), VENDORS.roots())


def test_recorded_genuine_gpu_evidence_reaches_the_verifier(tmp_path: Path) -> None:
    agent = Agent(tmp_path, recorded_tool(tmp_path / "bin"))
    nonce = os.urandom(32)
    with ServerThread(agent.app) as server:
        answer = agent.ask(server, nonce)
    assert answer.status_code == 200, answer.text
    gpu_part = answer.json()["evidence"][1]
    chain = gpu_part["certificates"].encode()
    # Chain to NVIDIA's pinned root and the H100's signature hold through the translation...
    genuine = verify_gpu_evidence(bytes.fromhex(gpu_part["evidence"]), chain,
                                  expected_nonce=None, at=AT)
    assert len(genuine.measurements) == 64
    # ...and the gateway refuses it for the one reason it must: NVIDIA's recording was asked
    # with another nonce than this request's.
    roots = Roots(amd=VENDORS.amd.roots, intel=VENDORS.intel.root, nvidia=nvidia_root())
    with pytest.raises(EvidenceError, match="request nonce is not this gateway's"):
        agent.verify(answer.content, nonce, roots)


def test_a_failing_gpu_tool_refuses_the_request(tmp_path: Path) -> None:
    install(tmp_path / "bin", FAKE_BROKEN_TOOL)
    tool = find_nvattest(str(tmp_path / "bin"))
    agent = Agent(tmp_path, tool)
    with ServerThread(agent.app) as server:
        answer = agent.ask(server, os.urandom(32))
    assert answer.status_code == 503
    assert answer.json()["error"] == ("GPU evidence: nvattest exited with 3: NVML: no GPU in "
                                      "confidential-computing mode")


def test_without_nvattest_the_agent_serves_cpu_evidence_and_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert gpu_source(search_path=str(empty)) is None
    assert gpu_source(enabled=False, search_path=str(empty)) is None
    logged = capsys.readouterr().err
    assert "gpu_evidence_unavailable" in logged
    assert "nvattest not found on PATH: serving CPU evidence only" in logged
    assert "gpu_evidence_off" in logged
    agent = Agent(tmp_path, None)
    with ServerThread(agent.app) as server:
        answer = agent.ask(server, os.urandom(32))
    assert [part["format"] for part in answer.json()["evidence"]] == ["sev-snp"]


@pytest.mark.parametrize(("output", "reason"), [
    (b"GPU 0: evidence collected", "printed no JSON"),
    (b'{"evidences": [], "result_code": 0}', "no GPU evidence"),
    (b'{"evidences": [], "result_code": 7, "result_message": "NVML error"}',
     "result 7 \\(NVML error\\)"),
    (b'{"evidences": [{"evidence": "!!", "certificate": ""}], "result_code": 0}',
     "GPU 0 has no base64 evidence"),
    (json.dumps({"evidences": [{"evidence": base64.b64encode(b"\x11\x60rest").decode(),
                                "certificate": base64.b64encode(b"-----BEGIN CERTIFICATE")
                                .decode()}], "result_code": 0}).encode(),
     "not an SPDM measurement transcript"),
])
def test_output_the_agent_cannot_translate_is_refused(output: bytes, reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        parts_from_output(output)


def test_the_cli_can_turn_gpu_evidence_off(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main  # noqa: PLC0415

    cert = self_signed("vm")[1]
    (tmp_path / "vm.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(SystemExit, match="not found"):  # no configfs-tsm outside a TEE
        main(["attest", "agent", "--cert", str(tmp_path / "vm.crt"), "--no-gpu",
              "--tsm-root", str(tmp_path / "no-tsm")])
    assert "gpu_evidence_off" in capsys.readouterr().err


class MustBeStapled(NoCollateral):
    """The gateway's side when the agent stapled: the responder must not be needed."""

    async def ocsp(self, cert: x509.Certificate, issuer: x509.Certificate,
                   responder: str) -> bytes:
        raise AssertionError("the agent stapled no response about this certificate")


def stapling_agent(tmp_path: Path, responder_url: str) -> Agent:
    """An agent stapling what the loopback responder answers, asked as the gateway would
    (POST with a nonce), kept in tmp_path/ocsp."""
    settings = AttestationSettings(
        amd_kds_url=None, intel_pcs_url=None, cache_dir=str(tmp_path / "ocsp"),
        ocsp_responders={OCSP_URL: OcspResponder(method="post", url=responder_url + "/")})
    transport = NetworkTransport()
    stapler = OcspStapler(CollateralStore(settings, transport), VENDORS.nvidia.root,
                          closing=transport.close)
    tmp_path.mkdir(exist_ok=True)
    tool = signing_tool(tmp_path / "bin")
    agent = Agent(tmp_path, tool)
    agent.app = build_agent_app(AgentSettings(tmp_path / "vm.crt"), agent.platform, tool,
                                stapler)
    return agent


def test_the_agent_staples_the_responders_answer_and_the_gateway_takes_it(
        tmp_path: Path) -> None:
    responder = Responder(ca=VENDORS.nvidia)
    with ServerThread(responder.app()) as ocsp_server:
        agent = stapling_agent(tmp_path, ocsp_server.url)
        with ServerThread(agent.app) as server:
            nonces = [os.urandom(32), os.urandom(32)]
            answers = [agent.ask(server, nonce) for nonce in nonces]
    assert len(responder.requests) == 1  # the second request's staple came from the cache
    for answer, nonce in zip(answers, nonces, strict=True):
        gpu_part = answer.json()["evidence"][1]
        assert len(gpu_part["ocsp"]) == 1
        verifier = EvidenceVerifier(VENDORS.roots(), MustBeStapled(), clock=AT.timestamp)
        fetched = Fetched(answer.content, agent.bound(nonce),
                          hashlib.sha256(agent.certificate).digest())
        assert len(asyncio.run(verifier.verify(fetched)).gpus) == 1


def test_a_revoked_stapled_answer_refuses_and_an_unreachable_responder_staples_none(
        tmp_path: Path) -> None:
    with ServerThread(Responder(status="revoked", ca=VENDORS.nvidia).app()) as ocsp_server:
        agent = stapling_agent(tmp_path, ocsp_server.url)
        nonce = os.urandom(32)
        with ServerThread(agent.app) as server:
            answer = agent.ask(server, nonce)
    with pytest.raises(EvidenceError, match="is revoked"):
        agent.verify(answer.content, nonce, VENDORS.roots())
    agent = stapling_agent(tmp_path / "down", "http://127.0.0.1:9")
    with ServerThread(agent.app) as server:
        answer = agent.ask(server, nonce)
    assert answer.status_code == 200  # evidence served; the gateway asks the responder
    assert "ocsp" not in answer.json()["evidence"][1]
    assert len(agent.verify(answer.content, nonce, VENDORS.roots()).gpus) == 1
