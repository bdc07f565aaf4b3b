"""Run the gateway: one event loop per worker process, all workers bound to the same port with
SO_REUSEPORT so the kernel spreads connections between them."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import ssl
import tempfile
from collections.abc import Callable, Mapping

from aiohttp import web

from gateway.ingress.connections import Guard, GuardedRunner
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.policy.active import PolicySet
from gateway.settings import LimitSettings, ListenSettings, Settings

log = get_logger("veil.server")


def make_runner(app: web.Application, limits: LimitSettings, metrics: Metrics) -> web.AppRunner:
    """The one way the gateway is served (by `veil serve` and by the tests alike): handlers are
    cancelled when their client disconnects, which is what cancels an upstream request nobody
    is waiting for; connections are guarded (gateway/ingress/connections.py); a shutdown lets
    requests in flight finish for `shutdown_timeout_s`."""
    return GuardedRunner(app, Guard(limits, metrics), handler_cancellation=True,
                         access_log=None, max_line_size=limits.max_header_bytes,
                         max_field_size=limits.max_header_bytes,
                         keepalive_timeout=limits.idle_timeout_s,
                         shutdown_timeout=limits.shutdown_timeout_s)


def runner_for(app: web.Application) -> web.AppRunner:
    """`make_runner` for a gateway app, with its limits and metrics; aiohttp's plain runner for
    any other (the test suite's fake upstreams)."""
    from gateway.app import GATEWAY

    gateway = app.get(GATEWAY)
    if gateway is None:
        return web.AppRunner(app, handler_cancellation=True, access_log=None)
    return make_runner(app, gateway.settings.limits, gateway.metrics)


def tls_context(listen: ListenSettings) -> ssl.SSLContext | None:
    """HTTPS with `listen.tls_cert_file` (Python's defaults for a server: TLS 1.2 and up);
    None: plain HTTP."""
    if listen.tls_cert_file is None or listen.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(listen.tls_cert_file, listen.tls_key_file)
    return context


async def serve_app(app: web.Application, host: str, port: int, *, reuse_port: bool = False,
                    on_started: Callable[[int], None] | None = None,
                    ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve until SIGINT/SIGTERM; on either the listening socket closes at once and the
    requests in flight finish (up to the limit) before the worker stops."""
    runner = runner_for(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024,
                       ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    if on_started:
        on_started(bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def listen_address(host: str, port: int) -> str:
    """host:port as a client would write it ([::1]:8080 for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_worker(config_path: str, settings: Settings, reuse_port: bool,
               worker: int | None = None, policies: PolicySet | None = None, *,
               released: Mapping[str, bytes] | None = None) -> None:
    from gateway.app import build_app
    from gateway.observability.logging import configure_logging

    # Until the event loop takes SIGHUP over (policy reload), it must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    key_env = settings.logging.correlation_key_env
    configure_logging(settings.logging.level, settings.logging.format,
                      correlation_key=os.environ[key_env].encode() if key_env else None)

    def started(port: int) -> None:
        log.info("listening", listen=listen_address(settings.listen.host, port),
                 pid=os.getpid(), config=config_path,
                 tls=settings.listen.tls_cert_file is not None)

    main = serve_app(build_app(settings, worker=worker, policies=policies, released=released),
                     settings.listen.host,
                     settings.listen.port,
                     reuse_port=reuse_port, on_started=started,
                     ssl_context=tls_context(settings.listen))
    try:
        import uvloop  # a faster event loop where it builds (not on Windows)
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def serve(config_path: str, settings: Settings, workers: int,
          policies: PolicySet | None = None,
          released: Mapping[str, bytes] | None = None) -> int:
    """`policies`: as the preflight loaded them; a single worker serves with them, several
    each load their own (a process of its own). `released`: the keys a key service released
    (key_release), asked for once and handed to every worker (through the pipe that starts
    it, never a file)."""
    if workers == 1:
        run_worker(config_path, settings, reuse_port=False, policies=policies,
                   released=released)
        return 0
    # Metrics from every worker are aggregated through files in this directory; it must be
    # set before prometheus_client is imported by any worker.
    metrics_dir = tempfile.mkdtemp(prefix="veil-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(config_path, settings, True, i),
                                 kwargs={"released": released},
                                 name=f"veil-worker-{i}") for i in range(workers)]

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its policies
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return max((p.exitcode or 0) for p in processes)
