"""The `veil` parser: every command listed, every option explained, the version, the option
types that turn a bad value into a usage error."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import _parser, main

ROOT = Path(__file__).parents[2]


def parsers(parser: argparse.ArgumentParser, path: str = "veil"
            ) -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action | None]]:
    """(command words, its parser, its subcommands action if any) for every command."""
    subcommands = next((a for a in parser._actions
                        if isinstance(a, argparse._SubParsersAction)), None)
    yield path, parser, subcommands
    if subcommands is not None:
        for name, sub in subcommands.choices.items():
            yield from parsers(sub, f"{path} {name}")


def test_help_lists_every_command() -> None:
    for path, parser, subcommands in parsers(_parser()):
        if subcommands is None:
            continue
        shown = parser.format_help()
        for name in subcommands.choices:  # type: ignore[union-attr]
            assert f"    {name}" in shown, f"{path} --help does not list {name}"
        listed = {a.dest for a in subcommands._choices_actions}  # type: ignore[attr-defined]
        assert listed == set(subcommands.choices), f"{path}: commands without help="  # type: ignore[arg-type]


def test_every_option_of_every_command_has_help() -> None:
    missing = [f"{path} {'/'.join(action.option_strings) or action.dest}"
               for path, parser, _ in parsers(_parser()) for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction)
               and not (action.help or "").strip()]
    assert not missing, missing


def test_every_command_has_a_description() -> None:
    assert all(parser.description for _, parser, _ in parsers(_parser()))


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "--version"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"veil {__version__}"
    assert __version__[0].isdigit()


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--port", "65536"], "'65536' is not a port (0-65535)"),
    (["serve", "--port", "http"], "'http' is not a whole number"),
    (["serve", "--workers", "0"], "'0': at least 1"),
    (["scorer", "bench", "--k", "10,ten"], "'ten' is not a whole number"),
    (["attest", "verify", "x", "--at", "yesterday"], "'yesterday' is not an ISO 8601 time"),
    (["apikey", "new", "--name", "has space", "--tenant", "t"], "'has space': letters"),
    (["demo-upstream", "--chunk-delay-ms", "-1"], "between 0 and 60000 ms"),
])
def test_bad_values_are_usage_errors(argv: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_host_and_port_override_the_config(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.preflight  # noqa: PLC0415
    import gateway.server  # noqa: PLC0415

    config = tmp_path / "config.yaml"
    config.write_text("listen: {host: 127.0.0.1, port: 8080, workers: 3}\n"
                      "backends: []\nmodels: {}\npolicies: {files: [p.yaml]}\n")
    served = []
    monkeypatch.setattr(gateway.preflight, "preflight",
                        lambda path, settings, released=None: None)
    monkeypatch.setattr(gateway.server, "serve",
                        lambda path, settings, workers, policies, released=None:
                        served.append((settings.listen, workers)) or 0)
    assert main(["serve", "--config", str(config), "--host", "0.0.0.0", "--port", "9001"]) == 0
    assert main(["serve", "--config", str(config), "--port", "9002"]) == 0
    assert main(["serve", "--config", str(config)]) == 0
    assert [(listen.host, listen.port, workers) for listen, workers in served] == [
        ("0.0.0.0", 9001, 3), ("127.0.0.1", 9002, 3), ("127.0.0.1", 8080, 3)]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "gateway.internal",
                                  "localhost"])
def test_hosts_that_can_be_bound_are_accepted(host: str) -> None:
    assert _parser().parse_args(["demo-upstream", "--host", host]).host == host


@pytest.mark.parametrize("host", ["some/path", "a..b", "x" * 64 + ".example", "", "-bad"])
def test_hosts_that_cannot_are_usage_errors(host: str) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["demo-upstream", "--host", host])
