"""The field-coverage table: per endpoint, the strings its structure forwards without a scan
(identifiers, names and opaque tokens, checked against their vocabulary and screened; the
model name, which only routes), the attachments (refused unless the policy forwards them) and
the fields refused outright. Every other string in a request, declared or not, is data and is
scanned. The README's table is this module's output (`python -m gateway.api.coverage`); a test
keeps the two equal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from gateway.api import ENDPOINTS
from gateway.api.endpoint import Endpoint
from gateway.api.structure import Arr, Lazy, Map, Node, Obj, OneOf, Tagged

MAX_DEPTH = 40  # the structures are finite; this only guards a mistake
COLUMNS = ("identifiers", "names", "opaque tokens", "model", "attachments", "refused")


def _children(node: Node) -> Iterator[tuple[str, Node]]:
    """(path suffix, child) of a container node; variants fold into their parent's path."""
    if isinstance(node, Obj):
        yield from ((f".{name}", child) for name, child in node.fields.items())
    elif isinstance(node, Arr):
        yield "[]", node.item
    elif isinstance(node, Map):
        yield ".*", node.value
    elif isinstance(node, OneOf):
        yield from (("", child) for child in (node.string, node.array, node.obj, node.number)
                    if child is not None)
    elif isinstance(node, Tagged):
        yield from (("", child) for child in node.variants.values())
    elif isinstance(node, Lazy):
        yield "", node.resolve()


def _labelled(node: Node, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    label = getattr(node, "label", None)
    if isinstance(label, str):
        yield label, path.lstrip(".")
    if depth < MAX_DEPTH:
        for suffix, child in _children(node):
            yield from _labelled(child, path + suffix, depth + 1)


def columns(endpoint: Endpoint) -> dict[str, list[str]]:
    """label -> the sorted distinct paths that carry it."""
    found: dict[str, set[str]] = defaultdict(set)
    for label, path in _labelled(endpoint.structure, ""):
        found[label].add(path)
    return {label: sorted(found[label]) for label in COLUMNS if label in found}


def markdown() -> str:
    out = ["| Endpoint | Forwarded unscanned: identifiers, names, opaque tokens (checked and "
           "screened); the model (routed) | Attachments (refused unless the policy forwards "
           "them) | Refused |", "|---|---|---|---|"]
    for endpoint in ENDPOINTS:
        found = columns(endpoint)
        checked = "; ".join(f"{label}: " + ", ".join(f"`{p}`" for p in found[label])
                            for label in COLUMNS[:4] if label in found)
        attachments = ", ".join(f"`{p}`" for p in found.get("attachments", [])) or "—"
        refused = ", ".join(f"`{p}`" for p in found.get("refused", [])) or "—"
        out.append(f"| `{endpoint.path}` | {checked} | {attachments} | {refused} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
