"""Every field the official SDKs know, for every endpoint: a canary placed there either never
reaches the upstream, or the request is refused.

The places come from the SDKs' own request types (`tests/sdk_shapes.py` walks the installed
`openai` and `anthropic` TypedDicts), so a field a newer SDK adds is covered without anyone
editing this file. For each place the test builds the smallest body the SDK allows with a
unique canary there (an email address; in free-form `object` fields also a card number sent as
a JSON integer), sends it through the real gateway to the demo upstream, and looks for the
canary, raw and in common encodings, in every byte the upstream received.

A second pass puts a plain value at each place through a gateway whose policy forwards
attachments: the structure must accept what the SDKs send (a 2xx), apart from the few fields
the gateway refuses on purpose, listed in REFUSED_ON_PURPOSE.
"""

from __future__ import annotations

import importlib
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest

from gateway.demo.upstream import DEMO, build_demo_app
from gateway.privacy.patterns import luhn
from tests.integration.test_leak import encodings
from tests.sdk_shapes import Leaf, build, leaves
from tests.servers import TEST_KEY, UNLIMITED, UPSTREAM_SECRET, ServerThread, demo_gateway

SDK_TYPES = [
    ("/v1/chat/completions", "openai.types.chat.completion_create_params",
     "CompletionCreateParamsBase"),
    ("/v1/completions", "openai.types.completion_create_params", "CompletionCreateParamsBase"),
    ("/v1/embeddings", "openai.types.embedding_create_params", "EmbeddingCreateParams"),
    ("/v1/responses", "openai.types.responses.response_create_params",
     "ResponseCreateParamsBase"),
    ("/v1/conversations", "openai.types.conversations.conversation_create_params",
     "ConversationCreateParams"),
    ("/v1/messages", "anthropic.types.message_create_params", "MessageCreateParamsBase"),
    ("/v1/messages", "anthropic.types.beta.message_create_params", "MessageCreateParamsBase"),
    ("/v1/messages/count_tokens", "anthropic.types.message_count_tokens_params",
     "MessageCountTokensParams"),
    ("/v1/messages/count_tokens", "anthropic.types.beta.message_count_tokens_params",
     "MessageCountTokensParams"),
]
# Fields whose plain value the gateway refuses by design (README, "What the gateway reads").
REFUSED_ON_PURPOSE = {
    "model": "only configured models are served (tests/integration/test_error_paths.py)",
    "conversation": "must name a conversation created through this gateway",
    "previous_response_id": "must name a response stored through this gateway",
}
rng = random.Random()


@dataclass(frozen=True)
class Case:
    path: str  # endpoint
    leaf: Leaf
    sdk_type: Any

    def body(self, value: Any) -> dict[str, Any]:
        body = build(self.sdk_type, self.leaf.steps, value)
        top = self.leaf.steps[0].key if self.leaf.steps else ""
        if top != "model" and self.path != "/v1/conversations":  # which names no model
            body["model"] = "test-model"
        if "max_tokens" in body and top != "max_tokens":
            body["max_tokens"] = 16
        body.pop("stream", None)
        return body


def cases() -> list[Case]:
    """Every leaf of every endpoint's SDK types, once per distinct body."""
    seen: set[tuple[str, str]] = set()
    out = []
    for path, module, name in SDK_TYPES:
        sdk_type = getattr(importlib.import_module(module), name)
        for leaf in leaves(sdk_type):
            case = Case(path, leaf, sdk_type)
            key = (path, json.dumps(case.body("\0"), sort_keys=True))
            if key not in seen:
                seen.add(key)
                out.append(case)
    return out


CASES = cases()


def _email() -> str:
    return "cov." + "".join(rng.choice(string.ascii_lowercase) for _ in range(12)) + \
        "@example.org"


def _card() -> int:
    body = "4" + "".join(rng.choice(string.digits) for _ in range(14))
    return int(body + next(d for d in string.digits if luhn(body + d)))


def canaries(case: Case) -> Iterator[tuple[Any, str]]:
    """(value to place, text that must not reach the upstream)."""
    email = _email()
    yield email, email
    if case.leaf.kind == "object":
        card = _card()
        yield card, str(card)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerThread, ServerThread, ServerThread]]:
    """The demo upstream; a gateway with the default attachment policy (refuse); one that
    forwards attachments (for the pass that checks plain values are accepted)."""
    with ServerThread(build_demo_app(required_key=UPSTREAM_SECRET)) as demo:
        forwarding = {"version": 1, "name": "forwarding", "attachments": "forward",
                      "detectors": {"builtin": ["patterns"]}}
        routing = {"conversations_model": "test-model"}
        with demo_gateway(demo.url, default_rate_limit=UNLIMITED, routing=routing) as strict, \
                demo_gateway(demo.url, policy=forwarding, default_rate_limit=UNLIMITED,
                             routing=routing) as lenient:
            yield demo, strict, lenient


def _post(client: httpx.Client, url: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(url, content=json.dumps(body),
                       headers={"Authorization": f"Bearer {TEST_KEY}",
                                "Content-Type": "application/json"})


def test_the_sdks_types_were_read() -> None:
    """Guard against a walker that silently finds nothing (an SDK reorganised its types)."""
    by_endpoint = {path: sum(1 for c in CASES if c.path == path) for path, _, _ in SDK_TYPES}
    assert by_endpoint["/v1/chat/completions"] > 60
    assert by_endpoint["/v1/responses"] > 300
    assert by_endpoint["/v1/conversations"] > 200
    assert by_endpoint["/v1/messages"] > 300
    assert by_endpoint["/v1/messages/count_tokens"] > 100
    assert any(c.leaf.path == "messages[].content[].source.data" for c in CASES)


def test_no_canary_reaches_the_upstream(servers: tuple[ServerThread, ...]) -> None:
    demo, strict, _ = servers
    state = demo.app[DEMO]
    leaked: list[str] = []
    outcomes: dict[str, int] = {"refused": 0, "forwarded": 0}
    with httpx.Client(timeout=30) as client:
        for case in CASES:
            for value, secret in canaries(case):
                state.received.clear()
                r = _post(client, strict.url + case.path, case.body(value))
                outcomes["forwarded" if r.status_code < 400 else "refused"] += 1
                sent = b"\n".join(state.received).decode("utf-8", "replace")
                if any(form in sent for form in encodings(secret)):
                    leaked.append(f"{case.path} {case.leaf.path} ({case.leaf.kind})")
    assert not leaked, f"{len(leaked)} places leak:\n" + "\n".join(sorted(set(leaked)))
    # A gateway refusing everything would pass the check above; most places are data.
    assert outcomes["forwarded"] > outcomes["refused"], outcomes


def test_the_structure_accepts_what_the_sdks_send(servers: tuple[ServerThread, ...]) -> None:
    _, _, lenient = servers
    refused: list[str] = []
    with httpx.Client(timeout=30) as client:
        for case in CASES:
            top = case.leaf.steps[0].key if case.leaf.steps else ""
            if top in REFUSED_ON_PURPOSE:
                continue
            r = _post(client, lenient.url + case.path, case.body(case.leaf.plain))
            if r.status_code >= 400:
                refused.append(f"{case.path} {case.leaf.path}: {r.status_code} "
                               f"{r.json().get('error', {}).get('message', r.text)[:160]}")
    assert not refused, f"{len(refused)} SDK-valid bodies refused:\n" + \
        "\n".join(sorted(set(refused))[:80])
