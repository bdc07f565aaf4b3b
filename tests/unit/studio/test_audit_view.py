"""The audit view reads the configured chains only, with the key as the gateway loads it, and
never claims a chain it could not check."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import StudioRefused
from gateway.observability.audit import AuditLog
from gateway.settings import AuditSettings, Settings
from gateway.studio.audit_view import chain_files, records, verification
from tests.servers import backend, settings_for

KEY = "k" * 32


def audit_in(folder: Path, **settings: object) -> AuditSettings:
    (folder / "audit.key").write_text(KEY)
    return AuditSettings(enabled=True, path=str(folder / "audit.jsonl"),
                         key_file=str(folder / "audit.key"), **settings)  # type: ignore[arg-type]


def gateway_config(audit: AuditSettings) -> Settings:
    """A whole config around `audit`: the key is found from it as the gateway finds it."""
    return settings_for([backend("b", "http://127.0.0.1:9")]).model_copy(update={"audit": audit})


def write(path: Path, tenants: list[str]) -> None:
    log = AuditLog(path, KEY.encode())
    for tenant in tenants:
        log.append({"tenant": tenant, "decision": "forwarded", "rule": "default"})
    log.close()


def test_only_the_configured_chains_are_read(tmp_path: Path) -> None:
    audit = audit_in(tmp_path)
    write(tmp_path / "audit.jsonl", ["acme"])
    write(tmp_path / "audit.r2.w0.jsonl", ["globex", "globex"])
    write(tmp_path / "cases.jsonl", ["other"])  # not ours: another tool's file
    (tmp_path / "audit.link.jsonl").symlink_to(tmp_path / "cases.jsonl")
    assert sorted(chain_files(audit)) == ["audit.jsonl", "audit.r2.w0.jsonl"]
    verdict = verification(gateway_config(audit))
    assert verdict["ok"]
    assert verdict["records"] == 3
    assert {r["tenant"] for r in records(audit, {})["records"]} == {"acme", "globex"}


def test_a_tampered_line_is_a_break_at_its_seq_with_a_relative_file_name(
        tmp_path: Path) -> None:
    audit = audit_in(tmp_path)
    write(tmp_path / "audit.jsonl", ["acme"] * 5)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace("acme", "evil")
    (tmp_path / "audit.jsonl").write_text("\n".join(lines) + "\n")
    verdict = verification(gateway_config(audit))
    assert not verdict["ok"]
    chain = verdict["chains"][0]
    assert chain["broken"] == {"file": "audit.jsonl", "line": 3, "seq": 2,
                               "reason": chain["broken"]["reason"]}
    assert chain["message"].startswith("audit.jsonl:3: MAC mismatch")
    assert str(tmp_path) not in str(verdict)
    assert records(audit, {"tenant": "evil"})["records"][0]["seq"] == 2  # shown, not hidden


def test_garbled_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    audit = audit_in(tmp_path)
    write(tmp_path / "audit.jsonl", ["acme"] * 2)
    with (tmp_path / "audit.jsonl").open("a") as f:
        f.write('{"broken\n[1,2]\n\n')
    listed = records(audit, {})
    assert len(listed["records"]) == 2
    assert listed["unreadable"] == 2
    assert verification(gateway_config(audit))["chains"][0]["broken"]["seq"] == 2


def test_without_records_nothing_is_verified(tmp_path: Path) -> None:
    audit = audit_in(tmp_path).model_copy(update={"path": str(tmp_path / "none/audit.jsonl")})
    verdict = verification(gateway_config(audit))
    assert not verdict["ok"]
    assert verdict["records"] == 0
    assert "no audit records" in verdict["message"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"key_file": None}, "names no audit key"),
    ({"key_file": "absent.key"}, "cannot read the audit key"),
    ({"key_file": None, "key_env": "VEIL_TEST_UNSET_AUDIT_KEY"}, "is unusable"),
])
def test_no_usable_key_means_the_chain_cannot_be_verified(
        tmp_path: Path, settings: dict[str, object], message: str) -> None:
    write(tmp_path / "audit.jsonl", ["acme"])
    audit = audit_in(tmp_path).model_copy(update=settings)
    with pytest.raises(StudioRefused, match=message) as refused:
        verification(gateway_config(audit))
    assert (refused.value.status, refused.value.code) == (503, "audit_key_unavailable")
    assert records(audit, {})["records"]  # listing needs no key: the banner says unverified


def test_a_misspelt_filter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StudioRefused, match="unknown parameter"):
        records(audit_in(tmp_path), {"tennant": "acme"})
