"""One exception tree: every exception the gateway defines lives in `gateway/errors.py`, the
tree drawn in its docstring is the tree in the code, and each client-facing error is one
answer (status, type, code)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from gateway import errors

GATEWAY = Path(__file__).parents[2] / "gateway"
BUILTIN = {"Exception", "BaseException", "RuntimeError", "ValueError", "LookupError"}
DEFINED = {name for name, obj in vars(errors).items()
           if inspect.isclass(obj) and issubclass(obj, BaseException)
           and obj.__module__ == errors.__name__}


def test_no_exception_is_defined_anywhere_else() -> None:
    elsewhere = []
    for path in GATEWAY.rglob("*.py"):
        if path.name == "errors.py" and path.parent == GATEWAY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in getattr(node, "bases", [])}
            if isinstance(node, ast.ClassDef) and bases & (BUILTIN | DEFINED):
                elsewhere.append(f"{path.relative_to(GATEWAY.parent)}: {node.name}")
    assert not elsewhere, elsewhere


def test_the_docstring_draws_the_tree_in_the_code() -> None:
    drawn = {}  # name -> parent, from the indentation of the drawing
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(\s*(?:[│ ]   )*)(?:[├└]── )?([A-Z][A-Za-z]+)\b", line)
        if not match or match.group(2) not in DEFINED:
            continue
        depth = len(match.group(1)) // 4
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[match.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, match.group(2)))
    assert set(drawn) == DEFINED
    for name, parent in drawn.items():
        cls = getattr(errors, name)
        if parent is not None:
            assert cls.__bases__[0] is getattr(errors, parent), (name, parent)


def test_each_client_facing_error_is_one_answer() -> None:
    answers = {}
    for name in DEFINED:
        cls = getattr(errors, name)
        if issubclass(cls, errors.GatewayError):
            answer = (cls.status, cls.error_type, cls.default_code)
            assert answer not in answers.values(), (name, answer)
            answers[name] = answer
    assert answers["PolicyBlocked"] == (400, "invalid_request_error", "sensitive_data_blocked")
    assert answers["NoAttestedBackend"] == (503, "service_unavailable", "no_attested_backend")
