"""A policy's cases file, as the studio finds and extends it.

The file beside `policies/NAME.yaml` is `policies/NAME.cases.yaml` (the repo's convention, and
what the README runs `veil policy test` with); only those files, derived from the config's own
policy list, are ever read or written. People keep comments and layout in these files, so a
new case is appended as text, never by re-dumping the YAML: the new text must then load, with
the same loader `veil policy test` uses, as exactly the old cases plus the new one, or nothing
is written. The write is a temporary file renamed over the old, so a reader (or the gateway's
test run) never sees half a file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.errors import CasesFileRefused, ConfigError, ConfigIssue
from gateway.policy.cases import Case, CasesFile
from gateway.studio.files import replace_file
from gateway.yamlsource import YamlDocument, load_yaml, validate


def cases_file_for(policy: Path) -> Path:
    return policy.with_name(f"{policy.stem}.cases.yaml")


def read_cases(path: Path) -> list[Case]:
    """The cases in the file; an absent file (or one with nothing but comments) has none."""
    if not path.exists():
        return []
    document = load_yaml(path)
    if document.data == {}:
        return []
    return validate(document, CasesFile).cases


def append_case(path: Path, case: Case) -> None:
    """Add `case` at the end of the file (created if absent), keeping every byte before it."""
    if path.is_symlink():
        raise CasesFileRefused(f"{path} is a symbolic link: add the case where it points")
    old_text = path.read_text(encoding="utf-8") if path.exists() else ""
    document = load_yaml(path, old_text)
    old_cases = [] if document.data == {} else validate(document, CasesFile).cases
    new_text = _with_item(old_text, document, case)
    try:
        appended = validate(load_yaml(path, new_text), CasesFile).cases
    except ConfigError:
        appended = []
    if appended != [*old_cases, case]:
        raise CasesFileRefused(f"{path}: a case appended at the end would not be the last of "
                               "its cases (is the list in flow style?): add it by hand")
    replace_file(path, new_text.encode())


def _with_item(text: str, document: YamlDocument, case: Case) -> str:
    if document.data == {}:
        head = text + ("" if not text or text.endswith("\n") else "\n") + "cases:\n"
        return head + _item(case, "  ")
    where = document.position(("cases",))
    indent = " " * ((where.column - 1) if where else 2)
    return text + ("" if text.endswith("\n") else "\n") + _item(case, indent)


def _item(case: Case, indent: str) -> str:
    """The case as one block-sequence item, `expect` on one line as the repo's files have it.
    The YAML emitter quotes whatever needs it, and a prompt of several lines stays on one (in
    double quotes), so no value can break out of the item."""
    fields = case.model_dump(exclude_defaults=True)
    expect = fields.pop("expect")
    body = _dump(fields, flow=False) + f"expect: {_dump(expect, flow=True)}"
    lines = body.splitlines()
    return "".join(f"{indent}{'- ' if i == 0 else '  '}{line}\n" for i, line in enumerate(lines))


class _OneLineDumper(yaml.SafeDumper):
    """Strings with line breaks as double-quoted scalars (`\\n`), never folded over lines."""


def _one_line(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = '"' if "\n" in text or "\r" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_OneLineDumper.add_representer(str, _one_line)


def _dump(data: object, *, flow: bool) -> str:
    text = yaml.dump(data, Dumper=_OneLineDumper, sort_keys=False, allow_unicode=True,
                     width=1_000_000, default_flow_style=flow)
    return text.strip() if flow else text


def issues_of(error: ConfigError) -> list[dict[str, object]]:
    """Each issue with its file, line and column, for a client to point at."""
    return [_issue(issue) for issue in error.issues]


def _issue(issue: ConfigIssue) -> dict[str, object]:
    return {"file": issue.file, "line": issue.position.line if issue.position else None,
            "column": issue.position.column if issue.position else None,
            "key": issue.key, "message": issue.message}
