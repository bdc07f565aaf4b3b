"""The declared structure of a request body, and the walk that finds every piece of data in it.

Deny by default. Each endpoint declares which values in its body are *structural*: type
discriminators and enumerations within their vocabulary, identifiers, names, opaque tokens the
upstream issued, numbers and booleans. Those are checked (type, vocabulary) and left alone.
Everything else is *data* and becomes a slot the privacy stage scans and may rewrite:

- every declared text field, and every string in a field the gateway does not know;
- in free-form JSON (tool inputs, JSON schemas, unknown fields): every string, every object
  key, and every number as its decimal text (a card number sent as a JSON integer);
- JSON held in a string (tool-call arguments, a tool result that is a JSON document): parsed,
  its leaves scanned, and re-serialised only if something in it changed;
- enumerations with a value outside their vocabulary (a newer API version's value, or text
  smuggled into an enum) are scanned like text.

A declared field of the wrong type is an `InvalidRequest` naming the field, never a skip.
Attachments (images, audio, files, token arrays, `data:` URLs) cannot be scanned: they are
listed, with the path and kind, for the policy to refuse or forward. Fields and variants the
gateway does not know are listed too, for policies that refuse them.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.errors import InvalidRequest
from gateway.privacy.patterns import PatternDetector

MAX_DEPTH = 64  # deeper JSON is refused: no API nests anywhere near this
MAX_VALUES = 200_000  # separate pieces of data in one request (a 10 MiB body of short values)
IDENTIFIER = re.compile(r"[A-Za-z0-9_.:\-]{0,256}")
NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
OPAQUE = re.compile(r"[A-Za-z0-9+/=_.:\-]*")
DATA_URL = re.compile(r"\s*data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.I)
_SCREEN = PatternDetector()
# Identifiers and names recur on every turn (tool names, call ids): the ones that passed the
# screen are remembered (only those: a flagged value is never kept).
CLEAN_TOKENS_KEPT = 4096
_CLEAN_TOKENS: OrderedDict[str, None] = OrderedDict()


# --- where a value is ---------------------------------------------------------------------------

class _Doc:
    """A JSON document held in a string: written back, re-serialised, only if a slot inside
    it changed."""

    __slots__ = ("container", "dirty", "holder", "key", "parent")

    def __init__(self, value: Any, container: Any, key: str | int, parent: _Doc | None) -> None:
        self.holder = [value]
        self.container = container
        self.key = key
        self.parent = parent
        self.dirty = False

    def finish(self) -> None:
        if self.dirty:
            self.container[self.key] = orjson.dumps(self.holder[0]).decode()
            if self.parent is not None:
                self.parent.dirty = True


# --- slots: data the privacy stage reads and may rewrite ---------------------------------------

class Slot(Protocol):
    @property
    def text(self) -> str: ...

    def set(self, text: str) -> None: ...


class ValueSlot:
    """A string value: `container[key]`."""

    __slots__ = ("container", "doc", "key")

    def __init__(self, container: Any, key: str | int, doc: _Doc | None) -> None:
        self.container = container
        self.key = key
        self.doc = doc

    @property
    def text(self) -> str:
        value = self.container[self.key]
        if not isinstance(value, str):
            raise TypeError("slot no longer holds a string")
        return value

    def set(self, text: str) -> None:
        self.container[self.key] = text
        if self.doc is not None:
            self.doc.dirty = True


class NumberSlot:
    """A number in free-form JSON, scanned as its decimal text; a rewrite makes it a string."""

    __slots__ = ("container", "doc", "key", "text")

    def __init__(self, container: Any, key: str | int, doc: _Doc | None) -> None:
        self.container = container
        self.key = key
        self.doc = doc
        self.text = str(container[key])

    def set(self, text: str) -> None:
        self.container[self.key] = text
        if self.doc is not None:
            self.doc.dirty = True


class _Keys:
    """The keys of one object in free-form JSON; renamed together once every value is written,
    keeping their order."""

    __slots__ = ("at", "doc", "obj", "renames")

    def __init__(self, obj: dict[str, Any], at: At) -> None:
        self.obj = obj
        self.at = at
        self.doc = at.doc
        self.renames: dict[str, str] = {}

    def finish(self) -> None:
        if not self.renames:
            return
        renamed: dict[str, Any] = {}
        for key, value in self.obj.items():
            name = self.renames.get(key, key)
            if name in renamed:
                where = self.at.param
                message = f"Two keys of '{where}' become the same once masked; rename one."
                raise InvalidRequest(message, param=where, code="masked_key_collision")
            renamed[name] = value
        self.obj.clear()
        self.obj.update(renamed)
        if self.doc is not None:
            self.doc.dirty = True


class KeySlot:
    __slots__ = ("key", "keys")

    def __init__(self, keys: _Keys, key: str) -> None:
        self.keys = keys
        self.key = key

    @property
    def text(self) -> str:
        return self.key

    def set(self, text: str) -> None:
        self.keys.renames[self.key] = text


# --- the result of a walk ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Attachment:
    path: str
    kind: str  # image | audio | file | document | tokens | data_url


class Scan:
    """Everything a walk found: data slots in walk order (which numbers the placeholders),
    attachments, unknown fields; `finish()` writes renamed keys and re-serialised JSON back."""

    __slots__ = ("attachments", "finishers", "labels", "slots", "tokens", "unknown")

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        # slot index -> the key its value sits under in free-form JSON (`for_detection`)
        self.labels: dict[int, str] = {}
        self.attachments: list[Attachment] = []
        self.unknown: list[str] = []
        self.tokens: list[tuple[At, str]] = []
        self.finishers: list[Callable[[], None]] = []

    def finish(self) -> None:
        for finisher in self.finishers:
            finisher()
        self.finishers.clear()

    def write(self, texts: Sequence[str]) -> None:
        """Put the rewritten texts into their places (only those that changed), then rename
        keys and re-serialise JSON held in strings."""
        for slot, text in zip(self.slots, texts, strict=False):
            if text != slot.text:
                slot.set(text)
        self.finish()

    def room(self, at: At, values: int) -> None:
        """Refuse a request whose pieces of data alone would take the detectors too long."""
        if len(self.slots) + values > MAX_VALUES:
            raise InvalidRequest(f"The request holds more than {MAX_VALUES} separate values "
                                 f"to scan (at '{at.param}').", param=at.param,
                                 code="too_many_values")

    @property
    def texts(self) -> list[str]:
        return [slot.text for slot in self.slots]

    def for_detection(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """The texts as detectors should read them, and where each slot's own text starts:
        a value in free-form JSON is read after its key (`password: hunter2`, `name: Ann`),
        because alone it has lost the context that makes it a secret or a name."""
        if not self.labels:
            return texts, [0] * len(texts)
        out, offsets = list(texts), [0] * len(texts)
        for i, label in self.labels.items():
            prefix = f"{label}: "
            out[i], offsets[i] = prefix + texts[i], len(prefix)
        return out, offsets


class At:
    """One value during the walk: its container and key there, the value it is inside (which
    makes it a path: `messages[2].content[0].text`, rendered only for errors and listings),
    and the JSON-in-a-string document it belongs to, if any."""

    __slots__ = ("container", "depth", "doc", "key", "named", "parent")

    def __init__(self, container: Any, key: str | int, parent: At | None, doc: _Doc | None,
                 *, named: bool = True) -> None:
        self.container = container
        self.key = key
        self.parent = parent
        self.doc = doc
        self.named = named  # False: a root (the body, a document parsed from a string)
        self.depth: int = parent.depth + 1 if parent is not None else 0

    @property
    def value(self) -> Any:
        return self.container[self.key]

    def child(self, container: Any, key: str | int) -> At:
        if self.depth >= MAX_DEPTH:
            raise InvalidRequest(f"The request nests deeper than {MAX_DEPTH} levels at "
                                 f"'{self.param}'.", param=self.param, code="too_deep")
        return At(container, key, self, self.doc)

    @property
    def param(self) -> str:
        """This value's path, as errors name fields ("body" for the whole body)."""
        keys: list[str | int] = []
        node: At | None = self
        while node is not None:
            if node.named:
                keys.append(node.key)
            node = node.parent
        out = ""
        for key in reversed(keys):
            out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
        return out or "body"

    def param_of(self, name: str) -> str:
        return name if self.param == "body" else f"{self.param}.{name}"

    def wrong(self, expected: str) -> InvalidRequest:
        param = self.param
        return InvalidRequest(f"'{param}' must be {expected}, got {type_name(self.value)}.",
                              param=param)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


