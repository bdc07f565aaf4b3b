"""An httpx transport that sends nothing to a Veil gateway until the gateway has proved what it
runs (gateway/client/verify.py), then only over TLS connections to the key it proved.

    transport = AttestedTransport("https://veil.example:8443", Expected.of(
        "confidential-cpu", level, ["sha256:<policy set digest>"]))
    client = openai.OpenAI(base_url="https://veil.example:8443/v1", api_key=...,
                           http_client=httpx2.Client(transport=transport))
    # the same for anthropic.Anthropic(base_url=..., http_client=httpx2.Client(transport=...)),
    # and AsyncAttestedTransport for httpx2.AsyncClient (AsyncOpenAI, AsyncAnthropic)

On first use the gateway is verified; every TLS connection the pool opens afterwards must
present the attested public key, checked after the handshake and before a byte of the request
is written; a pooled connection writes only while its key is still the attested one. A
connection with another key raises `GatewayKeyChanged` (and the verdict is dropped: the next
request verifies the gateway again); a failed verification raises
`GatewayNotTrusted`; both before anything is sent. The verdict is renewed after `max_age_s`, or
sooner when the trust level or the evidence's endorsements lapse. Only the gateway's own origin
is served: a request to any other URL is refused. The official SDKs wrap the error in their
connection error (`openai.APIConnectionError`, `anthropic.APIConnectionError`), with this one
as its `__cause__`, and retry it like one (`max_retries`): each retry verifies again.

The certificate's chain is not checked (a TEE's certificate is usually self-signed): the key
is trusted because the hardware signed it, bound to this client's nonce.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2 as httpx

from gateway.attestation.binding import spki_sha256
from gateway.attestation.trust_roots import Roots
from gateway.client.verify import (
    CLIENT_ATTESTATION,
    Expected,
    GatewayVerdict,
    verify_gateway,
)
from gateway.settings import AttestationSettings

SocketOptions = Iterable[Any]
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's


class GatewayNotTrusted(httpx.TransportError):
    """The gateway did not prove what it was required to: nothing was sent to it. A transport
    error, so the SDKs report it as their connection error (and retry it as one: a gateway
    whose key changed is verified again)."""


class GatewayKeyChanged(GatewayNotTrusted):
    """A connection presented another key than the one the gateway proved."""


@dataclass(frozen=True)
class Verification:
    """How a transport verifies its gateway (verify_gateway's options)."""

    url: str
    expected: Expected
    max_age_s: float = 3600.0
    roots: Roots | None = None
    attestation: AttestationSettings = CLIENT_ATTESTATION
    timeout_s: float = 10.0

    def origin(self) -> tuple[str, str, int]:
        parts = urlsplit(self.url)
        return parts.scheme, (parts.hostname or "").lower(), parts.port or 443

    async def run(self) -> GatewayVerdict:
        return await verify_gateway(self.url, self.expected, roots=self.roots,
                                    attestation=self.attestation, timeout_s=self.timeout_s)


class Pin:
    """The attested key and until when it may be used; shared by the transport (which renews
    it) and the connections (which check it)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._key: bytes | None = None
        self._until = 0.0

    def current(self) -> bytes | None:
        return self._key if self._clock() < self._until else None

    def hold(self, verdict: GatewayVerdict, max_age_s: float) -> None:
        if not verdict.ok or verdict.key_sha256 is None:
            self.drop()
            raise GatewayNotTrusted("the gateway did not prove itself: "
                                    + "; ".join(verdict.reasons))
        self._key = verdict.key_sha256
        self._until = min(verdict.until, self._clock() + max_age_s)

    def drop(self) -> None:
        self._key, self._until = None, 0.0

    def check(self, ssl_object: Any) -> bytes:
        """After the handshake, before the request: the connection's key is the attested one
        (returned: the connection is bound to it)."""
        der = ssl_object.getpeercert(True) if ssl_object is not None else None
        key = self._key
        if key is None or not der or spki_sha256(der) != key:
            self.drop()
            raise GatewayKeyChanged("the gateway presented another TLS key than the one it "
                                    "proved: nothing was sent (it is verified again on the "
                                    "next request)")
        return key

    def still(self, key: bytes) -> None:
        """Before each write on a pooled connection: its key is still the one attested (a
        verification since may have proved another key, or failed)."""
        if self._key != key:
            raise GatewayKeyChanged("this connection's TLS key is no longer the attested one: "
                                    "nothing was sent on it")


def _unchecked_tls() -> ssl.SSLContext:
    """TLS without a chain check: the pin, not a CA, says which key may answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _refuse_other_origins(verification: Verification, request: httpx.Request) -> None:
    asked = (request.url.scheme, request.url.host.lower(), request.url.port or 443)
    if asked != verification.origin():
        raise GatewayNotTrusted(f"{request.url.scheme}://{request.url.host}: not the attested "
                                "gateway's origin: nothing was sent")


# -- sync ----------------------------------------------------------------------------------------

class AttestedTransport(httpx.HTTPTransport):
    """`max_age_s`: verify again this often at the latest; `roots`, `attestation`: what the
    evidence is judged by (verify_gateway's); `clock`: when verdicts lapse (the evidence itself
    is always judged at the real time)."""

    def __init__(self, url: str, expected: Expected, *, max_age_s: float = 3600.0,
                 roots: Roots | None = None,
                 attestation: AttestationSettings = CLIENT_ATTESTATION,
                 timeout_s: float = 10.0, clock: Callable[[], float] = time.time,
                 limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        context = _unchecked_tls()
        super().__init__(verify=context, trust_env=False)
        self._verification = Verification(url, expected, max_age_s, roots, attestation,
                                          timeout_s)
        self._pin = Pin(clock)
        self._lock = threading.Lock()
        self._pool = httpcore2.ConnectionPool(
            ssl_context=context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinningBackend(httpcore2.SyncBackend(), self._pin))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _refuse_other_origins(self._verification, request)
        self.verified()
        return super().handle_request(request)

    def verified(self) -> bytes:
        """The attested key, verifying the gateway first when no verdict holds."""
        with self._lock:
            key = self._pin.current()
            if key is None:
                # in a thread of its own: the caller may be inside a running event loop
                with ThreadPoolExecutor(1) as worker:
                    verdict = worker.submit(asyncio.run, self._verification.run()).result()
                self._pin.hold(verdict, self._verification.max_age_s)
                key = self._pin.current()
            if key is None:
                raise GatewayNotTrusted("the gateway's verdict lapsed as it was made")
            return key


class _PinningBackend(httpcore2.NetworkBackend):
    def __init__(self, inner: httpcore2.NetworkBackend, pin: Pin) -> None:
        self._inner = inner
        self._pin = pin

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: SocketOptions | None = None) -> httpcore2.NetworkStream:
        return _PinnedStream(self._inner.connect_tcp(host, port, timeout, local_address,
                                                     socket_options), self._pin)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: SocketOptions | None = None
                            ) -> httpcore2.NetworkStream:
        raise GatewayNotTrusted("an attested gateway is reached over TCP and TLS only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _PinnedStream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream, pin: Pin) -> None:
        self._inner = inner
        self._pin = pin

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        raise GatewayNotTrusted("refusing to read before TLS")  # http:// never gets here

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        raise GatewayNotTrusted("refusing to write before TLS")

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore2.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            key = self._pin.check(tls.get_extra_info("ssl_object"))
        except GatewayNotTrusted:
            tls.close()
            raise
        return _KeyBoundStream(tls, self._pin, key)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _KeyBoundStream(httpcore2.NetworkStream):
    """A TLS connection to the attested key: it writes only while that key is attested."""

    def __init__(self, inner: httpcore2.NetworkStream, pin: Pin, key: bytes) -> None:
        self._inner = inner
        self._pin = pin
        self._key = key

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._pin.still(self._key)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore2.NetworkStream:
        raise GatewayNotTrusted("TLS inside TLS (a proxy) is not an attested connection")

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


# -- async ---------------------------------------------------------------------------------------

class AsyncAttestedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, url: str, expected: Expected, *, max_age_s: float = 3600.0,
                 roots: Roots | None = None,
                 attestation: AttestationSettings = CLIENT_ATTESTATION,
                 timeout_s: float = 10.0, clock: Callable[[], float] = time.time,
                 limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        context = _unchecked_tls()
        super().__init__(verify=context, trust_env=False)
        self._verification = Verification(url, expected, max_age_s, roots, attestation,
                                          timeout_s)
        self._pin = Pin(clock)
        self._lock: asyncio.Lock | None = None  # made in the loop that uses it
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_AsyncPinningBackend(httpcore2.AnyIOBackend(), self._pin))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _refuse_other_origins(self._verification, request)
        await self.verified()
        return await super().handle_async_request(request)

    async def verified(self) -> bytes:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            key = self._pin.current()
            if key is None:
                self._pin.hold(await self._verification.run(), self._verification.max_age_s)
                key = self._pin.current()
            if key is None:
                raise GatewayNotTrusted("the gateway's verdict lapsed as it was made")
            return key


