"""Policy evaluation: facts in, a `Decision` out. Pure: no I/O, no clock, no detectors run
here. Everything it needs is gathered first, so a decision can be tested and explained.

Order of rules, first match decides the outcome:
1. `actions.<ENTITY>: block` for any entity found (types listed in name order);
2. `semantic[i]` with `block: true` whose score reached its threshold (in listed order);
3. `routing.<class>: {block: true}` for any data class present (from entities, or from a
   semantic rule's `data_class`);
4. otherwise forward, with every `routing.<class>.require` trust level the data needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.policy.loader import LoadedPolicy
from gateway.policy.schema import Action, Policy


@dataclass(frozen=True)
class Facts:
    tenant: str
    route: str
    model: str
    entities: Mapping[str, int] = field(default_factory=dict)  # findings by type, counted
    scores: Mapping[str, float] = field(default_factory=dict)  # "scorer/model/label" -> score


@dataclass(frozen=True)
class Decision:
    outcome: Literal["forward", "block"]
    rule: str
    policy: str  # digest of the policy that decided
    actions: Mapping[str, Action]  # per entity type found
    data_classes: tuple[str, ...]
    requires: tuple[str, ...]  # trust levels a backend must satisfy

    def lines(self) -> list[str]:
        """Human-readable account, for `veil policy explain` and reviewers."""
        out = [f"outcome: {self.outcome} (rule: {self.rule})", f"policy:  {self.policy}"]
        out += [f"  {entity}: {action}" for entity, action in sorted(self.actions.items())]
        if self.data_classes:
            out.append(f"data classes: {', '.join(self.data_classes)}")
        if self.requires:
            out.append(f"requires trust level: {', '.join(self.requires)}")
        return out


def applies(policy: Policy, tenant: str, route: str, model: str) -> bool:
    scope = policy.applies_to
    return all("*" in allowed or value in allowed for allowed, value in
               ((scope.tenants, tenant), (scope.routes, route), (scope.models, model)))


def evaluate(loaded: LoadedPolicy, facts: Facts) -> Decision:
    policy = loaded.policy
    found = sorted(e for e, n in facts.entities.items() if n > 0)
    actions = {e: policy.actions.get(e, policy.default_action) for e in found}
    fired = [rule for rule in policy.semantic
             if (score := facts.scores.get(rule.key)) is not None and score >= rule.threshold]
    classes = tuple(sorted({name for name, dc in policy.data_classes.items()
                            if set(dc.entities) & set(found)}
                           | {rule.data_class for rule in fired if rule.data_class}))

    def decide(outcome: Literal["forward", "block"], rule: str,
               requires: tuple[str, ...] = ()) -> Decision:
        return Decision(outcome, rule, loaded.digest, actions, classes, requires)

    blocked = [e for e in found if actions[e] == "block"]
    if blocked:
        return decide("block", f"actions.{blocked[0]}=block")
    for rule in fired:
        if rule.block:
            return decide("block", f"semantic.{rule.name}")
    for name in classes:
        routing = policy.routing.get(name)
        if routing is not None and routing.block:
            return decide("block", f"routing.{name}.block")
    requires = tuple(sorted({r.require for n in classes
                             if (r := policy.routing.get(n)) and r.require}))
    if not requires:
        return decide("forward", "default")
    return decide("forward", "routing." + "+".join(n for n in classes if n in policy.routing),
                  requires)

