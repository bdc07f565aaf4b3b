"""Request bodies built from the official SDKs' own request types (the TypedDicts of `openai`
and `anthropic`), for tests that must cover every field those SDKs know, including fields a
newer SDK version adds, without anyone editing the test.

`leaves(T)` lists every place in a body of type `T` where a string goes: a `str` field, an
enumerated (`Literal`) string, an object key of a free-form map, a free-form (`object`)
value. `body_for(T, leaf, value)` builds the smallest body the SDK's types allow that holds
`value` at that place: every required field filled with a plain value, every union on the way
resolved to the variant the place belongs to.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import typing_extensions as te

MAX_STEPS = 14
REQUIRED_MARKERS = {te.Required, typing.Required}
WRAPPERS = {te.Required, te.NotRequired, typing.Required, typing.NotRequired}
LISTS = {list, collections.abc.Iterable, collections.abc.Sequence, tuple}
DICTS = {dict, collections.abc.Mapping}


@dataclass(frozen=True)
class Step:
    """One step into a type: a field (`key`), a union variant (`variant`), an array item
    (`item`), a map's value (`value`)."""

    kind: Literal["key", "variant", "item", "value"]
    key: str = ""
    index: int = 0


@dataclass(frozen=True)
class Leaf:
    steps: tuple[Step, ...]
    kind: Literal["str", "literal", "key", "object"]
    plain: str = "x"  # a value the SDK's types accept here (a Literal's own value)

    @property
    def path(self) -> str:
        """The JSON path, as the gateway's errors render it (`messages[].content[].text`)."""
        out = ""
        for step in self.steps:
            if step.kind == "key":
                out += ("." if out else "") + step.key
            elif step.kind == "item":
                out += "[]"
            elif step.kind == "value":
                out += ".*"
        return out + (".<key>" if self.kind == "key" else "")


def _unwrap(t: Any) -> tuple[Any, bool]:
    """(the type inside Required/NotRequired/Annotated, whether it was Required)."""
    required = False
    while True:
        origin = get_origin(t)
        if origin in WRAPPERS:
            required = required or origin in REQUIRED_MARKERS
            t = get_args(t)[0]
        elif origin in (te.Annotated, typing.Annotated):
            t = get_args(t)[0]
        else:
            return t, required


def _alias(annotation: Any) -> str | None:
    while get_origin(annotation) in WRAPPERS:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (te.Annotated, typing.Annotated):
        for meta in get_args(annotation)[1:]:
            alias = getattr(meta, "alias", None)
            if alias:
                return str(alias)
    return None


def fields(t: Any) -> list[tuple[str, Any, bool]]:
    """(JSON name, type, required) of a TypedDict's body fields; header parameters (aliases
    such as `anthropic-beta`) are not body fields and are left out."""
    out = []
    for name, annotation in get_type_hints(t, include_extras=True).items():
        alias = _alias(annotation)
        if alias is not None and "-" in alias:
            continue
        inner, required = _unwrap(annotation)
        out.append((alias or name, inner, required or name in getattr(t, "__required_keys__",
                                                                       ())))
    return out


def _is_typeddict(t: Any) -> bool:
    return isinstance(t, type) and te.is_typeddict(t)


def _variants(t: Any) -> list[Any]:
    return [a for a in get_args(t) if a is not type(None)]


def _is_union(t: Any) -> bool:
    return get_origin(t) in (Union, types.UnionType)


def _is_list(t: Any) -> bool:
    origin = get_origin(t)
    return origin in LISTS or getattr(origin, "__name__", "") == "SequenceNotStr"


def leaves(t: Any, steps: tuple[Step, ...] = (), seen: frozenset[Any] = frozenset()
           ) -> Iterator[Leaf]:
    t, _ = _unwrap(t)
    if len(steps) > MAX_STEPS:
        return
    if _is_union(t):
        for i, variant in enumerate(_variants(t)):
            yield from leaves(variant, (*steps, Step("variant", index=i)), seen)
    elif get_origin(t) in (Literal, te.Literal):
        strings = [v for v in get_args(t) if isinstance(v, str)]
        if strings:
            yield Leaf(steps, "literal", strings[0])
    elif t is str:
        yield Leaf(steps, "str")
    elif t is object:
        yield Leaf(steps, "object")
    elif _is_typeddict(t):
        if t in seen:
            return
        for name, inner, _ in fields(t):
            yield from leaves(inner, (*steps, Step("key", name)), seen | {t})
    elif _is_list(t):
        yield from leaves(get_args(t)[0], (*steps, Step("item")), seen)
    elif get_origin(t) in DICTS:
        yield Leaf((*steps, Step("value")), "key")
        yield from leaves(get_args(t)[1], (*steps, Step("value")), seen)


PLAIN: dict[Any, Any] = {str: "x", bool: False, int: 1, float: 0.5, object: "x", Any: "x",
                         type(None): None}


def minimal(t: Any, seen: frozenset[Any] = frozenset()) -> Any:
    """The plainest value of type `t`."""
    t, _ = _unwrap(t)
    if _is_union(t):
        options = _variants(t)
        plain = [o for o in options if _unwrap(o)[0] in (str, int, float, bool)
                 or get_origin(_unwrap(o)[0]) in (Literal, te.Literal)]
        candidates = plain or [o for o in options if _unwrap(o)[0] not in seen] or options
        value = minimal(candidates[0], seen)
    elif get_origin(t) in (Literal, te.Literal):
        value = get_args(t)[0]
    elif _is_typeddict(t):
        value = {} if t in seen else {name: minimal(inner, seen | {t})
                                      for name, inner, required in fields(t) if required}
    elif _is_list(t):
        value = [minimal(get_args(t)[0], seen)]
    elif get_origin(t) in DICTS:
        value = {}
    else:
        value = PLAIN.get(t)
    return value


def build(t: Any, steps: tuple[Step, ...], value: Any, seen: frozenset[Any] = frozenset()
          ) -> Any:
    """A value of type `t` holding `value` where `steps` lead; everything else minimal."""
    t, _ = _unwrap(t)
    if not steps:
        return value
    step, rest = steps[0], steps[1:]
    if step.kind == "variant":
        return build(_variants(t)[step.index], rest, value, seen)
    if step.kind == "item":
        return [build(get_args(t)[0], rest, value, seen)]
    if step.kind == "value":
        if not rest:  # the key itself
            return {value: minimal(get_args(t)[1], seen)}
        return {"k": build(get_args(t)[1], rest, value, seen)}
    body = {name: minimal(inner, seen | {t}) for name, inner, required in fields(t)
            if required}
    inner = {name: tp for name, tp, _ in fields(t)}[step.key]
    body[step.key] = build(inner, rest, value, seen | {t})
    return body
