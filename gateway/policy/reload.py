"""Hot reload: on SIGHUP, and when a policy file (or its base, signature or the public key)
changes on disk.

A new set replaces the old only when every file in it loads, validates and verifies, and every
detector it names is ready; otherwise the old set stays in force, the error is logged with file,
line and column, and `veil_policy_reloads_total{result="error"}` counts it. Requests in flight
keep the set they started with (they hold a reference to it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from gateway.errors import ConfigError
from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.policy.active import PolicySet, fingerprint, watched_files
from gateway.settings import PolicySettings

log = get_logger("veil.policy")
Compiled = TypeVar("Compiled")


class PolicyHolder(Generic[Compiled]):
    """The policies in force. `load` reads and checks the files (raises `ConfigError`);
    `compile` turns a loaded set into what requests use (in the gateway: maskers, and their
    detectors made ready) and may refuse it (a plugin that does not load: `LookupError`)."""

    def __init__(self, settings: PolicySettings, load: Callable[[], PolicySet],
                 compile: Callable[[PolicySet], Awaitable[Compiled]],
                 metrics: Metrics, initial: PolicySet | None = None) -> None:
        self._settings = settings
        self._load = load
        self._compile = compile
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._shown: set[tuple[str, str]] = set()
        self.on_reload: list[Callable[[], None]] = []  # e.g. re-evaluate attestation verdicts
        self.policies = load() if initial is None else initial  # at start, errors are fatal
        self._current: Compiled | None = None
        self._seen = fingerprint(watched_files(settings, self.policies))
        self._published(self.policies)

    @property
    def current(self) -> Compiled:
        if self._current is None:
            raise RuntimeError("policies are not compiled yet (start() has not run)")
        return self._current

    @property
    def compiled(self) -> bool:
        """Whether the policies in force are ready for requests (start() has run)."""
        return self._current is not None

    async def start(self) -> None:
        """Compile the starting set (the NER pool, if a policy needs it, may take seconds)."""
        self._current = await self._compile(self.policies)

    async def reload(self, reason: str) -> bool:
        """Load, verify and compile a new set; swap it in only if all of that succeeded."""
        async with self._lock:
            files = watched_files(self._settings, self.policies)
            self._seen = fingerprint(files)
            try:
                candidate = await asyncio.to_thread(self._load)
                compiled = await self._compile(candidate)
            except ConfigError as exc:
                self._failed(reason, [str(issue) for issue in exc.issues])
                return False
            except LookupError as exc:
                self._failed(reason, [str(exc)])
                return False
            self.policies, self._current = candidate, compiled
            for listener in self.on_reload:
                listener()
            self._seen = fingerprint(watched_files(self._settings, candidate))
            self._metrics.policy_reloads.labels("ok").inc()
            self._published(candidate)
            log.info("policy_reloaded", reason=reason, policies=candidate.describe())
            return True

    async def watch(self) -> None:
        """Poll the files every `watch_interval_s`: a stat per file, no extra dependency, and
        it works the same on every filesystem (inotify misses edits on some network mounts)."""
        interval = self._settings.watch_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            now = fingerprint(watched_files(self._settings, self.policies))
            if now != self._seen:
                await self.reload("file_changed")

    def _failed(self, reason: str, errors: list[str]) -> None:
        self._metrics.policy_reloads.labels("error").inc()
        log.error("policy_reload_failed", reason=reason, errors=errors,
                  kept=[p["digest"] for p in self.policies.describe()])

    def _published(self, policies: PolicySet) -> None:
        """1 for each policy in force, 0 for those it replaced (a gauge per digest lets a
        dashboard show which version every worker runs)."""
        for name, digest in self._shown - {(p["name"], p["digest"]) for p in policies.describe()}:
            self._metrics.policy_active.labels(name, digest).set(0)
        self._shown = {(p["name"], p["digest"]) for p in policies.describe()}
        for name, digest in self._shown:
            self._metrics.policy_active.labels(name, digest).set(1)


async def run_watcher(holder: PolicyHolder[Any]) -> None:
    """The watch loop as a task that survives its own bugs: a crash is logged, not fatal."""
    while True:
        try:
            await holder.watch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("policy_watch_failed", error_type=type(exc).__name__)  # noqa: TRY400
            await asyncio.sleep(5)
        else:
            return
