"""What every view of the studio shares: the gateway config it was started with, and one
detection engine, so what a view shows was found by the detectors the gateway runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway.privacy.engine import DetectionEngine
from gateway.settings import Settings


@dataclass
class Studio:
    config_path: Path
    settings: Settings  # as `veil serve` reads it: paths already relative to the config
    ner_workers: int = 1
    _engine: DetectionEngine | None = field(default=None, init=False, repr=False)

    @property
    def policy_files(self) -> list[Path]:
        return [Path(f) for f in self.settings.policies.files]

    @property
    def engine(self) -> DetectionEngine:
        """Made on first use and kept: NER workers take seconds to start, so only the first
        analysis with a NER policy waits for them (`prepare` each selection before use)."""
        if self._engine is None:
            self._engine = DetectionEngine(self.ner_workers)
        return self._engine

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.close()
            self._engine = None


STUDIO_KEY = web.AppKey("studio", Studio)
