"""Detector plugins: the `veil.detectors` entry-point group, or `module:attribute` paths.

A plugin is loaded only when configuration names it. It must provide `name`, `entities` and
`detect(text)`; anything else is refused at start-up with an error naming the plugin, so a typo
can never mean "silently not scanned".
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from gateway.errors import PluginError
from gateway.privacy.spans import Detector, Span

GROUP = "veil.detectors"


def available() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def plugin_entities(reference: str) -> frozenset[str]:
    """The entity types a plugin declares (it is loaded, so a broken one is found now)."""
    return load_detector(reference).entities


def load_detector(reference: str) -> Detector:
    target = _resolve(reference)
    try:
        detector = target() if isinstance(target, type) else target
    except Exception as exc:
        raise PluginError(f"plugin {reference!r} failed to start: {type(exc).__name__}") from None
    missing = [attr for attr in ("name", "entities", "detect") if not hasattr(detector, attr)]
    if missing:
        raise PluginError(f"plugin {reference!r} lacks {missing} (see the detector contract)")
    return PluginDetector(reference, detector)


def _resolve(reference: str) -> Any:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == reference]
    try:
        if found:
            return found[0].load()
        if ":" in reference:
            module, _, attribute = reference.partition(":")
            return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"plugin {reference!r} failed to load: {type(exc).__name__}") from None
    known = ", ".join(available()) or "none installed"
    raise PluginError(f"unknown detector plugin {reference!r} (installed: {known}; "
                      "or give module:attribute)")


class PluginDetector:
    """Wraps a plugin so that what it returns is checked: well-formed spans inside the text,
    of the entity types it declared. A plugin that breaks the contract fails the request."""

    def __init__(self, reference: str, plugin: Any) -> None:
        self._plugin = plugin
        self.name = str(plugin.name)
        self.entities = frozenset(plugin.entities)
        self.reference = reference

    def detect(self, text: str) -> list[Span]:
        spans = []
        for found in self._plugin.detect(text):
            span = Span(int(found.start), int(found.end), str(found.entity), float(found.score),
                        self.name)
            if span.end > len(text) or span.entity not in self.entities:
                raise PluginError(f"plugin {self.reference!r} returned a span outside its "
                                  "contract")
            spans.append(span)
        return spans
