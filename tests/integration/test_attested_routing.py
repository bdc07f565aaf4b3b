"""Attestation-gated routing over real TLS on loopback: two backends claim to be confidential;
only the one whose evidence verifies, meets the policy's trust level and is bound to its own TLS
key and this gateway's nonce ever receives data that needs that level.

The gateway trusts the test AMD through `attestation.amd_roots_dir` (the operator's way to
replace AMD roots); the TDX and GPU cases hand the test vendors' roots in through the gateway's
outbound seam (`Outbound(attestation_roots=...)`), and it attests the loopback backends over
the real network."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from aiohttp import web

from gateway.app import GATEWAY, Outbound
from gateway.attestation.binding import binding, spki_sha256
from gateway.attestation.verifier import AttestationService
from gateway.policy.loader import load_policy
from tests.attestation_ca import MEASUREMENT, MRTD, TOKEN_ISSUER, Vendors, tls_context
from tests.servers import TEST_KEY, TEST_POLICY, ServerThread, gateway_for, settings_for

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
VENDORS = Vendors()
CA, TDX_CA, GPU_CA = VENDORS.amd, VENDORS.intel, VENDORS.nvidia
ISSUER = TOKEN_ISSUER
TCB = VENDORS.tcb
VCEK_KEY, VCEK = VENDORS.vcek_key, VENDORS.vcek
LEVEL = "confidential-cpu"
POLICY = {**TEST_POLICY,
          "data_classes": {"personal": {"entities": ["EMAIL"]}},
          "routing": {"personal": {"require": LEVEL}},
          "trust_levels": {LEVEL: {"max_age_s": 600, "sev-snp": {
              "measurements": [MEASUREMENT.hex()], "min_tcb": {"snp": 8}}}}}


@dataclass
class ConfidentialBackend:
    """A model server with an evidence endpoint. `measurement` is what its report claims;
    `replay` serves one report made for a nonce long gone."""

    certificate: bytes
    measurement: bytes = MEASUREMENT
    replay: bool = False
    kind: str = "sev-snp"
    gpu: bool = False
    endorsed: bool = True  # sends its VCEK / TDX collateral (else the gateway fetches them)
    token_claims: dict[str, Any] | None = None  # adds an attestation service's token
    ocsp: bytes | None = None  # the OCSP response stapled to the GPU part (a good one if None)
    served: int = 0
    nonces: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/veil-attestation", self.evidence)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def evidence(self, request: web.Request) -> web.Response:
        nonce = bytes.fromhex(request.query["nonce"])
        self.nonces.append(nonce.hex())
        bound = binding(b"\0" * 32 if self.replay else nonce, spki_sha256(self.certificate))
        tokens = () if self.token_claims is None else (
            VENDORS.token(bound, now=time.time(), **self.token_claims),)
        return web.json_response(VENDORS.evidence(
            bound, kind=self.kind, measurement=self.measurement, endorsed=self.endorsed,
            gpu=self.gpu, tokens=tokens, ocsp=self.ocsp))

    async def chat(self, request: web.Request) -> web.Response:
        self.served += 1
        body = await request.json()
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "echo: " + body["messages"][-1]["content"]}}]})


def roots_dir(directory: Path, **crls: bytes) -> str:
    """The test AMD's chains and CRLs (empty ones unless `crl`/`vlek_crl` say otherwise)."""
    return CA.roots_dir(directory, **crls)


def attested(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "url": url, "connect_timeout_s": 2, "read_timeout_s": 5,
            "attestation": {"refresh_s": 300, "timeout_s": 5}}


def chat(url: str, content: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=30, json={
        "model": "test-model", "messages": [{"role": "user", "content": content}]})


def policy_digest(gw: ServerThread) -> str:
    """The digest of the gateway's (only) policy: what its verdicts are keyed by."""
    return load_policy(gw.app[GATEWAY].settings.policies.files[0]).digest


def wait_attested(gw: ServerThread, backend: str, level: str = LEVEL) -> AttestationService:
    """Until the backend's verdict meets the level under the gateway's (only) policy."""
    service = gw.app[GATEWAY].attestation
    digest = policy_digest(gw)
    wait_until(lambda: service.meets(backend, digest, (level,)))
    return service


