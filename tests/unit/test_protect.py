"""The protect stage on its own: a pure function of the texts, the compiled policy, the
findings and the scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.api.structure import Attachment
from gateway.errors import InvalidRequest
from gateway.explain import compiled_for
from gateway.policy.loader import load_policy
from gateway.privacy.patterns import PatternDetector
from gateway.privacy.spans import Span
from gateway.protect import CompiledPolicy, Detections, Scores, admit, protect

TEXT = "Mail ann@example.org, card 4111 1111 1111 1111"


def compiled(tmp_path: Path, **fields: Any) -> CompiledPolicy:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "name": "p", **fields}))
    return compiled_for(load_policy(path))


def found(texts: list[str]) -> Detections:
    detector = PatternDetector()
    return Detections([detector.detect(t) for t in texts])


def test_forward_rewrites_and_counts_types_never_values(tmp_path: Path) -> None:
    policy = compiled(tmp_path)
    protection = protect([TEXT], policy, found([TEXT]), Scores(), tenant="t")
    assert protection.texts == ("Mail <EMAIL_1>, card <CREDIT_CARD_1>",)
    assert protection.decision.outcome == "forward"
    facts = protection.facts()
    assert facts.entities == {"EMAIL": 1, "CREDIT_CARD": 1}
    assert "ann@example.org" not in repr(facts)
    assert protection.vault.restore("<EMAIL_1>") == "ann@example.org"


def test_block_rewrites_nothing(tmp_path: Path) -> None:
    policy = compiled(tmp_path, actions={"CREDIT_CARD": "block"})
    protection = protect([TEXT], policy, found([TEXT]), Scores(), tenant="t")
    assert protection.blocked
    assert protection.texts is None
    assert protection.decision.rule == "actions.CREDIT_CARD=block"
    error = protection.refusal()
    assert (error.status, error.code) == (400, "sensitive_data_blocked")
    assert "4111" not in error.message


def test_semantic_scores_decide(tmp_path: Path) -> None:
    policy = compiled(tmp_path, semantic=[{"name": "deals", "scorer": "s", "model": "m",
                                           "label": "ma", "threshold": 0.5, "block": True}])
    low = protect(["hello"], policy, found(["hello"]), Scores({"s/m/ma": 0.2}), tenant="t")
    high = protect(["hello"], policy, found(["hello"]), Scores({"s/m/ma": 0.7}), tenant="t")
    assert (low.decision.outcome, high.decision.outcome) == ("forward", "block")
    assert high.decision.rule == "semantic.deals"


def test_every_fail_open_is_kept(tmp_path: Path) -> None:
    """Both the detector and the scorer failed open: the record keeps both, and a block that
    follows does not erase them."""
    policy = compiled(tmp_path, actions={"CREDIT_CARD": "block"})
    protection = protect([TEXT], policy, Detections([[Span(27, 46, "CREDIT_CARD", 1.0, "x")]],
                                                    failed_open=True),
                         Scores(failed_open=True), tenant="t")
    assert protection.blocked
    assert protection.facts().failed_open == ("detector", "scorer")


def test_the_result_does_not_depend_on_which_detector_reported_first(tmp_path: Path) -> None:
    policy = compiled(tmp_path)
    a = Span(5, 20, "EMAIL", 0.9, "one")
    b = Span(5, 20, "PERSON", 0.9, "two")
    first = protect([TEXT], policy, Detections([[a, b]]), Scores(), tenant="t")
    second = protect([TEXT], policy, Detections([[b, a]]), Scores(), tenant="t")
    assert first.texts == second.texts
    assert first.findings == second.findings


def test_placeholders_continue_a_stored_mapping_and_skip_typed_ones(tmp_path: Path) -> None:
    policy = compiled(tmp_path)
    texts = ["Template <EMAIL_2>; now bob@example.org"]
    protection = protect(texts, policy, found(texts), Scores(), tenant="t",
                         seed=[("<EMAIL_1>", "EMAIL", "ann@example.org")])
    assert protection.texts == ("Template <EMAIL_2>; now <EMAIL_3>",)
    assert protection.vault.restore("<EMAIL_1> <EMAIL_2> <EMAIL_3>") == \
        "ann@example.org <EMAIL_2> bob@example.org"


def test_admit_follows_the_policy(tmp_path: Path) -> None:
    image = [Attachment("messages[0].content[1].image_url", "image")]
    with pytest.raises(InvalidRequest, match="attachments: forward") as caught:
        admit(image, [], compiled(tmp_path).policy)
    assert caught.value.param == "messages[0].content[1].image_url"
    assert admit(image, [], compiled(tmp_path, attachments="forward").policy) == {"image": 1}
    assert admit([], ["top_k"], compiled(tmp_path).policy) == {}
    with pytest.raises(InvalidRequest, match="unknown fields"):
        admit([], ["top_k"], compiled(tmp_path, unknown_fields="refuse").policy)
