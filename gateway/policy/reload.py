"""Hot reload: on SIGHUP, and when a policy file (or its base, signature or the public key)
changes on disk.

A new set replaces the old only when every file in it loads, validates and verifies, and every
detector it names is ready; otherwise the old set stays in force, the error is logged with file,
line and column, and `veil_policy_reloads_total{result="error"}` counts it. Requests in flight
keep the set they started with (they hold a reference to it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.observability.logging import get_logger
from gateway.observability.metrics import Metrics
from gateway.plugins import PluginError
from gateway.policy.active import PolicySet, fingerprint, load_policy_set, watched_files
from gateway.privacy.engine import DetectionEngine
from gateway.settings import PolicySettings
from gateway.yamlsource import ConfigError

log = get_logger("veil.policy")


class PolicyHolder:
    def __init__(self, settings: PolicySettings, hash_secret: bytes | None,
                 engine: DetectionEngine, metrics: Metrics) -> None:
        self._settings = settings
        self._hash_secret = hash_secret
        self._engine = engine
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._shown: set[tuple[str, str]] = set()
        self.on_reload: list[Callable[[], None]] = []  # e.g. re-evaluate attestation verdicts
        self.current = load_policy_set(settings, hash_secret)  # at start, errors are fatal
        self._seen = fingerprint(watched_files(settings, self.current))
        self._published(self.current)

    async def start(self) -> None:
        """Ready every detector the starting policies name (the NER pool may take seconds)."""
        await self._engine.prepare(self.current.selections)

    async def reload(self, reason: str) -> bool:
        """Load, verify and prepare a new set; swap it in only if all of that succeeded."""
        async with self._lock:
            files = watched_files(self._settings, self.current)
            self._seen = fingerprint(files)
            try:
                candidate = await asyncio.to_thread(load_policy_set, self._settings,
                                                    self._hash_secret)
                await self._engine.prepare(candidate.selections)
            except ConfigError as exc:
                self._failed(reason, [str(issue) for issue in exc.issues])
                return False
            except PluginError as exc:
                self._failed(reason, [str(exc)])
                return False
            self.current = candidate
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
            now = fingerprint(watched_files(self._settings, self.current))
            if now != self._seen:
                await self.reload("file_changed")

    def _failed(self, reason: str, errors: list[str]) -> None:
        self._metrics.policy_reloads.labels("error").inc()
        log.error("policy_reload_failed", reason=reason, errors=errors,
                  kept=[p["digest"] for p in self.current.describe()])

    def _published(self, policies: PolicySet) -> None:
        """1 for each policy in force, 0 for those it replaced (a gauge per digest lets a
        dashboard show which version every worker runs)."""
        for name, digest in self._shown - {(p["name"], p["digest"]) for p in policies.describe()}:
            self._metrics.policy_active.labels(name, digest).set(0)
        self._shown = {(p["name"], p["digest"]) for p in policies.describe()}
        for name, digest in self._shown:
            self._metrics.policy_active.labels(name, digest).set(1)


async def run_watcher(holder: PolicyHolder) -> None:
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
