"""The audit record is built once, from each stage's outcome, each recorded exactly once."""

from __future__ import annotations

import pytest

from gateway.errors import FactAlreadySet
from gateway.ingress.usage import Usage
from gateway.observability.facts import Decided, RequestFacts, Routed


def test_a_fact_cannot_be_written_twice() -> None:
    facts = RequestFacts("chat_completions")
    facts.protected(Decided("forward", "default"))
    with pytest.raises(FactAlreadySet):
        facts.protected(Decided("block", "semantic.x"))
    facts.ended_with("upstream_unavailable", 502)
    with pytest.raises(FactAlreadySet):
        facts.ended_with("internal_error", 500)


def test_every_fail_open_reaches_the_record() -> None:
    facts = RequestFacts("chat_completions")
    facts.admitted("t", "k")
    facts.protected(Decided("forward", "routing.pii", entities={"EMAIL": 1},
                            failed_open=("detector", "scorer")))
    facts.sent(Routed("gpu-1", None, failed_open=True))
    record = facts.record("req_1", 200, 1.0, {})
    assert record["failed_open"] == ["detector", "scorer", "evidence"]
    assert record["rule"] == "routing.pii"
    assert record["decision"] == "forwarded"


def test_a_block_keeps_its_rule_and_the_fail_opens_before_it() -> None:
    facts = RequestFacts("messages")
    facts.protected(Decided("block", "actions.CREDIT_CARD=block", failed_open=("scorer",)))
    facts.ended_with("sensitive_data_blocked", 400)
    record = facts.record("req_2", 400, 1.0, {})
    assert (record["decision"], record["rule"], record["error"]) == \
        ("blocked", "actions.CREDIT_CARD=block", "sensitive_data_blocked")
    assert record["failed_open"] == ["scorer"]


def test_a_request_refused_before_a_decision_records_the_error_as_its_rule() -> None:
    facts = RequestFacts("chat_completions")
    facts.ended_with("invalid_api_key", 401)
    record = facts.record("req_3", 401, 0.1, {})
    assert (record["decision"], record["rule"]) == ("refused", "invalid_api_key")


def test_usage_and_the_keys_name_reach_the_record_once() -> None:
    facts = RequestFacts("chat_completions")
    facts.admitted("t", "ci-key")
    facts.used(Usage(3, 4, 7))
    with pytest.raises(FactAlreadySet):
        facts.used(Usage(1, 1, 2))
    record = facts.record("req_4", 200, 1.0, {})
    assert (record["tenant"], record["key"]) == ("t", "ci-key")
    assert record["usage"] == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert RequestFacts("models").record("req_5", 200, 1.0, {})["usage"] is None
