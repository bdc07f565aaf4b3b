"""The real transport against TLS servers on loopback (the one attestation test that needs
sockets: what it promises is about connections). A pinned GET reaches only the certificate it
names, an unpinned one only a CA-checked server; redirects are not followed; a body over the
limit, a closed port and a wrong key are all FetchErrors."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.attestation.transport import NetworkTransport
from gateway.errors import FetchError
from tests.attestation_ca import tls_context
from tests.servers import ServerThread


def app() -> web.Application:
    async def evidence(request: web.Request) -> web.Response:
        return web.json_response({"nonce": request.query.get("nonce")},
                                 headers={"TCB-Info-Issuer-Chain": "chain%20pem"})

    async def large(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    async def elsewhere(_: web.Request) -> web.Response:
        raise web.HTTPFound("https://attacker.test/evidence")

    application = web.Application()
    application.router.add_get("/evidence", evidence)
    application.router.add_get("/large", large)
    application.router.add_get("/elsewhere", elsewhere)
    return application


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerThread, bytes]]:
    context, certificate = tls_context(tmp_path, "tee")
    with ServerThread(app(), ssl_context=context) as running:
        yield running, certificate


@pytest.fixture
async def transport() -> AsyncIterator[NetworkTransport]:
    network = NetworkTransport()
    yield network
    await network.close()


async def test_reads_the_certificate_and_gets_over_a_pinned_connection(
        server: tuple[ServerThread, bytes], transport: NetworkTransport) -> None:
    running, certificate = server
    assert await transport.certificate("127.0.0.1", running.port, timeout_s=5) == certificate
    response = await transport.get(running.url + "/evidence", params={"nonce": "ab"},
                                   pin=hashlib.sha256(certificate).digest(), timeout_s=5,
                                   max_bytes=1000)
    assert (response.status, response.body) == (200, b'{"nonce": "ab"}')
    assert response.headers["tcb-info-issuer-chain"] == "chain%20pem"  # names in lower case


async def test_a_pinned_get_refuses_another_certificate(
        server: tuple[ServerThread, bytes], transport: NetworkTransport) -> None:
    running, _ = server
    with pytest.raises(FetchError, match="another certificate than the pinned one"):
        await transport.get(running.url + "/evidence", pin=bytes(32), timeout_s=5,
                            max_bytes=1000)


async def test_an_unpinned_get_checks_the_certificate_authority(
        server: tuple[ServerThread, bytes], transport: NetworkTransport) -> None:
    running, _ = server  # self-signed: fine for a pinned evidence GET, not for a key service
    with pytest.raises(FetchError, match="unreachable"):
        await transport.get(running.url + "/evidence", timeout_s=5, max_bytes=1000)


async def test_redirects_are_answers_not_followed(
        server: tuple[ServerThread, bytes], transport: NetworkTransport) -> None:
    running, certificate = server
    response = await transport.get(running.url + "/elsewhere",
                                   pin=hashlib.sha256(certificate).digest(), timeout_s=5,
                                   max_bytes=1000)
    assert response.status == 302


async def test_no_more_than_max_bytes_is_held(
        server: tuple[ServerThread, bytes], transport: NetworkTransport) -> None:
    running, certificate = server
    with pytest.raises(FetchError, match="answered more than 4096 bytes"):
        await transport.get(running.url + "/large", pin=hashlib.sha256(certificate).digest(),
                            timeout_s=5, max_bytes=4096)


async def test_nothing_listening_is_a_fetch_error(transport: NetworkTransport) -> None:
    with pytest.raises(FetchError, match=r"no TLS connection to 127\.0\.0\.1:9"):
        await transport.certificate("127.0.0.1", 9, timeout_s=2)
    with pytest.raises(FetchError, match=r"https://127\.0\.0\.1:9/evidence unreachable"):
        await transport.get("https://user:secret@127.0.0.1:9/evidence?nonce=ab", timeout_s=2,
                            max_bytes=1000)  # the message shows neither user info nor query
