"""What every view of the studio shares: the gateway config it was started with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.settings import Settings


@dataclass
class Studio:
    config_path: Path
    settings: Settings  # as `veil serve` reads it: paths already relative to the config
    ner_workers: int = 1

    @property
    def policy_files(self) -> list[Path]:
        return [Path(f) for f in self.settings.policies.files]


STUDIO_KEY = web.AppKey("studio", Studio)
