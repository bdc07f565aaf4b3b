"""Decide which detections are findings and rewrite the texts.

Per entity type, from the policy: a score threshold, then the action (pseudonymize, redact,
hash, allow; `block` is the policy decision's business, before anything is rewritten).
Allow-listed literal terms are never findings; deny-listed ones always are. Texts are processed
in conversation order, so placeholders are numbered by first appearance across the whole
conversation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.errors import InvalidRequest
from gateway.keys.material import Deriver, MemoryDeriver
from gateway.privacy.spans import Span, non_overlapping
from gateway.privacy.vault import Vault

NAME_PART_SCORE = 0.55  # below NER's own labels, so a part that NER calls an ORG stays one
Action = str  # pseudonymize | redact | hash | block | allow (the policy format checks them)


@dataclass(frozen=True)
class MaskingRules:
    """What a policy says about findings, as the masker needs it (built from a policy by
    `gateway.protect`; this package knows nothing of the policy format)."""

    default_threshold: float = 0.5
    thresholds: Mapping[str, float] = field(default_factory=dict)
    default_action: Action = "pseudonymize"
    actions: Mapping[str, Action] = field(default_factory=dict)
    allow_list: tuple[str, ...] = ()
    deny_list: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def threshold(self, entity: str) -> float:
        return self.thresholds.get(entity, self.default_threshold)

    def action(self, entity: str) -> Action:
        return self.actions.get(entity, self.default_action)


WORD_RUN = re.compile(r"\w+")
POSSESSIVE = re.compile(r"['\u2019]s?$")
# Words that are also names: "Will Grant" found once makes "Will" and "GRANT" findings
# elsewhere, but not the lowercase "will" or "grant" of ordinary prose.
COMMON_WORDS = frozenset("""
    will may mark bill grant rose hope june april august joy faith grace art dawn summer
    autumn winter sky ray gene jack frank earl rich miles wade lane bay bell king young white
    brown green black gray grey hill wood woods stone hall long short price page cook baker
    miller carter hunter fisher mason cooper turner walker bishop pope dean chase crystal amber
    jewel iris lily violet ivy daisy holly olive hazel ruby pearl ginger penny sandy rusty
    don drew pat sue van guy nick rob chuck major sterling noble love wolf fox lamb bird swan
    crane north west east south day night case field ford little small strong best good man
    said bush rice cross park street banks marsh booth brook brooks foster gross hart house
    keys knight lord march more moss oak porter post power reed rock sharp shepherd snow spring
    steel sweet tower tucker walls ward waters webb wells wise worth york paris china jordan
    austin chance christian destiny felicity harmony heather honey justice liberty melody
    misty robin sunny trinity angel august cliff dale glen heath hunter rod sonny bobby
    """.split())  # noqa: SIM905 (a word list reads best as words)


# Particles of names found in lower case ("de Vries"): never parts on their own.
PARTICLES = frozenset({"van", "von", "der", "den", "del", "della", "des", "das", "dos", "ten",
                       "ter", "bin", "ibn", "binti", "abu", "ben"})


def _part(name: str) -> str:
    """A name as a part to look for again: without a possessive ("Ana's" is Ana)."""
    return POSSESSIVE.sub("", name)


class NameParts:
    """The names found in a conversation and each of their parts, found again wherever they
    recur, in any case ("Faina D. Yefremova" found once: a later bare "Yefremova", "YEFREMOVA"
    or "yefremova's" must not leak). Looked up by the case-folded word a part starts with, at
    each word of the text: linear in the text, however many names there are."""

    __slots__ = ("_by_first_word", "_parts")

    def __init__(self, by_first_word: dict[str, tuple[str, ...]] | None = None) -> None:
        self._by_first_word = by_first_word or {}  # folded first word -> folded parts
        self._parts = {p for found in self._by_first_word.values() for p in found}

    def including(self, names: Iterable[str], allow: set[str]) -> NameParts:
        parts = {_part(part).casefold() for name in names for part in (name, *name.split())
                 if len(_part(part)) >= 3 and (part[0].isupper() or (
                     part.isalpha() and part.casefold() not in PARTICLES))
                 and _part(part).casefold() not in allow}
        if parts <= self._parts:
            return self
        index = {word: list(found) for word, found in self._by_first_word.items()}
        for part in parts:
            first = WORD_RUN.match(part)
            if first is not None:
                index.setdefault(first.group(), []).append(part)
        return NameParts({w: tuple(sorted(set(p), key=len, reverse=True))
                          for w, p in index.items()})

    def find(self, text: str) -> list[Span]:
        if not self._by_first_word:
            return []
        found = []
        for word in WORD_RUN.finditer(text):
            start = word.start()
            if start and (text[start - 1].isalnum() or text[start - 1] == "_"):
                continue
            for part in self._by_first_word.get(word.group().casefold(), ()):
                end = start + len(part)
                seen = text[start:end]
                if seen.casefold() == part and (end == len(text) or not (
                        text[end].isalnum() or text[end] == "_")) and not (
                        seen.islower() and part in COMMON_WORDS):
                    found.append(Span(start, end, "PERSON", NAME_PART_SCORE, "name_parts"))
                    break
        return found


@dataclass
class MaskResult:
    texts: list[str]
    vault: Vault
    counts: Counter[str] = field(default_factory=Counter)  # entity -> findings acted on
    detectors: set[str] = field(default_factory=set)  # detectors whose findings were acted on


class Masker:
    def __init__(self, rules: MaskingRules, hash_secret: bytes | Deriver | None = None) -> None:
        """`hash_secret`: the hash key's bytes, or what derives from it where it is kept (the
        HSM: each tenant's key derived there once, then held in memory)."""
        self._rules = rules
        self._hash_key = MemoryDeriver(hash_secret) if isinstance(hash_secret, bytes) \
            else hash_secret
        self._allow = {term.casefold() for term in rules.allow_list}
        self._deny = [(entity, re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", re.IGNORECASE))
                      for entity, terms in rules.deny_list.items() for term in terms]

    def pseudonym_key(self, tenant: str) -> bytes | None:
        """The tenant's key for keyed placeholders (gateway/privacy/vault.py), from the same
        secret as the `hash` action under another label; None without that secret."""
        if self._hash_key is None:
            return None
        return self._hash_key.derive(b"veil-pseudonym-v1:" + tenant.encode())

    def findings(self, text: str, spans: Sequence[Span],
                 names: NameParts | None = None) -> list[Span]:
        """Thresholds, allow- and deny-lists, name parts seen elsewhere in the conversation,
        then overlaps (higher score, then longer, wins)."""
        candidates = [s for s in spans
                      if s.score >= self._rules.threshold(s.entity)
                      and text[s.start:s.end].strip().casefold() not in self._allow]
        candidates += [Span(m.start(), m.end(), entity, 1.0, "deny_list")
                       for entity, regex in self._deny for m in regex.finditer(text)]
        found_here = [text[s.start:s.end] for s in candidates if s.entity == "PERSON"]
        if names is not None or found_here:
            parts = (names or NameParts()).including(found_here, self._allow)
            if self._rules.threshold("PERSON") <= NAME_PART_SCORE:
                candidates += parts.find(text)
        # Highest score first, then the longest, then position and name: a total order, so
        # the result never depends on which detector happened to report first.
        candidates.sort(key=lambda s: (-s.score, s.start - s.end, s.start, s.entity,
                                       s.detector))
        return non_overlapping(candidates, len(text))

    def conversation_findings(self, texts: Sequence[str],
                              spans: Sequence[Sequence[Span]]) -> list[list[Span]]:
        """Findings per text; a name found in one message is a finding in every other."""
        names = [t[s.start:s.end] for t, found in zip(texts, spans, strict=True) for s in found
                 if s.entity == "PERSON" and s.score >= self._rules.threshold("PERSON")]
        parts = NameParts().including(names, self._allow)
        return [self.findings(t, s, parts) for t, s in zip(texts, spans, strict=True)]

    def rewrite(self, texts: Sequence[str], findings: Sequence[Sequence[Span]],
                tenant: str, vault: Vault | None = None) -> MaskResult:
        """Rewrite every text; placeholders come from `vault` (one seeded with a stored
        conversation's mapping, or reserving what the client typed), or a fresh one."""
        result = MaskResult([], Vault() if vault is None else vault)
        for text, found in zip(texts, findings, strict=True):
            result.texts.append(self._rewrite(text, list(found), tenant, result))
        return result

    def mask(self, texts: Sequence[str], spans: Sequence[Sequence[Span]],
             tenant: str) -> MaskResult:
        return self.rewrite(texts, self.conversation_findings(texts, spans), tenant)

    def _rewrite(self, text: str, found: list[Span], tenant: str, result: MaskResult) -> str:
        out: list[str] = []
        last = 0
        for span in found:
            action = self._rules.action(span.entity)
            if action == "block":  # the decision refuses first; this is the backstop
                raise InvalidRequest("Request blocked by policy.", code="sensitive_data_blocked")
            if action == "allow":
                continue
            value = text[span.start:span.end]
            out.append(text[last:span.start])
            out.append(self._replacement(action, span.entity, value, tenant, result.vault))
            result.counts[span.entity] += 1
            result.detectors.add(span.detector)
            last = span.end
        out.append(text[last:])
        return "".join(out)

    def _replacement(self, action: str, entity: str, value: str, tenant: str,
                     vault: Vault) -> str:
        if action == "pseudonymize":
            return vault.placeholder(entity, value)
        if action == "redact":
            return f"[REDACTED:{entity}]"
        if self._hash_key is None:  # config validation makes this unreachable
            raise InvalidRequest("hash action configured without a key", code="config_error")
        tenant_key = self._hash_key.derive(b"veil-hash-v1:" + tenant.encode())
        digest = hmac.new(tenant_key, value.encode(), hashlib.sha256).hexdigest()[:16]
        return f"[{entity}:{digest}]"