# --- nodes: the declared structure -------------------------------------------------------------

class Node(Protocol):
    def walk(self, scan: Scan, at: At) -> None: ...

    def settled(self, value: Any) -> bool:
        """Whether `value` needs no walk at all (absent, or valid and structural): lets the
        common case skip building a position for it."""
        ...

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        """Handle the commonest case (a plain string of text) without building a position;
        False: walk it."""
        ...


class Field(ABC):
    """A node for which null means absent: `visit` sees only values that are there."""

    def settled(self, value: Any) -> bool:
        return value is None

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        return False

    def walk(self, scan: Scan, at: At) -> None:
        value = at.value
        if value is not None:
            self.visit(scan, at, value)

    @abstractmethod
    def visit(self, scan: Scan, at: At, value: Any) -> None: ...


def _label(at: At) -> str | None:
    """The key a free-form value sits under, as context for the detectors."""
    key = at.key
    if isinstance(key, str) and key and isinstance(at.container, dict) and len(key) <= 64:
        return key
    return None


def _data_string(scan: Scan, at: At, value: str, *, any_json: bool = False,
                 label: str | None = None) -> None:
    """A string of data: a slot; a `data:` URL is an attachment; JSON held in the string (an
    object or array, or any JSON where the format says so) is parsed and walked as free data,
    so escapes such as \\u00e9 cannot hide a name from the detectors."""
    if not value:
        return
    # Only text starting with blanks, '{', '[' or 'd' can be JSON or a data: URL.
    if any_json or value[0] in _SPECIAL_STARTS:
        if DATA_URL.match(value):
            scan.attachments.append(Attachment(at.param, "data_url"))
            return
        _json_or_text(scan, at, value, any_json, label)
        return
    if label is not None:
        scan.labels[len(scan.slots)] = label
    scan.slots.append(ValueSlot(at.container, at.key, at.doc))


