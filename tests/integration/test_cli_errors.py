"""Every `veil` command, given bad input, says what is wrong in a line or two and exits
non-zero: never a traceback. The commands are discovered from the argument parser, so a new
command or option is covered without touching this file."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.cli import _parser

ROOT = Path(__file__).parents[2]
MAX_ERROR_LINES = 8  # argparse's usage lines and its error, or our "veil: ..." and a detail


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
           ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command words, parser) of every command that runs something."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield path, parser
        return
    for name, sub in subparsers[0].choices.items():
        yield from leaves(sub, (*path, name))


COMMANDS = dict(leaves(_parser()))
# Commands whose only path is a folder they create and fill: a missing or an existing folder is
# good input there, not bad (`scorer distill` would rightly build its 30 s table in it).
CREATES_FOLDER = {("scorer", "distill")}


def takes_value(action: argparse.Action) -> bool:
    return not isinstance(action, argparse._HelpAction | argparse._VersionAction) and \
        action.nargs != 0


def is_number(action: argparse.Action) -> bool:
    """Whether the argument wants a number: its type takes "1" and refuses a word."""
    def accepts(text: str) -> bool:
        try:
            action.type(text)  # type: ignore[misc,operator]
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            return False
        return True

    return callable(action.type) and accepts("1") and not accepts("many")


def chosen(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The value-taking arguments to give: of a mutually exclusive group, only the first."""
    skipped = {id(a) for group in parser._mutually_exclusive_groups
               for a in group._group_actions[1:]}
    return [a for a in parser._actions if takes_value(a) and id(a) not in skipped]


def argv(parser: argparse.ArgumentParser, value: Callable[[argparse.Action], str]) -> list[str]:
    """Every value-taking argument given `value(action)` (a choice where there are choices)."""
    out: list[str] = []
    for action in chosen(parser):
        given = str(next(iter(action.choices))) if action.choices else value(action)
        out += [given] if not action.option_strings else [action.option_strings[-1], given]
    return out


def variants(tmp: Path, parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Bad input of every kind, each as one command line: every argument gets it at once."""
    missing = str(tmp / "missing" / "file.yaml")
    folder = tmp / "folder"
    folder.mkdir(exist_ok=True)
    files = {"bad_yaml": "listen: [unclosed\n  - : :\n", "not_a_mapping": "- just\n- a list\n",
             "binary": b"\x00\xff\xfe\x80 not text".decode("latin-1")}
    for name, text in files.items():
        (tmp / f"{name}.yaml").write_text(text, encoding="latin-1")
    kinds: dict[str, Callable[[argparse.Action], str]] = {
        "missing": lambda a: "1" if is_number(a) else missing,
        "folder": lambda a: "1" if is_number(a) else str(folder),
        **{name: (lambda a, n=name: "1" if is_number(a) else str(tmp / f"{n}.yaml"))
           for name in files},
        "not_a_number": lambda a: "many" if is_number(a) else missing,
        "out_of_range": lambda a: "-7" if is_number(a) else missing,
    }
    free = [a for a in chosen(parser) if not a.choices]
    numbers = any(is_number(a) for a in free)
    texts = any(not is_number(a) for a in free)
    found: dict[str, list[str]] = {}
    for kind, value in kinds.items():
        args = argv(parser, value)
        bad_number = kind in ("not_a_number", "out_of_range")
        # a kind of bad value the command has an argument for, and not a repeat of another
        if (numbers if bad_number else texts) and args not in found.values():
            found[kind] = args
    return {**found, "unknown_option": [*argv(parser, kinds["missing"]), "--no-such-option"]}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": ""}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120, check=False, input="", env=env)


def test_every_command_is_covered() -> None:
    names = {" ".join(words) for words in COMMANDS}
    assert {"serve", "scorer build", "policy check", "attest agent", "keys"} <= names
    assert len(names) >= 19


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_bad_input_is_a_short_error_not_a_traceback(words: tuple[str, ...],
                                                    tmp_path: Path) -> None:
    cases = variants(tmp_path, COMMANDS[words])
    if words in CREATES_FOLDER:
        cases = {kind: args for kind, args in cases.items() if kind not in ("missing", "folder")}
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(lambda a: run([*words, *a], tmp_path),
                                           cases.values()), strict=True))
    problems = []
    for kind, result in results.items():
        shown = f"{kind}: veil {' '.join(words)} {' '.join(cases[kind])}\n{result.stderr}"
        error_lines = [line for line in result.stderr.splitlines() if line.strip()]
        if result.returncode == 0:
            problems.append(f"exit 0 on bad input: {shown}")
        elif "Traceback" in result.stdout + result.stderr:
            problems.append(f"traceback: {shown}")
        elif not error_lines or len(error_lines) > MAX_ERROR_LINES:
            problems.append(f"{len(error_lines)} lines on stderr: {shown}")
    assert not problems, "\n\n".join(problems)


def test_empty_stdin_for_apikey_hash_is_an_error(tmp_path: Path) -> None:
    result = run(["apikey", "hash"], tmp_path)
    assert result.returncode != 0
    assert "no API key on stdin" in result.stderr
