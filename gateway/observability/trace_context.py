"""W3C Trace Context (traceparent) in and out, strictly.

In: one `traceparent` of version 00, lowercase hex, ids not all zeros, or the request starts a
trace of its own; a client's `tracestate` is never read (vendors' free text: it would be
exported with every span and sent upstream). Out: the traceparent of the gateway's own client
span, written from its ids, never the client's text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
HEADER = "traceparent"


def continued(headers: Mapping[str, str]) -> Context | None:
    """The client's trace for this request to join, or None (no header, a malformed one, or
    more than one) for a new trace."""
    getall = getattr(headers, "getall", None)
    values = list(getall(HEADER, [])) if getall is not None else \
        [v for v in (headers.get(HEADER),) if v is not None]
    if len(values) != 1:
        return None
    match = TRACEPARENT.match(values[0].strip(" \t"))
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    flags = TraceFlags(int(match[3], 16) & TraceFlags.SAMPLED)
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(parent), Context())


def traceparent(context: SpanContext) -> str | None:
    """The header that makes the upstream's spans children of `context`."""
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