_SPECIAL_STARTS = frozenset(" \t\r\n\f\v{[dD")


def _json_or_text(scan: Scan, at: At, value: str, any_json: bool, label: str | None) -> None:
    if any_json or value.lstrip()[:1] in ("{", "["):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            parsed = value
        if not isinstance(parsed, str):
            doc = _Doc(parsed, at.container, at.key, at.doc)
            # A parser keeps one of two equal keys, the model reads both: a document with
            # duplicate keys is forwarded as scanned (re-serialised), never as written.
            doc.dirty = isinstance(parsed, dict | list) and _has_duplicate_keys(value)
            FREE.walk(scan, At(doc.holder, 0, at, doc, named=False))
            scan.finishers.append(doc.finish)
            return
    if label is not None:
        scan.labels[len(scan.slots)] = label
    scan.slots.append(ValueSlot(at.container, at.key, at.doc))


def _has_duplicate_keys(document: str) -> bool:
    duplicated = False

    def pairs(items: list[tuple[str, Any]]) -> None:
        nonlocal duplicated
        duplicated = duplicated or len({key for key, _ in items}) != len(items)

    json.loads(document, object_pairs_hook=pairs)
    return duplicated


class Free:
    """Free-form JSON: all of it is data (strings, keys, numbers)."""

    def settled(self, value: Any) -> bool:
        return value is None

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        return False

    def walk(self, scan: Scan, at: At) -> None:
        value = at.value
        if isinstance(value, str):
            _data_string(scan, at, value, label=_label(at))
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, int | float):
            label = _label(at)
            if label is not None:
                scan.labels[len(scan.slots)] = label
            scan.slots.append(NumberSlot(at.container, at.key, at.doc))
        elif isinstance(value, list):
            scan.room(at, len(value))
            for i in range(len(value)):
                self.walk(scan, at.child(value, i))
        elif isinstance(value, dict):
            scan.room(at, 2 * len(value))
            keys = _Keys(value, at)
            for key in list(value):
                if key:
                    scan.slots.append(KeySlot(keys, key))
                self.walk(scan, at.child(value, key))
            scan.finishers.append(keys.finish)


