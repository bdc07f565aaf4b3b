"""`veil attest agent` answers the evidence protocol; the gateway attests a backend through it.
The platform's report interface (configfs-tsm) exists only inside a confidential VM, so the
report source here is the test AMD, signing exactly the bytes the agent asks it to."""

from __future__ import annotations

import struct
from pathlib import Path

import httpx2 as httpx

from gateway.attestation.agent import (
    EVIDENCE_PATH,
    VCEK_GUID,
    AgentSettings,
    TsmReport,
    build_agent_app,
    vcek_from_auxblob,
)
from tests.attestation_ca import snp_report
from tests.integration.test_attested_routing import (
    POLICY,
    TCB,
    VCEK,
    VCEK_KEY,
    ConfidentialBackend,
    attested,
    chat,
    roots_dir,
    tls_context,
    wait_attested,
)
from tests.servers import ServerThread, gateway_for, settings_for


def certificate_table(vcek: bytes) -> bytes:
    """The host's SNP certificate table: one VCEK entry, then the all-zero terminator."""
    start = 48
    return VCEK_GUID + struct.pack("<II", start, len(vcek)) + bytes(24) + vcek


class PlatformStandIn:
    """Stands in for the platform: signs a report over exactly the report_data it is given."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def report(self, report_data: bytes) -> TsmReport:
        self.asked.append(report_data)
        return TsmReport("sev_guest", snp_report(VCEK_KEY, report_data=report_data, tcb=TCB),
                         certificate_table(VCEK))


def test_vcek_is_found_in_the_certificate_table() -> None:
    assert vcek_from_auxblob(certificate_table(VCEK)) == VCEK
    assert vcek_from_auxblob(bytes(24)) is None
    assert vcek_from_auxblob(b"") is None


def test_gateway_attests_a_backend_through_the_agent(tmp_path: Path) -> None:
    context, certificate = tls_context(tmp_path, "vm")  # also writes vm.crt, what TLS serves
    platform = PlatformStandIn()
    app = build_agent_app(AgentSettings(tmp_path / "vm.crt"), platform)
    model = ConfidentialBackend(certificate)
    app.router.add_post("/v1/chat/completions", model.chat)  # the model server, same origin
    with ServerThread(app, ssl_context=context) as vm:
        bad = httpx.get(vm.url + EVIDENCE_PATH + "?nonce=zz", verify=False)
        assert bad.status_code == 400
        settings = settings_for([attested("vm", vm.url)], policy=POLICY,
                                attestation={"amd_roots_dir": roots_dir(tmp_path)})
        with gateway_for(settings) as gw:
            wait_attested(gw, "vm")
            assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
    assert model.served == 1
    assert platform.asked
    assert all(len(data) == 64 for data in platform.asked)
