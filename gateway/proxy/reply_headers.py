"""The upstream headers a client sees, each checked against its vocabulary: the upstream's
request id (to follow a reply up to its provider) and its rate-limit state (to pace a client),
never free text, since the upstream writes them and the client's tools display them.

- The upstream's request id, `apim-request-id` (Azure), `request-id` (Anthropic) or
  `x-request-id` (OpenAI), the first of those it sent, reaches the client as
  `x-upstream-request-id`: `X-Request-ID` stays the gateway's own, the id its logs and audit
  records carry.
- `x-ratelimit-{limit,remaining,reset}-<unit>` reach it as `x-upstream-ratelimit-...`: the
  unprefixed names are the gateway's own, the caller's key quota (gateway/app.py), which is
  what an SDK should pace itself by; the upstream's are shared by every caller of the backend.
- `anthropic-ratelimit-<unit>-{limit,remaining,reset}` and `retry-after` keep their names
  (the gateway sets none of those on a relayed reply).
- `Content-Type`: its media type only (parameters dropped).

A value outside its vocabulary (an id is a short token, a limit a count, a reset a duration
or a timestamp) is dropped, the drop logged by the header's name (one of the names above);
any other header is not relayed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.observability.logging import get_logger

log = get_logger("veil.relay")

REQUEST_IDS = ("apim-request-id", "request-id", "x-request-id")
UPSTREAM_REQUEST_ID = "x-upstream-request-id"
MAX_RELAYED = 32

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
COUNT = re.compile(r"\d{1,15}")
# OpenAI's `6m0s`, `20ms`, `1.5s`; other servers' bare seconds.
DURATION = re.compile(r"(?:\d{1,6}(?:\.\d{1,6})?(?:ms|h|m|s)){1,4}|\d{1,9}(?:\.\d{1,6})?")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)")
HTTP_DATE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul"
                       r"|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT")
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}/[a-z0-9][a-z0-9.+-]{0,63}")
UNIT = r"[a-z]{1,20}(?:-[a-z]{1,20}){0,3}"
OPENAI_LIMIT = re.compile(rf"x-ratelimit-(limit|remaining|reset)-{UNIT}")
ANTHROPIC_LIMIT = re.compile(rf"anthropic-ratelimit-{UNIT}-(limit|remaining|reset)")


def reply_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """The headers to relay from an upstream reply's `upstream` headers, vetted and renamed."""
    relayed: dict[str, str] = {}
    ids: dict[str, str] = {}
    seen: set[str] = set()
    for raw_name, raw_value in upstream.items():
        name = raw_name.lower()
        rule = _rule(name)
        if rule is None or name in seen or len(relayed) >= MAX_RELAYED:
            continue  # not relayed; or the first of a repeated header only
        seen.add(name)
        as_name, vocabularies = rule
        value = raw_value.split(";", 1)[0].strip().lower() if name == "content-type" \
            else raw_value
        if not any(v.fullmatch(value) for v in vocabularies):
            log.info("upstream_header_dropped", header=name)  # a name the rules know; no value
        elif name in REQUEST_IDS:
            ids[name] = value
        else:
            relayed[as_name] = value
    found = next((ids[n] for n in REQUEST_IDS if n in ids), None)
    if found is not None:
        relayed[UPSTREAM_REQUEST_ID] = found
    return relayed


def _rule(name: str) -> tuple[str, tuple[re.Pattern[str], ...]] | None:
    """The name a relayed header goes out as, and the vocabularies its value must be in."""
    if name in REQUEST_IDS:
        return UPSTREAM_REQUEST_ID, (ID,)
    if name == "content-type":
        return "Content-Type", (MEDIA_TYPE,)
    if name == "retry-after":
        return "Retry-After", (COUNT, HTTP_DATE)
    if match := OPENAI_LIMIT.fullmatch(name):
        return "x-upstream-" + name.removeprefix("x-"), \
            (DURATION,) if match[1] == "reset" else (COUNT,)
    if match := ANTHROPIC_LIMIT.fullmatch(name):
        return name, (RFC3339, COUNT) if match[1] == "reset" else (COUNT,)
    return None
