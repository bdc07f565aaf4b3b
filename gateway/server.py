"""Run the gateway: one event loop per worker process, all workers bound to the same port with
SO_REUSEPORT so the kernel spreads connections between them."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable

from aiohttp import web

from gateway.observability.logging import get_logger
from gateway.policy.active import PolicySet
from gateway.settings import Settings

log = get_logger("veil.server")


async def serve_app(app: web.Application, host: str, port: int, *, reuse_port: bool = False,
                    max_header_bytes: int = 16 * 1024,
                    on_started: Callable[[int], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; handlers are cancelled when their client disconnects, which
    is what cancels an upstream request nobody is waiting for."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           max_line_size=max_header_bytes, max_field_size=max_header_bytes)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024)
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


def run_worker(config_path: str, settings: Settings, reuse_port: bool,
               worker: int | None = None, policies: PolicySet | None = None) -> None:
    from gateway.app import build_app
    from gateway.observability.logging import configure_logging

    # Until the event loop takes SIGHUP over (policy reload), it must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    key_env = settings.logging.correlation_key_env
    configure_logging(settings.logging.level, settings.logging.format,
                      correlation_key=os.environ[key_env].encode() if key_env else None)

    def started(port: int) -> None:
        log.info("listening", host=settings.listen.host, port=port, pid=os.getpid(),
                 config=config_path)

    main = serve_app(build_app(settings, worker=worker, policies=policies),
                     settings.listen.host,
                     settings.listen.port,
                     reuse_port=reuse_port, max_header_bytes=settings.limits.max_header_bytes,
                     on_started=started)
    try:
        import uvloop  # a faster event loop where it builds (not on Windows)
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def serve(config_path: str, settings: Settings, workers: int,
          policies: PolicySet | None = None) -> int:
    """`policies`: as the preflight loaded them; a single worker serves with them, several
    each load their own (a process of its own)."""
    if workers == 1:
        run_worker(config_path, settings, reuse_port=False, policies=policies)
        return 0
    # Metrics from every worker are aggregated through files in this directory; it must be
    # set before prometheus_client is imported by any worker.
    metrics_dir = tempfile.mkdtemp(prefix="veil-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(config_path, settings, True, i),
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
