"""Load YAML with the position of every key and value, and report validation errors at them.

Config and policy files are edited by people who do not read Python, so every error must point at
the file, line and column, name the key and the bad value, and suggest the likely intended key.
A value set from the environment instead (`VEIL__SECTION__KEY`) is reported as coming from that
variable: its line in the file, if it has one, is not what was validated.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from gateway.errors import ConfigError, ConfigIssue, ConfigProblems, Position

KeyPath = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


@dataclass
class YamlDocument:
    file: str
    data: Any
    key_positions: dict[KeyPath, Position] = field(default_factory=dict)
    value_positions: dict[KeyPath, Position] = field(default_factory=dict)
    # Values replaced after parsing: key path -> the environment variable that set it.
    overridden: dict[KeyPath, str] = field(default_factory=dict)

    def issue(self, path: KeyPath, message: str, *, of_key: bool = False) -> ConfigIssue:
        """An issue at `path`: at the variable that set it (or an ancestor), else at its
        position in this file."""
        for end in range(len(path), 0, -1):
            variable = self.overridden.get(path[:end])
            if variable is not None:
                return ConfigIssue(f"${variable}", None, dotted(path), message)
        return ConfigIssue(self.file, self.position(path, of_key=of_key), dotted(path), message)

    def position(self, path: KeyPath, *, of_key: bool = False) -> Position | None:
        """Position of `path`, or of its nearest ancestor that exists in the file."""
        table = self.key_positions if of_key else self.value_positions
        for end in range(len(path), -1, -1):
            found = table.get(path[:end]) or self.value_positions.get(path[:end])
            if found:
                return found
        return None


def _pos(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


class _Walker:
    """Constructs Python data from a composed node tree while recording positions."""

    def __init__(self, doc: YamlDocument, loader: yaml.SafeLoader) -> None:
        self.doc = doc
        self.loader = loader
        self.issues: list[ConfigIssue] = []

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.doc.value_positions[path] = _pos(node)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | bool | float):
                    self.issues.append(ConfigIssue(self.doc.file, _pos(key_node),
                                                   dotted(path), "mapping keys must be scalars"))
                    continue
                if key in result:
                    self.issues.append(ConfigIssue(
                        self.doc.file, _pos(key_node), dotted((*path, str(key))),
                        "duplicate key (the earlier value would be silently replaced)"))
                self.doc.key_positions[(*path, str(key))] = _pos(key_node)
                result[key] = self.build(value_node, (*path, str(key)))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)


def load_yaml(path: str | Path, text: str | None = None) -> YamlDocument:
    """Parse one YAML document; syntax errors become a `ConfigError` with the position."""
    file = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([ConfigIssue(file, None, "", f"cannot read: {exc}")]) from None
    doc = YamlDocument(file=file, data=None)
    loader = yaml.SafeLoader(text)
    walker = _Walker(doc, loader)
    try:
        node = loader.get_single_node()
        if node is None:
            doc.data = {}
            return doc
        doc.data = walker.build(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else None
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.context and exc.context_mark and exc.context_mark is not mark:
            started = exc.context_mark
            message += f" ({exc.context} at line {started.line + 1}, column {started.column + 1})"
        raise ConfigError([ConfigIssue(file, position, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if walker.issues:
        raise ConfigError(walker.issues)
    return doc


def dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate(doc: YamlDocument, model: type[ModelT], *, base: KeyPath = ()) -> ModelT:
    """Validate `doc.data` against `model`; every pydantic error becomes a positioned issue."""
    try:
        return model.model_validate(doc.data, context={"document": doc})
    except pydantic.ValidationError as exc:
        raise ConfigError([issue for err in exc.errors()
                           for issue in _issues(doc, model, err, base)]) from None


def _issues(doc: YamlDocument, model: type[pydantic.BaseModel],
            err: Any, base: KeyPath) -> list[ConfigIssue]:
    loc: KeyPath = tuple(part for part in err["loc"] if isinstance(part, str | int))
    found = err.get("ctx", {}).get("error")
    if isinstance(found, ConfigProblems):
        return [doc.issue((*base, *loc, *path), message) for path, message in found.found]
    return [_issue(doc, model, err, loc, base)]


def _issue(doc: YamlDocument, model: type[pydantic.BaseModel],
           err: Any, loc: KeyPath, base: KeyPath) -> ConfigIssue:
    path = (*base, *loc)
    if err["type"] == "extra_forbidden":
        known = _field_names(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
        message = "unknown key" + (f" (did you mean {hint[0]}?)" if hint else "")
        if known and not hint:
            message += f" (expected one of: {', '.join(sorted(known))})"
        return doc.issue(path, message, of_key=True)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] not in ("missing",) and "input" in err and _is_scalar(err["input"]):
        message += f" (got {err['input']!r})"
    return doc.issue(path, message)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _field_names(model: Any, loc: KeyPath) -> list[str]:
    """Names accepted at `loc` inside `model`, followed through models, dicts, lists, optionals."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated so the walk reaches the model class."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(models[0]) if len(models) == 1 else annotation
    return annotation
