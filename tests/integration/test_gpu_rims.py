"""GPU reference values from NVIDIA's RIMs, end to end over real TLS on loopback: two
confidential GPU backends report the same driver and VBIOS; the gateway fetches those RIMs from
a RIM service on loopback (once, then from its cache), verifies them to the RIM root the level
names, asks the RIM CA's OCSP responder about their signer, and only the backend whose
measurements the RIMs allow receives data needing the level; the other is refused with the
index named in the log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
from aiohttp import web

from gateway.app import GATEWAY, Outbound
from gateway.attestation.binding import binding, spki_sha256
from gateway.policy.loader import load_policy
from tests.attestation_ca import MEASUREMENT, Vendors, gpu_opaque, tls_context
from tests.rim_service import RimService
from tests.servers import TEST_KEY, TEST_POLICY, ServerThread, gateway_for, settings_for

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
SERVED = web.AppKey("served", list[int])
VENDORS = Vendors()
LEVEL = "confidential-gpu"
DRIVER_ID, VBIOS_ID = "NV_GPU_DRIVER_GH100_550.90.07", "NV_GPU_VBIOS_1010_0200_882_960074001A"
DRIVER = {20: [b"\x20" * 48], 21: [b"\x21" * 48, b"\x22" * 48]}  # RIM index -> allowed
VBIOS = {0: [b"\x01" * 48], 3: [b"\x03" * 48]}
GENUINE = {index + 1: values[0] for index, values in {**DRIVER, **VBIOS}.items()}


def confidential(certificate: bytes, measurements: dict[int, bytes]) -> web.Application:
    """A model server whose evidence is an SEV-SNP report and an H100's measurements."""
    served: list[int] = []

    async def evidence(request: web.Request) -> web.Response:
        bound = binding(bytes.fromhex(request.query["nonce"]), spki_sha256(certificate))
        return web.json_response(VENDORS.evidence(bound, gpu=True, gpu_measurements=measurements,
                                                  gpu_opaque=gpu_opaque()))

    async def chat(request: web.Request) -> web.Response:
        served.append(1)
        body = await request.json()
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "echo: " + body["messages"][-1]["content"]}}]})

    app = web.Application()
    app.router.add_get("/.well-known/veil-attestation", evidence)
    app.router.add_post("/v1/chat/completions", chat)
    app[SERVED] = served
    return app


def attested(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "url": url, "connect_timeout_s": 2, "read_timeout_s": 5,
            "attestation": {"refresh_s": 300, "timeout_s": 5}}


def wait_until(condition: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


def serve_rims(service: RimService, origin: str) -> None:
    """The test RIM CA (its OCSP responder at `origin`) and its driver and VBIOS RIMs."""
    ca = service.make_ca(origin)
    service.rims = {DRIVER_ID: ca.rim("550.90.07", DRIVER, inactive=(1,)),
                    VBIOS_ID: ca.rim("96.00.74.00.1A", VBIOS)}


def gpu_settings(tmp_path: Path, service: RimService, rims_url: str,
                 backends: dict[str, str]) -> Any:
    """One policy whose personal data needs the CPU report and the GPU's RIMs (fetched from
    `rims_url`, verified to the test RIM root)."""
    assert service.ca is not None
    root = service.ca.root_pem(tmp_path / "rim_root.pem")
    policy = {**TEST_POLICY, "data_classes": {"personal": {"entities": ["EMAIL"]}},
              "routing": {"personal": {"require": LEVEL}},
              "trust_levels": {LEVEL: {
                  "sev-snp": {"measurements": [MEASUREMENT.hex()]},
                  "nvidia-gpu": {"rims": {"url": f"{rims_url}/v1/rim/", "root": root}}}}}
    return settings_for(
        [attested(name, url) for name, url in backends.items()], policy=policy, attestation={
            "amd_roots_dir": VENDORS.amd.roots_dir(tmp_path), "amd_kds_url": None,
            "intel_pcs_url": None, "cache_dir": str(tmp_path / "cache")})


def chat(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=30, json={
        "model": "test-model", "messages": [{"role": "user", "content": "mail jane@example.com"}]})


def test_only_the_gpu_its_rims_allow_receives_data_needing_the_level(
        tmp_path: Path, capfd: Any) -> None:
    rim_service = RimService()
    contexts = {name: tls_context(tmp_path, name) for name in ("genuine", "patched")}
    apps = {"genuine": confidential(contexts["genuine"][1], GENUINE),
            "patched": confidential(contexts["patched"][1], {**GENUINE, 4: b"\x04" * 48})}
    with ServerThread(rim_service.app()) as rims, \
            ServerThread(apps["genuine"], ssl_context=contexts["genuine"][0]) as genuine, \
            ServerThread(apps["patched"], ssl_context=contexts["patched"][0]) as patched:
        serve_rims(rim_service, rims.url)
        settings = gpu_settings(tmp_path, rim_service, rims.url, {"patched": patched.url,
                                                              "genuine": genuine.url})
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            service = gw.app[GATEWAY].attestation
            digest = load_policy(gw.app[GATEWAY].settings.policies.files[0]).digest
            wait_until(lambda: service.meets("genuine", digest, (LEVEL,)))
            wait_until(lambda: service.digest("patched") is not None)
            assert not service.meets("patched", digest, (LEVEL,))
            for _ in range(2):
                assert chat(gw.url).status_code == 200
    assert (len(apps["genuine"][SERVED]), len(apps["patched"][SERVED])) == (2, 0)
    assert sorted(rim_service.asked) == [DRIVER_ID, VBIOS_ID]  # both backends' RIMs fetched once
    assert rim_service.ocsp_asked == 2  # the RIM signer's certificate and its CA's, once each
    assert "GPU measurement index 3" in capfd.readouterr().err


def test_without_the_rim_service_the_gpu_level_fails_closed(tmp_path: Path) -> None:
    context, certificate = tls_context(tmp_path, "genuine")
    app = confidential(certificate, GENUINE)
    rim_service = RimService()
    with ServerThread(rim_service.app()) as rims:
        serve_rims(rim_service, rims.url)
        down = rims.url  # stopped before the gateway ever asks it
    with ServerThread(app, ssl_context=context) as backend:
        settings = gpu_settings(tmp_path, rim_service, down, {"genuine": backend.url})
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            service = gw.app[GATEWAY].attestation
            wait_until(lambda: service.digest("genuine") is not None)  # the evidence verified
            response = chat(gw.url)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_attested_backend"
    assert app[SERVED] == []
