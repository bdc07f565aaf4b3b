"""One pooled HTTP session per backend, opened and closed with the application.

The pool is the single seam for outbound model traffic: tests point backends at real loopback
servers, and an alternative `session_factory` can be injected without patching the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import aiohttp

from gateway import __version__
from gateway.settings import HEADER_VALUE, BackendSettings, Settings

SessionFactory = Callable[[BackendSettings], aiohttp.ClientSession]


def default_session(backend: BackendSettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=backend.pool_size, limit_per_host=backend.pool_size,
                                     keepalive_timeout=30, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=backend.connect_timeout_s,
                                    sock_read=backend.read_timeout_s)
    # trust_env off: proxy variables in the environment must not redirect model traffic.
    # (No skip_auto_headers: our own User-Agent is always sent, which already keeps aiohttp's
    # out, and the option costs a header copy per request.)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)


CREDENTIAL_HEADER = {"anthropic": "x-api-key", "azure-openai": "api-key"}


def upstream_headers(backend: BackendSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """Headers the gateway sends with its own credential and the backend's static headers;
    nothing here comes from the client."""
    headers = {
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",
        "User-Agent": f"veil/{__version__}",
    }
    secret = environ.get(backend.api_key_env, "") if backend.api_key_env else ""
    if secret:
        name = CREDENTIAL_HEADER.get(backend.format)
        headers.update({name: secret} if name else {"Authorization": f"Bearer {secret}"})
    for name, source in backend.headers.items():
        value = source.value if source.env is None else environ.get(source.env, "")
        if not value or not HEADER_VALUE.match(value):
            # load_settings refuses this at start; settings built otherwise must fail too.
            raise RuntimeError(f"backend {backend.name}: header {name} needs environment "
                               f"variable {source.env} (printable ASCII)")
        headers[name] = value
    return headers


class UpstreamPool:
    def __init__(self, settings: Settings, session_factory: SessionFactory = default_session,
                 environ: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        self._factory = session_factory
        self._environ = os.environ if environ is None else environ
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self.headers: dict[str, dict[str, str]] = {}

    async def start(self) -> None:
        for backend in self._settings.backends:
            self._sessions[backend.name] = self._factory(backend)
            self.headers[backend.name] = upstream_headers(backend, self._environ)

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    @property
    def started(self) -> bool:
        return bool(self._sessions)

    def session(self, name: str) -> aiohttp.ClientSession:
        return self._sessions[name]
