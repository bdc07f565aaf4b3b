"""The scorer's evaluation keys, one file per key epoch, dropped once unused for a grace
period: after `veil keys rotate` the old epoch's keys (tens of MiB each) would otherwise pile up
on the scorer for ever. A gateway whose epoch was dropped gets 409 unknown_key and uploads its
keys again, so dropping is always safe, and a short grace only costs a re-upload.

Use is tracked on the monotonic clock, in memory: files found at start count as used then (a
restart grants every epoch a full grace, never drops one on a wall-clock jump).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from gateway.observability.logging import get_logger

log = get_logger("veil.scorer")
SUFFIX = ".galois"


class KeyGrace:
    def __init__(self, keys_dir: Path, grace_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._dir = keys_dir
        self._grace = grace_s
        self._clock = clock
        now = clock()
        self._used = {path.name.removesuffix(SUFFIX): now
                      for path in keys_dir.glob(f"*{SUFFIX}")}

    @property
    def interval_s(self) -> float:
        """How often to prune: a quarter of the grace, at most a minute."""
        return min(60.0, self._grace / 4)

    def used(self, key_id: str) -> None:
        self._used[key_id] = self._clock()

    def prune(self) -> list[str]:
        """Remove the keys of every epoch unused for the grace period; the ids removed."""
        cutoff = self._clock() - self._grace
        stale = sorted(key_id for key_id, last in self._used.items() if last < cutoff)
        for key_id in stale:
            (self._dir / f"{key_id}{SUFFIX}").unlink(missing_ok=True)
            del self._used[key_id]
            log.info("keys_dropped", key_id=key_id, unused_s=self._grace)
        return stale
