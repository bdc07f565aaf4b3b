"""The privacy stage of the pipeline: find every text, detect, decide, rewrite in place."""

from __future__ import annotations

from gateway.api.request import ApiRequest
from gateway.api.texts import text_slots
from gateway.observability.facts import RequestFacts
from gateway.observability.metrics import Metrics
from gateway.plugins import load_detector
from gateway.privacy.engine import DetectionEngine
from gateway.privacy.masker import BlockedBySensitiveData, Masker
from gateway.privacy.vault import Vault
from gateway.settings import LoggingSettings, PrivacySettings


class PrivacyStage:
    def __init__(self, settings: PrivacySettings, metrics: Metrics,
                 hash_secret: bytes | None, logging: LoggingSettings | None = None) -> None:
        plugins = [load_detector(reference) for reference in settings.plugins]
        logging = logging or LoggingSettings()
        self.engine = DetectionEngine(settings.detectors, settings.ner_workers, plugins=plugins,
                                      log_level=logging.level, log_format=logging.format)
        self._masker = Masker(settings, hash_secret)
        self._metrics = metrics

    async def protect(self, request: ApiRequest, tenant: str, facts: RequestFacts) -> Vault:
        """Rewrite the request's texts in place; return the vault that restores the reply."""
        slots = text_slots(request)
        texts = [slot.text for slot in slots]
        spans = await self.engine.detect(texts)
        facts.stage("detect")
        try:
            result = self._masker.mask(texts, spans, tenant)
        except BlockedBySensitiveData as blocked:
            facts.decision = "blocked"
            facts.rule = "privacy.actions[" + ",".join(blocked.entities) + "]=block"
            facts.entities.update(blocked.entities)
            self._metrics.blocked.labels("privacy.actions").inc()
            raise
        for slot, text in zip(slots, result.texts, strict=True):
            slot.set(text)
        for entity, count in result.counts.items():
            self._metrics.entities.labels(entity).inc(count)
        facts.entities.update(result.counts)
        facts.detectors.update(result.detectors)
        facts.stage("mask")
        return result.vault
