"""The gateway proves itself to its clients: a real gateway on loopback TLS, in front of the demo
upstream, serving its own evidence (the test AMD stands in for configfs-tsm, signing exactly
the report_data the gateway asks for), and the official SDKs sending through the client helper,
which verifies the gateway first and then pins the key it proved."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest
import yaml
from aiohttp import web

from gateway.app import GATEWAY, build_app
from gateway.attestation.agent import (
    EVIDENCE_PATH,
    AgentSettings,
    ReportSource,
    TsmReport,
    build_agent_app,
)
from gateway.attestation.binding import gateway_binding, policy_set_digest, spki_sha256
from gateway.attestation.snp import parse_report
from gateway.cli import main
from gateway.client.attested import (
    AsyncAttestedTransport,
    AttestedTransport,
    GatewayKeyChanged,
    GatewayNotTrusted,
)
from gateway.client.verify import Expected, verify_gateway
from gateway.errors import EvidenceError
from gateway.policy.loader import load_policy
from gateway.settings import AttestationSettings
from tests.attestation_ca import MEASUREMENT, MRTD, snp_report, tls_context
from tests.conftest import Demo
from tests.integration.test_attest_agent import certificate_table
from tests.integration.test_attested_routing import (
    LEVEL,
    POLICY,
    TCB,
    TDX_CA,
    TDX_LEVEL,
    VCEK,
    VCEK_KEY,
    VENDORS,
    roots_dir,
    tdx_policy,
)
from tests.servers import (
    TEST_KEY,
    TEST_POLICY,
    ServerThread,
    demo_backend,
    gateway_for,
    settings_for,
)

OTHER_MEASUREMENT = bytes(range(100, 148))
SECRET = "mail jane.roe@example.com about the merger"


@dataclass
class Platform:
    """The gateway's SEV-SNP platform: a report over exactly the report_data asked for."""

    measurement: bytes = MEASUREMENT
    asked: list[bytes] = field(default_factory=list)

    def report(self, report_data: bytes) -> TsmReport:
        self.asked.append(report_data)
        return TsmReport("sev_guest", snp_report(VCEK_KEY, report_data=report_data, tcb=TCB,
                                                 measurement=self.measurement),
                         certificate_table(VCEK))


@dataclass
class Attested:
    """A self-attesting gateway and what a client needs to judge it."""

    server: ServerThread
    certificate: bytes  # DER, what the gateway serves
    level_file: Path  # the client's policy file, with the trust level
    attestation: AttestationSettings  # the client's: the test AMD's roots, nothing fetched
    policy_file: Path  # the gateway's own policy

    @property
    def url(self) -> str:
        return self.server.url

    def digest(self) -> str:
        """The policy set digest the gateway should be running: computed from the file."""
        loaded = load_policy(self.policy_file)
        return policy_set_digest([(loaded.name, loaded.digest)])

    def expected(self, *, digest: str | None = None,
                 measurement: bytes = MEASUREMENT) -> Expected:
        level = load_policy(self.level_file).policy.trust_levels[LEVEL]
        if measurement != MEASUREMENT:
            level = level.model_copy(update={"sev_snp": level.sev_snp.model_copy(
                update={"measurements": [measurement.hex()]})})
        return Expected.of(LEVEL, level, [digest or self.digest()])

    def transport(self, **kwargs: Any) -> AttestedTransport:
        return AttestedTransport(self.url, kwargs.pop("expected", None) or self.expected(),
                                 attestation=self.attestation, **kwargs)


def self_attesting(tmp_path: Path, demo: Demo, platform: ReportSource, port: int = 0,
                   name: str = "gw", **own: Any) -> Attested:
    """`own`: more self_attestation settings."""
    _, certificate = tls_context(tmp_path, name)
    level_file = tmp_path / "client-policy.yaml"
    level_file.write_text(yaml.safe_dump({**POLICY, "name": "client"}))
    policy_file = tmp_path / "gateway-policy.yaml"
    policy_file.write_text(yaml.safe_dump({**TEST_POLICY, "name": "gateway-policy"}))
    backends = [demo_backend("demo-openai", demo.url),
                demo_backend("demo-anthropic", demo.url, "anthropic")]
    settings = settings_for(
        backends, listen={"tls_cert_file": str(tmp_path / f"{name}.crt"),
                          "tls_key_file": str(tmp_path / f"{name}.key")},
        self_attestation={"enabled": True, **own},
        policies={"files": [str(policy_file)], "watch_interval_s": 0})
    client = AttestationSettings(cache_dir=None, amd_kds_url=None, intel_pcs_url=None,
                                 amd_roots_dir=roots_dir(tmp_path))
    return Attested(gateway_for(settings, platform=platform, port=port), certificate,
                    level_file, client, policy_file)


