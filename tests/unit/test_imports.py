"""The package's shape, as its imports draw it: no module imports itself round a cycle (lazy,
in-function imports included), and `policy/` (the policy format and its evaluation) and
`privacy/` (detection, masking, restore) know nothing of each other; `gateway.protect` joins
them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

GATEWAY = Path(__file__).parents[2] / "gateway"


def module_name(path: Path) -> str:
    parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in GATEWAY.rglob("*.py")}


def imported(name: str) -> set[str]:
    """Every gateway module `name` imports, anywhere in the file (TYPE_CHECKING blocks aside:
    they never run)."""
    tree = ast.parse(MODULES[name].read_text())
    checked_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                    and "TYPE_CHECKING" in ast.unparse(block.test)
                    for node in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in checked_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imported(name) for name in MODULES}


def cycles() -> Iterator[list[str]]:
    """Each import cycle once, by depth-first search (three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> Iterator[list[str]]:
        state[name] = 1
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                yield [*stack[stack.index(target):], target]
            elif target not in state:
                yield from visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            yield from visit(name)


def reachable(start: str, *, avoiding: str = "") -> set[str]:
    """Every module `start` imports, directly or not, never going through a module whose
    name starts with `avoiding`."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in GRAPH[todo.pop()] - seen:
            if avoiding and target.startswith(avoiding):
                continue
            seen.add(target)
            todo.append(target)
    return seen


def test_the_walk_finds_the_imports() -> None:
    assert "gateway.protect" in GRAPH["gateway.pipeline"]
    assert "gateway.policy.evaluate" in GRAPH["gateway.protect"]


def test_no_import_cycles() -> None:
    found = list(cycles())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_policy_and_privacy_know_nothing_of_each_other() -> None:
    """Neither imports the other, directly or through any module but the logging and metrics
    layer that every package uses (its redaction runs the pattern tier)."""
    policy = {m for m in MODULES if m.startswith("gateway.policy")}
    privacy = {m for m in MODULES if m.startswith("gateway.privacy")}
    for side, other in ((policy, privacy), (privacy, policy)):
        for module in sorted(side):
            crossing = reachable(module, avoiding="gateway.observability") & other
            assert not crossing, f"{module} reaches {sorted(crossing)}"
