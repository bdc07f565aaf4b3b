"""The protocol headers a client may pass to the upstream, each checked against its vocabulary.

Only these are forwarded (never cookies, the client's credentials or hop-by-hop headers), and
only with values from a known vocabulary: an API version is a date, a beta is a name this
gateway knows (or an operator allowed in `privacy.allowed_betas`). Anything else is refused
with a 400 naming the header, so no free text leaves through a header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.errors import InvalidRequest
from gateway.settings import WireFormat

DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
VERSION_DATE = re.compile(r"20\d\d-[01]\d-[0-3]\d")
MAX_BETAS = 32

# The beta names the Anthropic SDKs know (AnthropicBetaParam) as of anthropic 2.14.
ANTHROPIC_BETAS = frozenset({
    "computer-use-2024-10-22", "computer-use-2025-01-24", "computer-use-2025-11-24",
    "output-128k-2025-02-19", "output-300k-2026-03-24", "mcp-client-2025-04-04",
    "mcp-client-2025-11-20", "mcp-client-2026-09-15", "mcp-tunnels-2026-06-22",
    "dev-full-thinking-2025-05-14", "interleaved-thinking-2025-05-14",
    "code-execution-2025-05-22", "context-1m-2025-08-07", "context-management-2025-06-27",
    "model-context-window-exceeded-2025-08-26", "fast-mode-2026-02-01",
    "user-profiles-2026-03-24", "user-profiles-2026-08-18", "user-profiles-2026-09-04",
    "user-profiles-billing-2026-10-01", "advisor-tool-2026-03-01", "managed-agents-2026-04-01",
    "dreaming-2026-04-21", "thinking-token-count-2026-05-13",
    "server-side-fallback-2026-06-01", "server-side-fallback-2026-07-01",
    "fallback-credit-2026-06-01", "fallback-credit-2026-07-01", "agent-memory-2026-07-22",
    "mid-conversation-tool-changes-2026-07-01", "mid-conversation-output-config-2026-07-01",
    "mid-conversation-system-clear-at-2026-08-21", "compact-2026-01-12", "compact-2026-09-04",
    "structured-outputs-2025-11-13", "task-budgets-2026-03-13",
    "thinking-display-updates-2026-08-18", "thinking-binding-controls-2026-08-01",
    "inline-tools-2026-09-15", "ce-plugins-2026-09-01", "spend-limit-reads-2026-09-26",
    "telemetry-destinations-2026-08-11", "webhooks-2026-10-07",
    "admin-user-sign-out-2026-10-08", "message-threads-2026-08-12",
    "analytics-usage-cost-2026-08-24", "experimental-claude-tag-2026-10-21",
    "message-batches-2024-09-24", "prompt-caching-2024-07-31", "pdfs-2024-09-25",
    "token-counting-2024-11-01", "token-efficient-tools-2025-02-19", "files-api-2025-04-14",
    "extended-cache-ttl-2025-04-11", "skills-2025-10-02", "cache-diagnosis-2026-04-07",
    "ce-user-management-2026-07-13", "ce-claude-code-managed-settings-2026-10-06",
    "efs-2026-10-01", "google-managed-data-controls-2026-09-01",
    "fine-grained-tool-streaming-2025-05-14", "web-fetch-2025-09-10",
    "search-results-2025-06-09",
})
# What the OpenAI SDKs send in `OpenAI-Beta`.
OPENAI_BETAS = frozenset({"assistants=v1", "assistants=v2", "realtime=v1", "agents=v1",
                          "chatkit_beta=v1", "responses_multi_agent=v1"})


def forwarded_headers(wire: WireFormat, client: Mapping[str, str],
                      allowed_betas: frozenset[str] = frozenset()) -> dict[str, str]:
    """The headers to forward for `wire`, vetted; raise `InvalidRequest` naming a header whose
    value is outside its vocabulary (the value itself is never quoted: it is client text)."""
    if wire == "anthropic":
        headers = {"anthropic-version": DEFAULT_ANTHROPIC_VERSION}
        version = client.get("anthropic-version")
        if version is not None:
            if not VERSION_DATE.fullmatch(version.strip()):
                raise _refused("anthropic-version", "must be an API version date (YYYY-MM-DD)")
            headers["anthropic-version"] = version.strip()
        betas = _all(client, "anthropic-beta")
        if betas:
            headers["anthropic-beta"] = _betas("anthropic-beta", betas,
                                               ANTHROPIC_BETAS | allowed_betas)
        return headers
    betas = _all(client, "OpenAI-Beta")
    if betas:
        return {"OpenAI-Beta": _betas("OpenAI-Beta", betas, OPENAI_BETAS | allowed_betas)}
    return {}


def _all(client: Mapping[str, str], name: str) -> list[str]:
    """Every value of a header sent more than once (aiohttp's headers are a multidict)."""
    getall = getattr(client, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = client.get(name)
    return [] if value is None else [value]


def _betas(header: str, values: list[str], known: frozenset[str]) -> str:
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if len(names) > MAX_BETAS:
        raise _refused(header, f"lists more than {MAX_BETAS} betas")
    for i, name in enumerate(names, 1):
        if name not in known:
            raise _refused(header, f"item {i} is not a beta this gateway knows (an operator "
                                   "can allow it in privacy.allowed_betas)")
    return ",".join(names)


def _refused(header: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"The '{header}' header {problem}; the request was not forwarded.",
                          param=f"header:{header}", code="header_not_allowed")
