"""Policy format, version 1: typed models. Unknown keys are errors everywhere, so a typo can
never silently weaken a policy.

    version: 1
    name: healthcare
    extends: default.yaml            # optional; this file's keys override the base's
    applies_to: {tenants: [...], routes: [...], models: [...]}      # "*" matches all
    detectors: {builtin: [patterns, presidio], plugins: [...], default_threshold: 0.5,
                thresholds: {PERSON: 0.6},
                allow_list: [...], deny_list: {ENTITY: [terms]}}
    default_action: pseudonymize
    actions: {ENTITY: pseudonymize | redact | hash | block | allow}
    data_classes: {phi: {entities: [PERSON, US_SSN]}}
    routing: {phi: {require: confidential-gpu}, secret: {block: true}}
    trust_levels: {confidential-gpu: {sev-snp: {measurements: [...]}}}   (attestation/levels.py)
    backends: {gpu-pool-1: {require: confidential-gpu}}   # never used unless it meets that
    fail_mode: {detector: closed, scorer: closed, evidence: closed}
    unknown_fields: scan               # or refuse: 400 naming a field the gateway does not know
    attachments: refuse                # or forward: images, audio, files, token ids unscanned
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.attestation.levels import TrustLevel

Action = Literal["pseudonymize", "redact", "hash", "block", "allow"]
FailMode = Literal["open", "closed"]
BuiltinDetector = Literal["patterns", "presidio", "gazetteer"]
BUILTIN_DETECTORS: tuple[BuiltinDetector, ...] = ("patterns", "presidio", "gazetteer")
# What the built-in detectors find (tests/unit/privacy/test_identifiers.py keeps this equal to
# the detectors' own declarations; policy/ does not import privacy/).
BUILTIN_ENTITIES = frozenset({
    "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS", "SECRET", "PERSON",
    "LOCATION", "ORGANIZATION", "ADDRESS", "DATE_OF_BIRTH", "UK_NINO", "UK_NHS", "DE_TAX_ID",
    "FR_NIR", "NL_BSN", "ES_DNI", "IT_FISCAL_CODE", "IN_AADHAAR", "IN_PAN", "BR_CPF", "PASSPORT",
    "DRIVING_LICENCE", "UK_DRIVING_LICENCE", "BANK_ACCOUNT", "MEDICAL_RECORD", "CUSTOMER_ID"})
ENTITY_NAME = r"^[A-Z][A-Z0-9_]*[A-Z0-9]$"
NAME = r"^[a-z][a-z0-9-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AppliesTo(Strict):
    tenants: list[str] = Field(default_factory=lambda: ["*"])
    routes: list[str] = Field(default_factory=lambda: ["*"])
    models: list[str] = Field(default_factory=lambda: ["*"])


class Detectors(Strict):
    builtin: list[BuiltinDetector] = Field(default_factory=lambda: list(BUILTIN_DETECTORS))
    plugins: list[str] = Field(default_factory=list)
    default_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    thresholds: dict[Annotated[str, Field(pattern=ENTITY_NAME)],
                     Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    allow_list: list[str] = Field(default_factory=list)
    deny_list: dict[Annotated[str, Field(pattern=ENTITY_NAME)], list[str]] = Field(
        default_factory=dict)
    # A request's detection taking longer is refused (503 detection_timeout), or, with
    # fail_mode.detector: open, forwarded as if nothing was found.
    time_limit_s: Annotated[float, Field(gt=0, le=600)] = 30.0


class DataClass(Strict):
    entities: list[str] = Field(default_factory=list)  # empty: set by semantic rules only


class SemanticRule(Strict):
    """A decision on an encrypted score: the scorer's model, one label, a threshold."""

    name: Annotated[str, Field(pattern=NAME)]
    scorer: str
    model: str
    label: str
    threshold: Annotated[float, Field(ge=-1, le=1)]  # cosine, or a class probability
    data_class: str | None = None  # the request then belongs to this data class
    block: bool = False
    # Over the prompt's windows (gateway/fhe/chunks.py): the highest score, or their mean.
    aggregate: Literal["max", "mean"] = "max"

    @model_validator(mode="after")
    def _one_effect(self) -> SemanticRule:
        if (self.data_class is None) == (not self.block):
            raise ValueError("give exactly one of 'data_class: <name>' or 'block: true'")
        return self

    @property
    def key(self) -> str:
        """Where its score is in a request's facts (and in a policy case's `scores`)."""
        base = f"{self.scorer}/{self.model}/{self.label}"
        return base if self.aggregate == "max" else f"{base}@{self.aggregate}"


class RoutingRule(Strict):
    require: str | None = None  # a trust level (defined with attestation)
    block: bool = False

    @model_validator(mode="after")
    def _one_effect(self) -> RoutingRule:
        if (self.require is None) == (not self.block):
            raise ValueError("give exactly one of 'require: <trust level>' or 'block: true'")
        return self


class BackendRule(Strict):
    require: str  # a trust level this backend must meet to receive anything under this policy


class FailModes(Strict):
    detector: FailMode = "closed"
    scorer: FailMode = "closed"
    evidence: FailMode = "closed"


class Policy(Strict):
    version: Literal[1]
    name: Annotated[str, Field(pattern=NAME)]
    description: str = ""
    extends: str | None = None
    applies_to: AppliesTo = AppliesTo()
    detectors: Detectors = Detectors()
    default_action: Action = "pseudonymize"
    actions: dict[str, Action] = Field(default_factory=dict)
    data_classes: dict[Annotated[str, Field(pattern=NAME)], DataClass] = Field(
        default_factory=dict)
    routing: dict[str, RoutingRule] = Field(default_factory=dict)
    trust_levels: dict[Annotated[str, Field(pattern=NAME)], TrustLevel] = Field(
        default_factory=dict)
    backends: dict[str, BackendRule] = Field(default_factory=dict)  # by backend name
    semantic: list[SemanticRule] = Field(default_factory=list)
    fail_mode: FailModes = FailModes()
    # Fields (and variants) the gateway does not know are scanned as data like any text;
    # `refuse` answers 400 naming the first one instead.
    unknown_fields: Literal["scan", "refuse"] = "scan"
    # Images, audio, files, token ids and data: URLs cannot be scanned: refused (400) unless
    # the policy forwards them, which the audit record then counts.
    attachments: Literal["refuse", "forward"] = "refuse"

    def action(self, entity: str) -> Action:
        return self.actions.get(entity, self.default_action)

    def threshold(self, entity: str) -> float:
        return self.detectors.thresholds.get(entity, self.detectors.default_threshold)

    @property
    def scans(self) -> bool:
        """Whether any detector runs: with none, the gateway does not even walk the texts."""
        return bool(self.detectors.builtin or self.detectors.plugins
                    or self.detectors.deny_list)