@pytest.fixture
def platform() -> Platform:
    return Platform()


@pytest.fixture
def gateway(tmp_path: Path, demo: Demo, platform: Platform) -> Iterator[Attested]:
    attested = self_attesting(tmp_path, demo, platform)
    with attested.server:
        yield attested


def openai_client(transport: httpx.BaseTransport, url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=TEST_KEY, max_retries=0,
                         http_client=httpx.Client(transport=transport))


def anthropic_client(transport: httpx.BaseTransport, url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=TEST_KEY, max_retries=0,
                               http_client=httpx.Client(transport=transport))


def ask_openai(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": SECRET}])
    return reply.choices[0].message.content or ""


def ask_anthropic(client: anthropic.Anthropic) -> str:
    reply = client.messages.create(model="test-model", max_tokens=64,
                                   messages=[{"role": "user", "content": SECRET}])
    return "".join(b.text for b in reply.content if b.type == "text")


def raw_evidence(url: str, nonce: bytes) -> dict[str, Any]:
    response = httpx.get(url + EVIDENCE_PATH, params={"nonce": nonce.hex()}, verify=False)
    assert response.status_code == 200, response.text
    return response.json()


# -- the SDKs through the helper ----------------------------------------------------------------

def test_openai_sdk_sends_to_a_gateway_that_proves_its_measurement_and_policies(
        gateway: Attested, demo: Demo, platform: Platform) -> None:
    client = openai_client(gateway.transport(), gateway.url)
    assert "jane.roe@example.com" in ask_openai(client)  # restored on the way back
    assert "jane.roe@example.com" not in str(demo.state.last_body)  # masked on the way out
    assert len(platform.asked) == 1  # verified once, then pinned
    ask_openai(client)
    assert len(platform.asked) == 1


def test_anthropic_sdk_sends_to_a_gateway_that_proves_its_measurement_and_policies(
        gateway: Attested, demo: Demo) -> None:
    client = anthropic_client(gateway.transport(), gateway.url)
    assert "jane.roe@example.com" in ask_anthropic(client)
    assert demo.state.counts  # the upstream answered


def test_a_gateway_measured_as_another_image_gets_nothing(
        gateway: Attested, demo: Demo) -> None:
    client = openai_client(gateway.transport(expected=gateway.expected(
        measurement=OTHER_MEASUREMENT)), gateway.url)
    with pytest.raises(openai.APIConnectionError) as refused:
        ask_openai(client)
    assert isinstance(refused.value.__cause__, GatewayNotTrusted)
    assert "measurement" in str(refused.value.__cause__)
    assert demo.state.last_body is None
    assert not demo.state.received


def test_a_gateway_running_other_policies_gets_nothing(gateway: Attested, demo: Demo) -> None:
    unexpected = policy_set_digest([("gateway-policy", "sha256:" + "0" * 64)])
    client = anthropic_client(gateway.transport(expected=gateway.expected(digest=unexpected)),
                              gateway.url)
    with pytest.raises(anthropic.APIConnectionError) as refused:
        ask_anthropic(client)
    assert isinstance(refused.value.__cause__, GatewayNotTrusted)
    assert f"runs policy set {gateway.digest()}" in str(refused.value.__cause__)
    assert demo.state.last_body is None
    assert not demo.state.received


def test_a_machine_without_the_proven_key_gets_nothing(tmp_path: Path, demo: Demo,
                                                       platform: Platform) -> None:
    """The gateway is verified, then another server (another key) takes its address: the
    helper refuses it after the handshake, before the request, and verifies again next time."""
    first = self_attesting(tmp_path, demo, platform)
    with first.server:
        client = openai_client(first.transport(), first.url)
        ask_openai(client)
        port = first.server.port
    impostor = Impostor()
    context, _ = tls_context(tmp_path, "impostor")
    with ServerThread(impostor.app(), port, ssl_context=context):
        with pytest.raises(openai.APIConnectionError) as refused:
            ask_openai(client)
        assert isinstance(refused.value.__cause__, GatewayKeyChanged)
        with pytest.raises(openai.APIConnectionError) as again:  # verified again: no evidence
            ask_openai(client)
    assert isinstance(again.value.__cause__, GatewayNotTrusted)
    assert impostor.paths == [EVIDENCE_PATH]  # it was only asked to prove itself


@dataclass
class Impostor:
    paths: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        async def anything(request: web.Request) -> web.Response:
            self.paths.append(request.path)
            return web.json_response({"error": "no"}, status=404)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", anything)
        return app


def test_async_openai_sdk_through_the_async_transport(gateway: Attested, demo: Demo) -> None:
    async def ask() -> str:
        transport = AsyncAttestedTransport(gateway.url, gateway.expected(),
                                           attestation=gateway.attestation)
        async with httpx.AsyncClient(transport=transport) as http:
            client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY,
                                        max_retries=0, http_client=http)
            reply = await client.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": SECRET}])
            return reply.choices[0].message.content or ""

    assert "jane.roe@example.com" in asyncio.run(ask())


