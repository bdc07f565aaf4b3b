"""Real servers on 127.0.0.1 for tests: each aiohttp app runs in its own thread and event loop,
so synchronous clients (the official SDKs, raw sockets) can talk to it from the test."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from gateway.app import Outbound, build_app
from gateway.attestation.agent import ReportSource
from gateway.ingress.auth import hash_api_key
from gateway.server import runner_for, tls_context
from gateway.settings import Settings
from tests.static_table import static_table_dir

T = TypeVar("T")
TEST_KEY = "veil-test-key-0123456789"
OTHER_KEY = "veil-test-key-other-tenant"
UPSTREAM_SECRET = "upstream-secret"  # what the demo fixture demands from the gateway


class ServerThread:
    def __init__(self, app: web.Application, port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.port = port
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.runner = runner_for(self.app)  # the gateway's own runner, for a gateway app
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# The pattern tier only by default: NER starts a process pool (seconds); the tests that need
# names say so in their policy.
TEST_POLICY: dict[str, Any] = {"version": 1, "name": "test", "detectors": {"builtin": ["patterns"]}}


def write_policy(policy: dict[str, Any], directory: Path | None = None) -> str:
    """A policy file the gateway can load (and a test can later edit, to watch it reload)."""
    directory = directory or Path(tempfile.mkdtemp(prefix="veil-policy-"))
    path = directory / f"{policy.get('name', 'policy')}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return str(path)


def settings_for(backends: list[dict[str, Any]], models: dict[str, list[str]] | None = None,
                 *, policy: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """Settings with two tenants: `test` (every model) and `limited` (only `other-model`), and
    one policy (patterns only unless `policy` says otherwise). Never AMD KDS or Intel PCS: a
    test that fetches collateral names its own server (`attestation=...`)."""
    names = [b["name"] for b in backends]
    data: dict[str, Any] = {
        "tenants": {"test": {"models": ["*"]}, "limited": {"models": ["other-model"]}},
        "api_keys": [{"name": "test-key", "tenant": "test", "hash": hash_api_key(TEST_KEY)},
                     {"name": "other-key", "tenant": "limited",
                      "hash": hash_api_key(OTHER_KEY)}],
        "backends": backends,
        "models": models or {"test-model": names, "other-model": names},
        "logging": {"level": "debug"},
        "privacy": {"ner_workers": 1},  # one each: the suite runs many gateways at once
        "attestation": {"amd_kds_url": None, "intel_pcs_url": None},
        "policies": {"files": [write_policy(policy or TEST_POLICY)], "watch_interval_s": 0},
    }
    data.update(overrides)
    if data.get("fhe", {}).get("scorers"):  # the suite's one static table, not var/ each
        # the suite embeds with the static table (fast; tests of MiniLM name it)
        data["fhe"] = {"embedder_cache_dir": static_table_dir(), "embedder": "static",
                       **data["fhe"]}
    return Settings.model_validate(data)


def backend(name: str, url: str, fmt: str = "openai", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "format": fmt, "connect_timeout_s": 2,
            "read_timeout_s": 5, **extra}


def gateway_for(settings: Settings, environ: dict[str, str] | None = None,
                outbound: Outbound | None = None, platform: ReportSource | None = None,
                port: int = 0) -> ServerThread:
    """The gateway on loopback (over TLS when `listen` names a certificate, as `veil serve`);
    `outbound`: seams handed in (say, a test CA's roots); `platform`: what makes its own
    reports for self_attestation (a test AMD, standing in for configfs-tsm)."""
    environ = {"DEMO_KEY": UPSTREAM_SECRET} if environ is None else environ
    app = build_app(settings, environ=environ, outbound=outbound or Outbound(),
                    platform=platform)
    return ServerThread(app, port, ssl_context=tls_context(settings.listen))


def demo_backend(name: str, url: str, fmt: str = "openai", **extra: Any) -> dict[str, Any]:
    return backend(name, url, fmt, api_key_env="DEMO_KEY", **extra)


UNLIMITED = {"requests_per_second": 1e6, "burst": 1_000_000}  # for tests that send thousands


def demo_gateway(demo_url: str, *, policy: dict[str, Any] | None = None,
                 **overrides: Any) -> ServerThread:
    """A gateway in front of the demo server on both wire formats, with `policy`."""
    backends = [demo_backend("demo-openai", demo_url),
                demo_backend("demo-anthropic", demo_url, "anthropic")]
    return gateway_for(settings_for(backends, policy=policy, **overrides))
