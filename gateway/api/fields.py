"""Type checks on request fields that name the field and the expected type, never the value."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest


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


def wrong_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"'{param}' must be {expected}, got {type_name(value)}.", param=param)


def require_str(body: dict[str, Any], key: str, *, prefix: str = "") -> str:
    param = prefix + key
    if key not in body:
        raise InvalidRequest(f"'{param}' is required.", param=param)
    value = body[key]
    if not isinstance(value, str):
        raise wrong_type(param, "a string", value)
    if not value:
        raise InvalidRequest(f"'{param}' must not be empty.", param=param)
    return value


def optional_bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise wrong_type(key, "a boolean", value)
    return value


def optional_int(body: dict[str, Any], key: str, *, required: bool = False) -> int | None:
    if key not in body or body[key] is None:
        if required:
            raise InvalidRequest(f"'{key}' is required.", param=key)
        return None
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(key, "an integer", value)
    return value


def require_list(body: dict[str, Any], key: str, *, non_empty: bool = True) -> list[Any]:
    if key not in body:
        raise InvalidRequest(f"'{key}' is required.", param=key)
    value = body[key]
    if not isinstance(value, list):
        raise wrong_type(key, "an array", value)
    if non_empty and not value:
        raise InvalidRequest(f"'{key}' must not be empty.", param=key)
    return value


def require_object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise wrong_type(param, "an object", value)
    return value


def check_content(value: Any, param: str, *, nullable: bool = False) -> None:
    """Message content: a string, or an array of typed part objects."""
    if value is None and nullable:
        return
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise wrong_type(param, "a string or an array of content parts", value)
    for i, part in enumerate(value):
        part_param = f"{param}[{i}]"
        require_object(part, part_param)
        require_str(part, "type", prefix=part_param + ".")