def test_the_helper_serves_only_the_gateways_origin(gateway: Attested) -> None:
    with httpx.Client(transport=gateway.transport()) as http, \
            pytest.raises(GatewayNotTrusted, match="not the attested gateway's origin"):
        http.get(gateway.url.replace("https://", "http://") + "/v1/models")


def test_the_verdict_is_renewed_after_its_max_age(gateway: Attested,
                                                  platform: Platform) -> None:
    now = [1_000_000_000.0]
    transport = gateway.transport(max_age_s=60, clock=lambda: now[0])
    transport.verified()
    transport.verified()
    assert len(platform.asked) == 1
    now[0] += 61
    transport.verified()
    assert len(platform.asked) == 2


# -- the evidence itself ------------------------------------------------------------------------

def test_evidence_binds_nonce_tls_key_and_the_policies_in_force(
        gateway: Attested) -> None:
    nonce = bytes(range(32))
    document = raw_evidence(gateway.url, nonce)
    digest = gateway.digest()
    assert document["binding"] == "veil-gateway-attestation-v1"
    assert document["policy_set_digest"] == digest
    assert document["policies"] == [{"name": "gateway-policy",
                                     "digest": load_policy(gateway.policy_file).digest}]
    report = parse_report(base64.b64decode(document["evidence"][0]["report"]))
    assert report.report_data == gateway_binding(nonce, spki_sha256(gateway.certificate), digest)


def test_the_evidence_follows_a_policy_reload(gateway: Attested) -> None:
    before = raw_evidence(gateway.url, bytes(32))["policy_set_digest"]
    gateway.policy_file.write_text(yaml.safe_dump({
        **TEST_POLICY, "name": "gateway-policy",
        "data_classes": {"personal": {"entities": ["EMAIL"]}}}))
    assert gateway.server.call(gateway.server.app[GATEWAY].policies.reload("test"))
    nonce = bytes(range(32, 64))
    document = raw_evidence(gateway.url, nonce)
    assert document["policy_set_digest"] == gateway.digest() != before
    report = parse_report(base64.b64decode(document["evidence"][0]["report"]))
    assert report.report_data == gateway_binding(nonce, spki_sha256(gateway.certificate),
                                                 gateway.digest())
    verdict = asyncio.run(verify_gateway(gateway.url, gateway.expected(),
                                         attestation=gateway.attestation))
    assert verdict.ok, verdict.reasons
    stale = asyncio.run(verify_gateway(gateway.url, gateway.expected(digest=before),
                                       attestation=gateway.attestation))
    assert not stale.ok


class TdxPlatform:
    """A TD's configfs-tsm: a quote over the report_data asked for."""

    def report(self, report_data: bytes) -> TsmReport:
        return TsmReport("tdx_guest", TDX_CA.quote(report_data=report_data, mrtd=MRTD), b"")


def test_a_tdx_gateway_proves_its_mrtd_with_the_collateral_it_sends(tmp_path: Path,
                                                                   demo: Demo) -> None:
    folder = TDX_CA.write_collateral(tmp_path / "intel")
    attested = self_attesting(tmp_path, demo, TdxPlatform(), intel_collateral_dir=str(folder))
    level_file = tmp_path / "tdx-level.yaml"
    level_file.write_text(yaml.safe_dump(tdx_policy()))
    level = load_policy(level_file).policy.trust_levels[TDX_LEVEL]
    with attested.server:
        document = raw_evidence(attested.url, bytes(32))
        assert document["evidence"][0]["format"] == "tdx"
        assert "collateral" in document["evidence"][0]
        verdict = asyncio.run(verify_gateway(
            attested.url, Expected.of(TDX_LEVEL, level, [attested.digest()]),
            roots=VENDORS.roots(), attestation=AttestationSettings(
                cache_dir=None, amd_kds_url=None, intel_pcs_url=None,
                intel_collateral_dir=str(folder))))
    assert verdict.ok, verdict.reasons
    assert verdict.values["mrtd"] == MRTD.hex()


