from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).parents[3]


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    for name in ("default.yaml", "healthcare.yaml"):
        shutil.copy(ROOT / "policies" / name, tmp_path / name)
    assert main(["policy", "keygen", "--private", str(tmp_path / "k"),
                 "--public", str(tmp_path / "k.pub")]) == 0
    assert main(["policy", "sign", str(tmp_path / "default.yaml"),
                 str(tmp_path / "healthcare.yaml"), "--key", str(tmp_path / "k")]) == 0
    return tmp_path


def verify(tmp: Path, pub: str = "k.pub") -> int:
    return main(["policy", "verify", str(tmp / "healthcare.yaml"), "--pubkey", str(tmp / pub)])


def test_signed_chain_verifies(signed: Path) -> None:
    assert verify(signed) == 0


def test_edited_policy_is_refused(signed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = signed / "healthcare.yaml"
    path.write_text(path.read_text().replace("US_SSN: hash", "US_SSN: allow"))
    assert verify(signed) == 1
    assert "healthcare.yaml: signature does not verify" in capsys.readouterr().out


def test_edited_base_is_refused(signed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = signed / "default.yaml"
    path.write_text(path.read_text().replace("SECRET: redact", "SECRET: allow"))
    assert verify(signed) == 1
    assert "default.yaml: signature does not verify" in capsys.readouterr().out


def test_unsigned_and_wrong_key_are_refused(signed: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (signed / "default.yaml.sig").unlink()
    assert verify(signed) == 1
    assert "default.yaml: unsigned" in capsys.readouterr().out
    main(["policy", "keygen", "--private", str(signed / "other"),
          "--public", str(signed / "other.pub")])
    assert verify(signed, "other.pub") == 1


def test_garbage_signature_is_refused(signed: Path) -> None:
    (signed / "healthcare.yaml.sig").write_text("not base64!!\n")
    assert verify(signed) == 1