FREE = Free()


class Text(Field):
    """A declared text field: a string (or null)."""

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        if not isinstance(value, str) or not value or value[0] in _SPECIAL_STARTS:
            return False
        scan.slots.append(ValueSlot(container, key, doc))
        return True

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not isinstance(value, str):
            raise at.wrong("a string")
        _data_string(scan, at, value)


class JsonText(Field):
    """A string the format says holds JSON (tool-call arguments); text if it does not parse."""

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not isinstance(value, str):
            raise at.wrong("a string (JSON-encoded)")
        _data_string(scan, at, value, any_json=True)


class Token(Field):
    """A structural string (identifier, name, opaque upstream token): forwarded as is, so it
    must fit its vocabulary, and it is screened by the pattern tier: a value that looks like
    a secret or personal data is refused rather than forwarded."""

    def __init__(self, vocabulary: re.Pattern[str], description: str, label: str) -> None:
        self.vocabulary = vocabulary
        self.description = description
        self.label = label  # in the README's field-coverage table

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not isinstance(value, str):
            raise at.wrong("a string")
        if not self.vocabulary.fullmatch(value):
            param = at.param
            raise InvalidRequest(f"'{param}' must be {self.description}.", param=param,
                                 code="invalid_identifier")
        if value:
            scan.tokens.append((at, value))


class Checked:
    """A value some enclosing node has already checked (a `Tagged` discriminator)."""

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        return False

    def walk(self, scan: Scan, at: At) -> None:
        return

    def settled(self, value: Any) -> bool:
        return True