def test_a_bad_nonce_is_a_400(gateway: Attested) -> None:
    response = httpx.get(gateway.url + EVIDENCE_PATH + "?nonce=zz", verify=False)
    assert response.status_code == 400


def test_without_self_attestation_there_is_no_evidence_path(tmp_path: Path,
                                                            demo: Demo) -> None:
    tls_context(tmp_path, "plain")
    settings = settings_for([demo_backend("demo-openai", demo.url)],
                            listen={"tls_cert_file": str(tmp_path / "plain.crt"),
                                    "tls_key_file": str(tmp_path / "plain.key")})
    with gateway_for(settings) as gw:
        assert gw.url.startswith("https://")
        response = httpx.get(gw.url + EVIDENCE_PATH, params={"nonce": "00" * 32},
                             verify=False)
        assert response.status_code == 404
        assert httpx.get(gw.url + "/healthz", verify=False).status_code == 200


def test_told_to_attest_itself_without_a_tsm_the_gateway_does_not_start(
        tmp_path: Path, demo: Demo) -> None:
    tls_context(tmp_path, "gw")
    settings = settings_for(
        [demo_backend("demo-openai", demo.url)],
        listen={"tls_cert_file": str(tmp_path / "gw.crt"),
                "tls_key_file": str(tmp_path / "gw.key")},
        self_attestation={"enabled": True, "tsm_root": str(tmp_path / "no-tsm")})
    with pytest.raises(EvidenceError, match="no-tsm not found"):
        build_app(settings)


# -- veil attest verify-gateway -----------------------------------------------------------------

def verify_cli(gateway: Attested, digest: str, level_file: Path | None = None) -> list[str]:
    return ["attest", "verify-gateway", gateway.url, "--policy",
            str(level_file or gateway.level_file), "--level", LEVEL, "--policy-digest", digest,
            "--amd-roots-dir", gateway.attestation.amd_roots_dir or "", "--offline"]


def test_verify_gateway_exits_0_for_the_expected_gateway(
        gateway: Attested, capsys: pytest.CaptureFixture[str]) -> None:
    """With the digest `veil policy check` prints for the gateway's policy files."""
    assert main(["policy", "check", str(gateway.policy_file)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("policy set: ")]
    digest = line.removeprefix("policy set: ")
    assert digest == gateway.digest()
    assert main(verify_cli(gateway, digest.removeprefix("sha256:"))) == 0
    out = capsys.readouterr().out
    assert out.startswith("VERIFIED")
    assert f"measurement: {MEASUREMENT.hex()}" in out
    assert f"policy_set_digest: {gateway.digest()}" in out
    assert f"trust_level: {LEVEL}: met" in out


def test_verify_gateway_exits_1_for_other_policies_or_measurement(
        gateway: Attested, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(verify_cli(gateway, "ab" * 32)) == 1
    assert "runs policy set" in capsys.readouterr().out
    other = tmp_path / "other-level.yaml"
    other.write_text(yaml.safe_dump({**POLICY, "name": "client", "trust_levels": {LEVEL: {
        "sev-snp": {"measurements": [OTHER_MEASUREMENT.hex()]}}}}))
    assert main(verify_cli(gateway, gateway.digest(), other)) == 1
    captured = capsys.readouterr()
    assert "REFUSED" in captured.out
    assert "refused" in captured.err


def test_verify_gateway_refuses_plain_http(gateway: Attested,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = verify_cli(gateway, gateway.digest())
    argv[2] = gateway.url.replace("https://", "http://")
    assert main(argv) == 1
    assert "https:// only" in capsys.readouterr().out


def test_a_backends_evidence_does_not_pass_for_a_gateways(tmp_path: Path) -> None:
    """The agent's document for the same machine and key: another label, so refused."""
    context, _ = tls_context(tmp_path, "vm")
    agent = build_agent_app(AgentSettings(tmp_path / "vm.crt"), Platform())
    level = load_policy_level(tmp_path)
    with ServerThread(agent, ssl_context=context) as vm:
        verdict = asyncio.run(verify_gateway(vm.url, Expected.of(
            LEVEL, level, ["sha256:" + "0" * 64]), attestation=AttestationSettings(
            cache_dir=None, amd_kds_url=None, intel_pcs_url=None,
            amd_roots_dir=roots_dir(tmp_path))))
    assert not verdict.ok
    assert "not a gateway's evidence" in verdict.reasons[0]


def load_policy_level(tmp_path: Path) -> Any:
    path = tmp_path / "level.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    return load_policy(path).policy.trust_levels[LEVEL]