def wait_until(condition: Callable[[], object], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[ServerThread, dict[str, ConfidentialBackend]]]:
    contexts = {name: tls_context(tmp_path, name) for name in ("good", "other", "replay")}
    backends = {"good": ConfidentialBackend(contexts["good"][1]),
                "other": ConfidentialBackend(contexts["other"][1], measurement=bytes(48)),
                "replay": ConfidentialBackend(contexts["replay"][1], replay=True)}
    servers = {name: ServerThread(b.app(), ssl_context=contexts[name][0])
               for name, b in backends.items()}
    for server in servers.values():
        server.__enter__()
    try:
        settings = settings_for(
            [attested(name, servers[name].url) for name in ("other", "replay", "good")],
            policy=POLICY, attestation={"amd_roots_dir": roots_dir(tmp_path)})
        with gateway_for(settings) as gw:
            wait_attested(gw, "good")
            wait_until(lambda: all(b.nonces for b in backends.values()))
            yield gw, backends
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)


def test_only_the_attested_backend_receives_sensitive_data(
        world: tuple[ServerThread, dict[str, ConfidentialBackend]]) -> None:
    gw, backends = world
    for _ in range(5):
        r = chat(gw.url, "mail jane.roe@example.com")
        assert r.status_code == 200, r.text
        assert "jane.roe@example.com" in r.text  # restored for the client
    assert backends["good"].served == 5
    assert backends["other"].served == 0  # wrong measurement
    assert backends["replay"].served == 0  # evidence not bound to this gateway's nonce
    service = gw.app[GATEWAY].attestation
    assert not service.meets("other", policy_digest(gw), (LEVEL,))
    assert service.pin("replay") is None
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'veil_attestations_total{backend="good",result="verified"}' in metrics
    assert 'veil_attestations_total{backend="replay",result="refused"}' in metrics


def test_fresh_nonce_every_attestation(
        world: tuple[ServerThread, dict[str, ConfidentialBackend]]) -> None:
    gw, backends = world
    gw.app[GATEWAY].attestation.key_changed("good")  # forces a re-attestation
    wait_until(lambda: len(backends["good"].nonces) >= 2)
    nonces = backends["good"].nonces
    assert len(set(nonces)) == len(nonces)
    assert all(len(n) == 64 for n in nonces)


def test_no_attested_backend_refuses_503(tmp_path: Path) -> None:
    context, certificate = tls_context(tmp_path, "lonely")
    backend = ConfidentialBackend(certificate, measurement=bytes(48))
    with ServerThread(backend.app(), ssl_context=context) as server:
        settings = settings_for([attested("lonely", server.url)], policy=POLICY,
                                attestation={"amd_roots_dir": roots_dir(tmp_path)})
        with gateway_for(settings) as gw:
            wait_until(lambda: backend.nonces)
            refused = chat(gw.url, "mail jane.roe@example.com")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "no_attested_backend"
    assert backend.served == 0


def test_key_swap_is_refused_until_re_attested(tmp_path: Path) -> None:
    first_context, first = tls_context(tmp_path, "first")
    backend = ConfidentialBackend(first)
    server = ServerThread(backend.app(), ssl_context=first_context).__enter__()
    settings = settings_for([attested("tee", server.url)], policy=POLICY,
                            attestation={"amd_roots_dir": roots_dir(tmp_path)})
    with gateway_for(settings) as gw:
        service = wait_attested(gw, "tee")
        assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
        old = service.digest("tee")
        # The machine comes back on the same address with another TLS key.
        port = server.port
        server.__exit__(None, None, None)
        second_context, second = tls_context(tmp_path, "second")
        backend.certificate = second
        with ServerThread(backend.app(), port=port, ssl_context=second_context):
            served = backend.served
            first_try = chat(gw.url, "mail jane.roe@example.com")
            # The pinned connection refuses the new key: nothing reaches it unverified.
            assert first_try.status_code in (502, 503), first_try.text
            assert backend.served == served
            wait_until(lambda: service.digest("tee") not in (None, old))
            assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
            assert backend.served == served + 1


TDX_LEVEL = "confidential-tdx"


