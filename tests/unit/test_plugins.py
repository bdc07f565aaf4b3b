from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError, PluginError, ServiceUnavailable
from gateway.plugins import load_detector
from gateway.preflight import preflight
from gateway.privacy.engine import DetectionEngine, Selection
from gateway.settings import load_settings


class Raising:
    name = "raising"
    entities = frozenset({"X"})

    def detect(self, text: str) -> list[object]:
        raise RuntimeError(f"boom on {text}")


class OutOfContract:
    name = "liar"
    entities = frozenset({"X"})

    def detect(self, text: str) -> list[object]:
        from gateway.privacy.spans import Span  # noqa: PLC0415

        return [Span(0, 1, "NOT_DECLARED", 1.0, "liar")]


class NoDetect:
    name = "nodetect"
    entities = frozenset({"X"})


def test_entry_point_plugin_finds_with_check_digit() -> None:
    detector = load_detector("employee_id")
    text = "ids EMP-100003-3 and EMP-100003-4"
    assert [(text[s.start:s.end], s.entity) for s in detector.detect(text)] == [
        ("EMP-100003-3", "EMPLOYEE_ID")]


def test_module_path_plugin() -> None:
    assert load_detector("veil_employee_id:EmployeeIdDetector").name == "employee_id"


@pytest.mark.parametrize(("reference", "message"), [
    ("no_such_plugin", "unknown detector plugin 'no_such_plugin' (installed: employee_id"),
    ("no_such_module:Thing", "failed to load: ModuleNotFoundError"),
    ("tests.unit.test_plugins:NoDetect", "lacks ['detect']"),
])
def test_bad_plugins_are_refused(reference: str, message: str) -> None:
    with pytest.raises(PluginError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_detector(reference)


@pytest.mark.parametrize("reference", ["tests.unit.test_plugins:Raising",
                                       "tests.unit.test_plugins:OutOfContract"])
async def test_plugin_failure_fails_the_request_closed(reference: str) -> None:
    engine = DetectionEngine()
    selection = Selection(frozenset({"patterns"}), (reference,))
    await engine.prepare([selection])
    with pytest.raises(ServiceUnavailable) as info:
        await engine.detect(["secret text"], selection)
    assert info.value.code == "detector_failed"
    assert "secret text" not in info.value.message


def test_unknown_plugin_in_policy_names_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: p\ndetectors:\n  plugins: [employe_id]\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"policies: {{files: [{policy}]}}\nbackends: []\nmodels: {{}}\n")
    with pytest.raises(ConfigError) as info:
        preflight(config, load_settings(config, {}), {})
    assert f"{policy}:4:13: detectors.plugins[0]: unknown detector plugin 'employe_id'" \
        in str(info.value)