class _AsyncPinningBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, inner: httpcore2.AsyncNetworkBackend, pin: Pin) -> None:
        self._inner = inner
        self._pin = pin

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: SocketOptions | None = None
                          ) -> httpcore2.AsyncNetworkStream:
        return _AsyncPinnedStream(await self._inner.connect_tcp(
            host, port, timeout, local_address, socket_options), self._pin)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: SocketOptions | None = None
                                  ) -> httpcore2.AsyncNetworkStream:
        raise GatewayNotTrusted("an attested gateway is reached over TCP and TLS only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _AsyncPinnedStream(httpcore2.AsyncNetworkStream):
    def __init__(self, inner: httpcore2.AsyncNetworkStream, pin: Pin) -> None:
        self._inner = inner
        self._pin = pin

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        raise GatewayNotTrusted("refusing to read before TLS")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        raise GatewayNotTrusted("refusing to write before TLS")

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            key = self._pin.check(tls.get_extra_info("ssl_object"))
        except GatewayNotTrusted:
            await tls.aclose()
            raise
        return _AsyncKeyBoundStream(tls, self._pin, key)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncKeyBoundStream(httpcore2.AsyncNetworkStream):
    def __init__(self, inner: httpcore2.AsyncNetworkStream, pin: Pin, key: bytes) -> None:
        self._inner = inner
        self._pin = pin
        self._key = key

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._pin.still(self._key)
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:
        raise GatewayNotTrusted("TLS inside TLS (a proxy) is not an attested connection")

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
