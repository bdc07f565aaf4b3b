"""The only way attestation reaches the network, as a seam: the TLS certificate a backend
presents, and bounded GETs (the evidence, over a connection pinned to that certificate; a key
set; AMD KDS; Intel PCS; OCSP) and POSTs (OCSP responders asked that way). The gateway uses
`NetworkTransport`; tests hand the service a fake that answers from memory, so no test patches
the network.

What every implementation promises, because the verifier relies on it:
- a pinned GET is sent only over a connection whose certificate has that SHA-256 (the evidence
  must come from the machine whose key it binds), an unpinned one only after the usual CA check;
- redirects are never followed (an evidence endpoint must not send the gateway elsewhere);
- no more than `max_bytes` of a body is ever held;
- every failure to get an answer is a FetchError (unreachable, timed out, another certificate,
  too large); an answer with any status is a `Response`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from gateway.errors import BodyTooLarge, FetchError
from gateway.streams import read_at_most


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case


class Transport(Protocol):
    async def certificate(self, host: str, port: int, *, timeout_s: float) -> bytes:
        """The certificate (DER) the TLS server at host:port presents. No chain check: a TEE's
        certificate is usually self-signed, and trust comes from the evidence bound to its key."""
        ...

    async def get(self, url: str, *, params: Mapping[str, str] | None = None,
                  pin: bytes | None = None, timeout_s: float, max_bytes: int) -> Response:
        """`pin`: the SHA-256 of the DER certificate the server must present."""
        ...

    async def post(self, url: str, body: bytes, *, content_type: str, timeout_s: float,
                   max_bytes: int) -> Response:
        """An unpinned POST (an OCSP request), under the same promises as `get`."""
        ...


class NetworkTransport:
    """The real one: a TLS handshake for the certificate, one aiohttp session for the GETs
    (made on first use, inside the event loop; `close` ends it)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def certificate(self, host: str, port: int, *, timeout_s: float) -> bytes:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname=host),
                timeout_s)
        except (OSError, TimeoutError) as exc:
            raise FetchError(f"no TLS connection to {host}:{port} "
                             f"({type(exc).__name__})") from None
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        finally:
            writer.close()
        if not der:
            raise FetchError(f"{host}:{port} presented no TLS certificate")
        return bytes(der)

    async def get(self, url: str, *, params: Mapping[str, str] | None = None,
                  pin: bytes | None = None, timeout_s: float, max_bytes: int) -> Response:
        checked: aiohttp.Fingerprint | bool = aiohttp.Fingerprint(pin) if pin else True
        return await self._request("GET", url, params=params, ssl=checked,
                                   timeout_s=timeout_s, max_bytes=max_bytes)

    async def post(self, url: str, body: bytes, *, content_type: str, timeout_s: float,
                   max_bytes: int) -> Response:
        return await self._request("POST", url, data=body, ssl=True,
                                   headers={"Content-Type": content_type},
                                   timeout_s=timeout_s, max_bytes=max_bytes)

    async def _request(self, method: str, url: str, *, timeout_s: float, max_bytes: int,
                       ssl: aiohttp.Fingerprint | bool, params: Mapping[str, str] | None = None,
                       data: bytes | None = None,
                       headers: Mapping[str, str] | None = None) -> Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        try:
            async with self._session.request(method, url, params=params, data=data,
                                             headers=headers, ssl=ssl,
                                             timeout=aiohttp.ClientTimeout(total=timeout_s),
                                             allow_redirects=False) as response:
                body = await read_at_most(response.content, max_bytes)
                headers = {name.lower(): value for name, value in response.headers.items()}
                return Response(response.status, body, headers)
        except BodyTooLarge:
            raise FetchError(f"{_where(url)} answered more than {max_bytes} bytes") from None
        except aiohttp.ServerFingerprintMismatch:
            raise FetchError(f"{_where(url)} presented another certificate than the pinned "
                             "one") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise FetchError(f"{_where(url)} unreachable ({type(exc).__name__})") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _where(url: str) -> str:
    """The URL as messages show it: no user info, no query."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
