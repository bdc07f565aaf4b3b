"""OCSP by POST (RFC 6960 A.1), the way NVIDIA's SDK asks ocsp.ndis.nvidia.com: a loopback
responder for the test NVIDIA reads the DER request from the body and answers about the
certificate it names, echoing its nonce (or not, or a replayed answer). The gateway's own
transport and collateral store ask it; the evidence verifier judges the answer as it judges a
GET's: signed by the root, about this certificate, good, current."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509 import ocsp

from gateway.attestation.collateral import CollateralStore
from gateway.attestation.evidence import Evidence, EvidenceVerifier, Fetched
from gateway.attestation.transport import NetworkTransport
from gateway.errors import EvidenceError
from gateway.settings import AttestationSettings, OcspResponder
from tests.attestation_ca import OCSP_URL, GpuTestCa, Vendors
from tests.servers import ServerThread

VENDORS = Vendors()
AT = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
BOUND = bytes(range(64))


@dataclass
class Responder:
    """The test NVIDIA's (`ca`) OCSP service: `status` for every certificate it is asked about;
    `echo`: whether it copies the request's nonce into its answer; `canned`: one fixed answer
    whatever it is asked (a replay)."""

    status: str = "good"
    ca: GpuTestCa = field(default_factory=lambda: VENDORS.nvidia)
    echo: bool = True
    canned: bytes | None = None
    requests: list[ocsp.OCSPRequest] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.post)
        app.router.add_get("/{request}", self.get)
        return app

    async def post(self, request: web.Request) -> web.Response:
        self.methods.append(f"POST {request.content_type}")
        return self._answer(ocsp.load_der_ocsp_request(await request.read()))

    async def get(self, request: web.Request) -> web.Response:
        self.methods.append("GET")
        return self._answer(ocsp.load_der_ocsp_request(
            base64.b64decode(request.match_info["request"])))

    def _answer(self, asked: ocsp.OCSPRequest) -> web.Response:
        self.requests.append(asked)
        if self.canned is not None:
            return web.Response(body=self.canned, content_type="application/ocsp-response")
        nonce = None
        with contextlib.suppress(x509.ExtensionNotFound):
            nonce = asked.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        body = self.ca.ocsp(status=self.status, nonce=nonce if self.echo else None)
        return web.Response(body=body, content_type="application/ocsp-response")


def verify_with(responder: Responder, how: OcspResponder, tmp_path: Path) -> Evidence:
    """The GPU evidence (nothing stapled) through the verifier, OCSP asked of `responder`."""

    async def run(url: str) -> Evidence:
        transport = NetworkTransport()
        settings = AttestationSettings(
            amd_kds_url=None, intel_pcs_url=None, cache_dir=str(tmp_path / "cache"),
            amd_roots_dir=VENDORS.amd.roots_dir(_folder(tmp_path)),
            ocsp_responders={OCSP_URL: how.model_copy(update={"url": url + "/"})})
        store = CollateralStore(settings, transport, clock=AT.timestamp)
        try:
            verifier = EvidenceVerifier(VENDORS.roots(), store, AT.timestamp)
            body = orjson.dumps(VENDORS.evidence(BOUND, gpu=True, stapled=False))
            return await verifier.verify(Fetched(body, BOUND, bytes(32)))
        finally:
            await transport.close()

    with ServerThread(responder.app()) as server:
        return asyncio.run(run(server.url))


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "amd"
    folder.mkdir(exist_ok=True)
    return folder


POST = OcspResponder(method="post", nonce=True)


def test_a_good_certificate_is_accepted_by_post_with_a_nonce(tmp_path: Path) -> None:
    responder = Responder()
    assert verify_with(responder, POST, tmp_path).gpus
    assert responder.methods == ["POST application/ocsp-request"]
    (asked,) = responder.requests
    assert asked.serial_number == VENDORS.nvidia.leaf.serial_number
    nonce = asked.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert len(nonce) == 32


def test_a_revoked_certificate_is_refused_by_post(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match=r"certificate 'Test GH100 attestation key' is "
                                            r"revoked \(key_compromise\)"):
        verify_with(Responder(status="revoked"), POST, tmp_path)


@pytest.mark.parametrize("responder", [
    Responder(echo=False),  # no nonce in the answer
    Responder(canned=VENDORS.nvidia.ocsp(nonce=b"\1" * 32)),  # another request's answer
], ids=["not echoed", "replayed"])
def test_an_answer_without_this_requests_nonce_is_refused(responder: Responder,
                                                          tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="did not echo this request's nonce"):
        verify_with(responder, POST, tmp_path)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_post_answer_is_kept_until_its_next_update(tmp_path: Path) -> None:
    responder = Responder()
    verify_with(responder, POST, tmp_path)
    verify_with(responder, POST, tmp_path)  # from the disk cache: its nonce was seen echoed
    assert len(responder.requests) == 1


def test_without_a_nonce_post_takes_an_answer_without_one(tmp_path: Path) -> None:
    responder = Responder(echo=False)
    assert verify_with(responder, OcspResponder(method="post", nonce=False), tmp_path).gpus
    (asked,) = responder.requests
    assert list(asked.extensions) == []


def test_get_is_still_chosen_per_responder(tmp_path: Path) -> None:
    responder = Responder()
    assert verify_with(responder, OcspResponder(method="get", nonce=False), tmp_path).gpus
    assert responder.methods == ["GET"]


def test_a_get_responder_cannot_ask_for_a_nonce() -> None:
    with pytest.raises(ValueError, match="a nonce needs method: post"):
        OcspResponder(method="get")


def test_nvidias_responder_is_asked_by_post_by_default() -> None:
    nvidia = AttestationSettings().ocsp_responders["http://ocsp.ndis.nvidia.com"]
    assert (nvidia.method, nvidia.url, nvidia.nonce) == (
        "post", "https://ocsp.ndis.nvidia.com/", True)
