"""NVIDIA's RIM service as a test runs it on loopback: /v1/rim/<id> answers the JSON NVIDIA's
service does ({"id", "rim": base64 XML}), /ocsp/<request> the OCSP responder named in the test
RIM CA's certificates (RFC 6960 GET). It counts what it was asked, so a test sees caching."""

from __future__ import annotations

import base64
import urllib.parse

from aiohttp import web
from cryptography.x509 import ocsp

from tests.attestation_ca import RimTestCa


class RimService:
    def __init__(self) -> None:
        self.rims: dict[str, bytes] = {}  # RIM id -> XML
        self.ca: RimTestCa | None = None  # made once the URL is known (its AIA names it)
        self.asked: list[str] = []
        self.ocsp_asked = 0

    def make_ca(self, origin: str, days: int = 3650) -> RimTestCa:
        self.ca = RimTestCa(days=days, ocsp_url=f"{origin}/ocsp")
        return self.ca

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/rim/{id}", self._rim)
        app.router.add_get("/ocsp/{request:.+}", self._ocsp)
        return app

    async def _rim(self, request: web.Request) -> web.Response:
        rim_id = request.match_info["id"]
        self.asked.append(rim_id)
        if rim_id not in self.rims or self.ca is None:
            return web.Response(status=404)
        return web.Response(body=self.ca.served(self.rims[rim_id], rim_id))

    async def _ocsp(self, request: web.Request) -> web.Response:
        self.ocsp_asked += 1
        encoded = request.raw_path.split("/ocsp/", 1)[1]  # base64, URL-encoded ("/" as %2F)
        der = base64.b64decode(urllib.parse.unquote(encoded))
        assert self.ca is not None
        return web.Response(body=self.ca.ocsp(ocsp.load_der_ocsp_request(der).serial_number),
                            content_type="application/ocsp-response")
