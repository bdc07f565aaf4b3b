"""The only attributes a span may carry, checked before anything reaches the SDK: a fixed list
of keys, each with its value type. Text values are labels from configuration (tenant, model,
backend, rule, route, error code): one word of a narrow alphabet, no spaces, no `@`, and
screened by the pattern detector (a label that looks like an email, a card number, a phone
number or a secret is dropped). Whatever else a caller passes is dropped, so a slip elsewhere
cannot export a prompt, a reply, a placeholder's value or a client address.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

from gateway.observability.logging import get_logger
from gateway.privacy.patterns import PatternDetector

log = get_logger("veil.tracing")

AttributeValue = str | bool | int | float | tuple[str, ...]

LABELS: Final = frozenset({
    "http.request.method", "http.route", "error.type",
    "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
    "gen_ai.response.model", "veil.route", "veil.tenant", "veil.policy", "veil.decision",
    "veil.rule", "veil.backend", "veil.stage",
})
LABEL_LISTS: Final = frozenset({"veil.failed_open", "veil.data_classes", "veil.detectors"})
# Ours or a client's, already screened by the middleware (gateway/ingress/middleware.py).
IDENTIFIERS: Final = frozenset({"veil.request_id"})
HOSTS: Final = frozenset({"server.address"})  # a backend's, from its configured URL
COUNTS: Final = frozenset({
    "http.response.status_code", "server.port", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "veil.body_bytes", "veil.attempt",
})
FLAGS: Final = frozenset({"veil.stream"})
ENTITY_COUNT: Final = "veil.entities."  # + an entity type (policy schema's ENTITY_NAME)

LABEL = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9._:/{}+=-]{0,127}$")
IDENTIFIER = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,253}$")
ENTITY_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,62}[A-Z0-9]$")
MAX_LIST = 32
SCREENED_MAX = 4096  # distinct labels remembered; configuration has far fewer

_screen = PatternDetector()
_screened: dict[str, bool] = {}
_warned: set[str] = set()


def allowed(attributes: Mapping[str, object]) -> dict[str, AttributeValue]:
    """The attributes that pass; a dropped one is logged by key (never by value)."""
    kept: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        checked = _checked(key, value)
        if checked is None:
            if value is not None:
                _dropped(key)
            continue
        kept[key] = checked
    return kept


def _dropped(key: str) -> None:
    """Logged once per key (by name when it is one of ours; never the value)."""
    name = key if _known(key) else "(unknown)"
    if name not in _warned:
        _warned.add(name)
        log.warning("span_attribute_dropped", key=name)


def _known(key: str) -> bool:
    return key in _CHECKS or key.startswith(ENTITY_COUNT)


def _checked(key: str, value: object) -> AttributeValue | None:
    check = _CHECKS.get(key)
    if check is None and key.startswith(ENTITY_COUNT) and \
            ENTITY_NAME.match(key[len(ENTITY_COUNT):]):
        check = _count
    return check(value) if check is not None else None


def _label(value: object) -> str | None:
    return value if isinstance(value, str) and is_label(value) else None


def _label_list(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, tuple | list) or len(value) > MAX_LIST:
        return None
    labels = tuple(v for v in value if isinstance(v, str) and is_label(v))
    return labels if len(labels) == len(value) else None


def _identifier(value: object) -> str | None:
    return value if isinstance(value, str) and IDENTIFIER.match(value) else None


def _host(value: object) -> str | None:
    return value if isinstance(value, str) and HOST.match(value) else None


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


_CHECKS: dict[str, Callable[[object], AttributeValue | None]] = {
    **dict.fromkeys(LABELS, _label), **dict.fromkeys(LABEL_LISTS, _label_list),
    **dict.fromkeys(IDENTIFIERS, _identifier), **dict.fromkeys(HOSTS, _host),
    **dict.fromkeys(COUNTS, _count), **dict.fromkeys(FLAGS, _flag),
}


def is_label(value: str) -> bool:
    """A name from configuration, not data: its alphabet, and nothing the detector finds."""
    if not LABEL.match(value):
        return False
    found = _screened.get(value)
    if found is None:
        if len(_screened) >= SCREENED_MAX:
            _screened.clear()
        found = _screened[value] = not _screen.detect(value)
    return found