def tdx_policy() -> dict[str, Any]:
    """Personal data only to a TD with the test MRTD."""
    return {**POLICY, "routing": {"personal": {"require": TDX_LEVEL}},
            "trust_levels": {TDX_LEVEL: {"tdx": {"mrtd": [MRTD.hex()]}}}}


def test_tdx_backend_with_the_approved_mrtd_gets_the_data(tmp_path: Path) -> None:
    """The whole gateway, trusting the test Intel root handed in through its outbound seam."""
    rules = tdx_policy()
    contexts = {name: tls_context(tmp_path, name) for name in ("td", "other-td")}
    backends = {"td": ConfidentialBackend(contexts["td"][1], measurement=MRTD, kind="tdx"),
                "other-td": ConfidentialBackend(contexts["other-td"][1], measurement=bytes(48),
                                                kind="tdx")}
    with ServerThread(backends["td"].app(), ssl_context=contexts["td"][0]) as td, \
            ServerThread(backends["other-td"].app(), ssl_context=contexts["other-td"][0]) as ot:
        settings = settings_for([attested("other-td", ot.url), attested("td", td.url)],
                                policy=rules)
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            wait_attested(gw, "td", TDX_LEVEL)
            wait_until(lambda: backends["other-td"].nonces)
            service = gw.app[GATEWAY].attestation
            assert not service.meets("other-td", policy_digest(gw), (TDX_LEVEL,))
            pin = service.pin("td")
            for _ in range(3):
                assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
    assert (backends["td"].served, backends["other-td"].served) == (3, 0)
    assert pin is not None
    assert pin.fingerprint == hashlib.sha256(contexts["td"][1]).digest()


def test_gpu_level_needs_both_the_cpu_and_the_gpu_evidence(tmp_path: Path) -> None:
    level = "confidential-gpu"
    snp = POLICY["trust_levels"][LEVEL]["sev-snp"]
    rules = {**POLICY, "routing": {"personal": {"require": level}},
             "trust_levels": {level: {"sev-snp": snp,
                                      "nvidia-gpu": {"measurements": {1: ["11" * 48]}}}}}
    contexts = {name: tls_context(tmp_path, name) for name in ("cpu-only", "cpu-gpu")}
    backends = {"cpu-only": ConfidentialBackend(contexts["cpu-only"][1]),
                "cpu-gpu": ConfidentialBackend(contexts["cpu-gpu"][1], gpu=True)}
    with ServerThread(backends["cpu-only"].app(), ssl_context=contexts["cpu-only"][0]) as a, \
            ServerThread(backends["cpu-gpu"].app(), ssl_context=contexts["cpu-gpu"][0]) as b:
        settings = settings_for([attested("cpu-only", a.url), attested("cpu-gpu", b.url)],
                                policy=rules, attestation={"amd_roots_dir": roots_dir(tmp_path)})
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            wait_attested(gw, "cpu-gpu", level)
            wait_until(lambda: backends["cpu-only"].nonces)
            assert not gw.app[GATEWAY].attestation.meets("cpu-only", policy_digest(gw),
                                                         (level,))
            for _ in range(2):
                assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
    assert (backends["cpu-gpu"].served, backends["cpu-only"].served) == (2, 0)


def test_attestation_service_token_with_its_claims(tmp_path: Path) -> None:
    """Keys come from the JWKS the policy names; the token must carry this gateway's binding
    and the claims the level lists."""

    async def key_set(_: web.Request) -> web.Response:
        return web.json_response(VENDORS.jwks())

    jwks_app = web.Application()
    jwks_app.router.add_get("/jwks", key_set)
    contexts = {name: tls_context(tmp_path, name) for name in ("passing", "failing")}
    backends = {
        "passing": ConfidentialBackend(contexts["passing"][1],
                                       token_claims={"x-nvidia-overall-att-result": True}),
        "failing": ConfidentialBackend(contexts["failing"][1],
                                       token_claims={"x-nvidia-overall-att-result": False})}
    with ServerThread(jwks_app) as jwks, \
            ServerThread(backends["passing"].app(), ssl_context=contexts["passing"][0]) as a, \
            ServerThread(backends["failing"].app(), ssl_context=contexts["failing"][0]) as b:
        level = POLICY["trust_levels"][LEVEL]
        rules = {**POLICY, "trust_levels": {LEVEL: {**level, "token": {
            "issuer": ISSUER, "jwks_url": jwks.url + "/jwks",
            "claims": {"x-nvidia-overall-att-result": True}}}}}
        settings = settings_for([attested("failing", b.url), attested("passing", a.url)],
                                policy=rules, attestation={"amd_roots_dir": roots_dir(tmp_path)})
        with gateway_for(settings) as gw:
            wait_attested(gw, "passing")
            wait_until(lambda: backends["failing"].nonces)
            assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
    assert (backends["passing"].served, backends["failing"].served) == (1, 0)


