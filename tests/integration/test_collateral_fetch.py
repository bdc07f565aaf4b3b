"""Endorsements the evidence does not carry come from the configured AMD KDS / Intel PCS,
through an on-disk cache that outlives a restart; with neither, attestation fails closed. The
key services are loopback servers; the SNP cases run the whole gateway, the TDX case the
attestation service with the test Intel's root handed to it."""

from __future__ import annotations

import json
import urllib.parse
from collections import Counter
from pathlib import Path

from aiohttp import web

from gateway.app import Outbound
from tests.attestation_ca import MRTD
from tests.integration.test_attested_routing import (
    POLICY,
    TDX_CA,
    TDX_LEVEL,
    VCEK,
    VENDORS,
    ConfidentialBackend,
    attested,
    chat,
    policy_digest,
    roots_dir,
    tdx_policy,
    tls_context,
    wait_attested,
    wait_until,
)
from tests.servers import ServerThread, gateway_for, settings_for


class FakeKeyServices:
    """AMD KDS and Intel PCS as far as the gateway uses them, counting requests."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/vcek/v1/{product}/{hwid}", self.vcek)
        app.router.add_get("/tdx/certification/v4/tcb", self.tcb)
        app.router.add_get("/tdx/certification/v4/qe/identity", self.identity)
        app.router.add_get("/sgx/certification/v4/pckcrl", self.crl)
        return app

    async def vcek(self, request: web.Request) -> web.Response:
        self.hits["vcek"] += 1
        if request.match_info["product"] != "Milan" or "snpSPL" not in request.query:
            return web.Response(status=404)
        return web.Response(body=VCEK, content_type="application/x-x509-ca-cert")

    def _chain(self) -> str:
        return urllib.parse.quote(TDX_CA.pem(TDX_CA.signing, TDX_CA.root).decode())

    async def tcb(self, request: web.Request) -> web.Response:
        self.hits["tcb"] += 1
        return web.Response(text=TDX_CA.collateral()["tcb_info"],
                            headers={"TCB-Info-Issuer-Chain": self._chain()})

    async def identity(self, request: web.Request) -> web.Response:
        self.hits["identity"] += 1
        return web.Response(text=TDX_CA.collateral()["qe_identity"],
                            headers={"SGX-Enclave-Identity-Issuer-Chain": self._chain()})

    async def crl(self, request: web.Request) -> web.Response:
        self.hits["crl"] += 1
        chain = urllib.parse.quote(TDX_CA.pem(TDX_CA.pck_ca, TDX_CA.root).decode())
        return web.Response(body=TDX_CA.pck_crl(), headers={"SGX-PCK-CRL-Issuer-Chain": chain})


def test_vcek_is_fetched_once_and_survives_a_restart(tmp_path: Path) -> None:
    context, certificate = tls_context(tmp_path, "vm")
    backend = ConfidentialBackend(certificate, endorsed=False)
    services = FakeKeyServices()
    with ServerThread(backend.app(), ssl_context=context) as vm, \
            ServerThread(services.app()) as kds:
        attestation = {"amd_roots_dir": roots_dir(tmp_path), "amd_kds_url": kds.url,
                       "cache_dir": str(tmp_path / "cache")}
        settings = settings_for([attested("vm", vm.url)], policy=POLICY,
                                attestation=attestation)
        with gateway_for(settings) as gw:
            service = wait_attested(gw, "vm")
            assert chat(gw.url, "mail jane.roe@example.com").status_code == 200
            service.key_changed("vm")  # re-attest: the VCEK comes from the cache
            wait_attested(gw, "vm")
        with gateway_for(settings) as gw:  # a restart: still from the disk cache
            wait_attested(gw, "vm")
    assert services.hits["vcek"] == 1
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_no_vcek_and_no_key_service_fails_closed(tmp_path: Path) -> None:
    context, certificate = tls_context(tmp_path, "vm")
    backend = ConfidentialBackend(certificate, endorsed=False)
    with ServerThread(backend.app(), ssl_context=context) as vm:
        attestation = {"amd_roots_dir": roots_dir(tmp_path), "amd_kds_url": "http://127.0.0.1:9",
                       "cache_dir": str(tmp_path / "cache")}
        settings = settings_for([attested("vm", vm.url)], policy=POLICY,
                                attestation=attestation)
        with gateway_for(settings) as gw:
            wait_until(lambda: backend.nonces)
            refused = chat(gw.url, "mail jane.roe@example.com")
    assert refused.status_code == 503
    assert backend.served == 0


def test_tdx_collateral_is_fetched_from_pcs(tmp_path: Path) -> None:
    rules = tdx_policy()
    context, certificate = tls_context(tmp_path, "td")
    backend = ConfidentialBackend(certificate, measurement=MRTD, kind="tdx", endorsed=False)
    services = FakeKeyServices()
    with ServerThread(backend.app(), ssl_context=context) as td, \
            ServerThread(services.app()) as pcs:
        attestation = {"intel_pcs_url": pcs.url, "cache_dir": str(tmp_path / "cache")}
        settings = settings_for([attested("td", td.url)], policy=rules, attestation=attestation)
        with gateway_for(settings, outbound=Outbound(attestation_roots=VENDORS.roots())) as gw:
            service = wait_attested(gw, "td", TDX_LEVEL)
            service.key_changed("td")
            wait_until(lambda: len(backend.nonces) == 2
                       and service.meets("td", policy_digest(gw), (TDX_LEVEL,)))
    assert (services.hits["tcb"], services.hits["identity"]) == (1, 1)  # cached to nextUpdate
    assert services.hits["crl"] == 1  # CRLs are cached for an hour
    cached = [json.loads(p.read_text()) for p in (tmp_path / "cache").iterdir()]
    assert {entry["url"].split("?")[0].rsplit("/", 1)[-1] for entry in cached} == {
        "tcb", "identity", "pckcrl"}