class Model:
    """The model name: required, a string; the router refuses names it does not serve."""

    label = "model"

    def settled(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        return False

    def walk(self, scan: Scan, at: At) -> None:
        value = at.value
        if not isinstance(value, str):
            raise at.wrong("a string")
        if not value:
            raise InvalidRequest("'model' must not be empty.", param="model")


class Enum(Field):
    """A string from a vocabulary; a value outside it is scanned as data, never trusted (or,
    `closed`, refused: roles, where an unknown value can only be a mistake)."""

    def __init__(self, *values: str, closed: bool = False) -> None:
        self.values = frozenset(values)
        self.closed = closed

    def settled(self, value: Any) -> bool:
        return value is None or (isinstance(value, str) and value in self.values)

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not isinstance(value, str):
            raise at.wrong("a string")
        if value in self.values:
            return
        if self.closed:
            param = at.param
            raise InvalidRequest(f"'{param}' must be one of {sorted(self.values)}.",
                                 param=param)
        _data_string(scan, at, value)


class Scalar(Field):
    """A structural number, integer or boolean: type-checked, forwarded as is."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def settled(self, value: Any) -> bool:
        if value is None:
            return True
        if self.kind == "boolean":
            return isinstance(value, bool)
        return isinstance(value, int | float) and not isinstance(value, bool) and (
            self.kind == "a number" or isinstance(value, int) or float(value).is_integer())

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not self.settled(value):
            raise at.wrong(self.kind if self.kind != "boolean" else "a boolean")


class Attach:
    """Content the detectors cannot read (an image, audio, a file, token ids): listed for the
    policy, which refuses or forwards it; never scanned, never rewritten."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.label = "attachments"

    def settled(self, value: Any) -> bool:
        return value is None

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        return False

    def walk(self, scan: Scan, at: At) -> None:
        if at.value is not None:
            scan.attachments.append(Attachment(at.param, self.kind))


class Refused:
    """A field the gateway refuses outright (it references state it cannot check)."""

    label = "refused"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def settled(self, value: Any) -> bool:
        return value is None

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        return False

    def walk(self, scan: Scan, at: At) -> None:
        if at.value is not None:
            param = at.param
            raise InvalidRequest(f"'{param}' is not supported through this gateway: "
                                 f"{self.reason}", param=param, code="unsupported_field")


class _Rank(dict[str, int]):
    """Declaration order of an object's fields; unknown fields after all of them."""

    def __missing__(self, key: str) -> int:
        return len(self)


class Obj(Field):
    """An object with declared fields; any other field is data (and listed as unknown)."""

    def __init__(self, fields: Mapping[str, Node], *, required: tuple[str, ...] = ()) -> None:
        self.fields = dict(fields)
        self.required = required
        # Fields are walked in declaration order (a system prompt before the messages), so
        # placeholders are numbered the same however a client orders its keys.
        self._rank = _Rank({name: i for i, name in enumerate(self.fields)})

    def extend(self, fields: Mapping[str, Node], *, required: tuple[str, ...] | None = None,
               without: tuple[str, ...] = ()) -> Obj:
        merged = {k: v for k, v in {**self.fields, **fields}.items() if k not in without}
        return Obj(merged, required=self.required if required is None else required)

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not isinstance(value, dict):
            raise at.wrong("an object")
        for name in self.required:
            if value.get(name) is None:
                param = at.param_of(name)
                raise InvalidRequest(f"'{param}' is required.", param=param)
        keys: _Keys | None = None
        for key in sorted(value, key=self._rank.__getitem__) if len(value) > 1 else value:
            node = self.fields.get(key)
            if node is not None:
                field_value = value[key]
                if not node.settled(field_value) and \
                        not node.quick(scan, value, key, at.doc, field_value):
                    node.walk(scan, at.child(value, key))
                continue
            child = at.child(value, key)
            scan.unknown.append(child.param)
            if keys is None:
                keys = _Keys(value, at)
            if key:
                scan.slots.append(KeySlot(keys, key))
            FREE.walk(scan, child)
        if keys is not None:
            scan.finishers.append(keys.finish)


class Arr(Field):
    def __init__(self, item: Node, *, min_items: int = 0) -> None:
        self.item = item
        self.min_items = min_items

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not isinstance(value, list):
            raise at.wrong("an array")
        if len(value) < self.min_items:
            param = at.param
            raise InvalidRequest(f"'{param}' must not be empty.", param=param)
        scan.room(at, len(value))
        item = self.item
        for i, element in enumerate(value):
            if not item.settled(element) and not item.quick(scan, value, i, at.doc, element):
                item.walk(scan, at.child(value, i))


class Map(Field):
    """An object whose keys are data (metadata, template variables) and values all alike."""

    def __init__(self, value: Node) -> None:
        self.value = value

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not isinstance(value, dict):
            raise at.wrong("an object")
        scan.room(at, 2 * len(value))
        keys = _Keys(value, at)
        for key in list(value):
            if key:
                scan.slots.append(KeySlot(keys, key))
            self.value.walk(scan, at.child(value, key))
        scan.finishers.append(keys.finish)


class OneOf(Field):
    """A field that may be a string, an array, an object or a number, each with its own
    structure; any other type is an error that says what is accepted."""

    def __init__(self, expected: str, *, string: Node | None = None, array: Node | None = None,
                 obj: Node | None = None, number: Node | None = None) -> None:
        self.expected = expected
        self.string, self.array, self.obj, self.number = string, array, obj, number

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        return isinstance(value, str) and self.string is not None and \
            self.string.quick(scan, container, key, doc, value)

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        node = (self.string if isinstance(value, str) else
                self.array if isinstance(value, list) else
                self.obj if isinstance(value, dict) else
                self.number if isinstance(value, int | float) and not isinstance(value, bool)
                else None)
        if node is None:
            raise at.wrong(self.expected)
        node.walk(scan, at)


class Tagged(Field):
    """An object whose variant is named by a discriminator (`type`, or `role`). An unknown
    variant is free data, listed as unknown; `closed` variants refuse unknown tags instead."""

    def __init__(self, variants: Mapping[str, Node], *, key: str = "type",
                 default: str | None = None, closed: bool = False) -> None:
        self.variants = dict(variants)
        self.key = key
        self.default = default
        self.closed = closed

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if not isinstance(value, dict):
            raise at.wrong("an object")
        tag = value.get(self.key, self.default)
        if tag is None and self.default is not None:
            tag = self.default
        node = self.variants.get(tag) if isinstance(tag, str) else None
        if node is not None:
            node.walk(scan, at)
            return
        if self.closed or tag is None:
            param = at.param_of(self.key)
            allowed = ", ".join(sorted(self.variants))
            message = (f"'{param}' is required." if tag is None else
                       f"'{param}' must be one of: {allowed}.")
            raise InvalidRequest(message, param=param)
        scan.unknown.append(at.param_of(self.key))
        FREE.walk(scan, at)


class Lazy:
    """A node defined later (structures that contain themselves)."""

    def __init__(self, resolve: Callable[[], Node]) -> None:
        self.resolve = resolve

    def settled(self, value: Any) -> bool:
        return value is None

    def quick(self, scan: Scan, container: Any, key: str | int, doc: _Doc | None,
              value: Any) -> bool:
        return False

    def walk(self, scan: Scan, at: At) -> None:
        self.resolve().walk(scan, at)


class Tokens(Field):
    """A prompt as text or as token ids: a string, an array of strings, an array of token ids,
    or an array of such arrays. Token ids are text the gateway cannot read (it does not know
    the model's tokenizer): an attachment."""

    label = "attachments"

    def visit(self, scan: Scan, at: At, value: Any) -> None:
        if isinstance(value, str):
            TEXT.walk(scan, at)
            return
        if not isinstance(value, list):
            raise at.wrong("a string, an array of strings or an array of token ids")
        if value and all(_is_int(v) for v in value):
            ATTACH_TOKENS.walk(scan, at)
            return
        for i, item in enumerate(value):
            item_at = at.child(value, i)
            if isinstance(item, str):
                TEXT.walk(scan, item_at)
            elif isinstance(item, list) and all(_is_int(v) for v in item):
                ATTACH_TOKENS.walk(scan, item_at)
            elif isinstance(item, dict):
                scan.unknown.append(item_at.param)
                FREE.walk(scan, item_at)
            else:
                raise item_at.wrong("a string or an array of token ids")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


TEXT = Text()
JSON_TEXT = JsonText()
ID = Token(IDENTIFIER, "an identifier (letters, digits, '_', '-', '.', ':'; at most 256)",
           "identifiers")
NAME_TOKEN = Token(NAME, "a name of 1-128 letters, digits, '_', '-', '.' or ':'", "names")
OPAQUE_TOKEN = Token(OPAQUE, "an opaque token as the upstream issued it (base64)",
                     "opaque tokens")
MODEL = Model()
NUMBER = Scalar("a number")
INTEGER = Scalar("an integer")
BOOLEAN = Scalar("boolean")
TAG = Checked()  # the discriminator itself, checked by the `Tagged` that chose the variant
ATTACH_TOKENS = Attach("tokens")


def walk_body(structure: Node, body: dict[str, Any]) -> Scan:
    """Check `body` against `structure` and collect its data; raise `InvalidRequest` naming
    the first field that does not fit, or an identifier that looks like sensitive data."""
    scan = Scan()
    structure.walk(scan, At([body], 0, None, None, named=False))
    for at, value in scan.tokens:
        _screen(at, value)
    return scan


def _screen(at: At, value: str) -> None:
    if value in _CLEAN_TOKENS:
        _CLEAN_TOKENS.move_to_end(value)
        return
    found = _SCREEN.detect(value)
    if found:
        param = at.param
        raise InvalidRequest(
            f"'{param}' looks like it holds sensitive data ({found[0].entity}); identifiers "
            "are forwarded as they are, so the request was refused.",
            param=param, code="sensitive_identifier")
    _CLEAN_TOKENS[value] = None
    if len(_CLEAN_TOKENS) > CLEAN_TOKENS_KEPT:
        _CLEAN_TOKENS.popitem(last=False)