def test_a_backend_can_require_a_level_for_everything(tmp_path: Path) -> None:
    """`backends.<name>.require`: no request at all, sensitive or not, reaches that backend
    unless it meets the level."""
    contexts = {name: tls_context(tmp_path, name) for name in ("wrong", "right")}
    backends = {"wrong": ConfidentialBackend(contexts["wrong"][1], measurement=bytes(48)),
                "right": ConfidentialBackend(contexts["right"][1])}
    rules = {**POLICY, "backends": {"wrong": {"require": LEVEL}, "right": {"require": LEVEL}}}
    with ServerThread(backends["wrong"].app(), ssl_context=contexts["wrong"][0]) as a, \
            ServerThread(backends["right"].app(), ssl_context=contexts["right"][0]) as b:
        settings = settings_for([attested("wrong", a.url), attested("right", b.url)],
                                policy=rules, attestation={"amd_roots_dir": roots_dir(tmp_path)})
        with gateway_for(settings) as gw:
            wait_attested(gw, "right")
            wait_until(lambda: backends["wrong"].nonces)
            assert chat(gw.url, "hello, nothing personal").status_code == 200
    assert (backends["wrong"].served, backends["right"].served) == (0, 1)


def refusals(gw: ServerThread, backend: str) -> float:
    return gw.app[GATEWAY].metrics.registry.get_sample_value(
        "veil_attestations_total", {"backend": backend, "result": "refused"}) or 0.0


def test_a_revoked_vcek_is_refused_and_nothing_is_routed(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The operator's CRL lists the machine's VCEK: no verdict, so personal data goes nowhere;
    the reason is in the log."""
    context, certificate = tls_context(tmp_path, "revoked")
    backend = ConfidentialBackend(certificate)
    with ServerThread(backend.app(), ssl_context=context) as server:
        crl = CA.crl(revoked=(VCEK,))
        settings = settings_for([attested("revoked", server.url)], policy=POLICY,
                                attestation={"amd_roots_dir": roots_dir(tmp_path, crl=crl)})
        with gateway_for(settings) as gw:
            wait_until(lambda: refusals(gw, "revoked") >= 1)
            assert gw.app[GATEWAY].attestation.digest("revoked") is None
            refused = chat(gw.url, "mail jane.roe@example.com")
    assert '"reason":"sev-snp: vcek revoked' in capfd.readouterr().err
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "no_attested_backend"
    assert backend.served == 0


def test_a_revoked_gpu_certificate_is_refused_and_the_gpu_level_not_met(tmp_path: Path) -> None:
    """The GPU part staples NVIDIA's answer that its certificate is revoked: the backend meets
    no level at all (the whole evidence is refused), so the request is not routed."""
    level = "confidential-gpu"
    snp = POLICY["trust_levels"][LEVEL]["sev-snp"]
    rules = {**POLICY, "routing": {"personal": {"require": level}},
             "trust_levels": {level: {"sev-snp": snp,
                                      "nvidia-gpu": {"measurements": {1: ["11" * 48]}}}}}
    context, certificate = tls_context(tmp_path, "gpu")
    backend = ConfidentialBackend(certificate, gpu=True, ocsp=GPU_CA.ocsp(status="revoked"))
    with ServerThread(backend.app(), ssl_context=context) as server:
        settings = settings_for([attested("gpu", server.url)], policy=rules,
                                attestation={"amd_roots_dir": roots_dir(tmp_path)})
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            wait_until(lambda: refusals(gw, "gpu") >= 1)
            refused = chat(gw.url, "mail jane.roe@example.com")
            assert gw.app[GATEWAY].attestation.digest("gpu") is None
    assert refused.status_code == 503
    assert backend.served == 0
