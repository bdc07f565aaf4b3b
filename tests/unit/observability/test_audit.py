from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.observability.audit import AuditLog, verify

KEY = b"k" * 32


def write(path: Path, n: int, **kwargs: int) -> AuditLog:
    log = AuditLog(path, KEY, **kwargs)
    for i in range(n):
        log.append({"request_id": f"r{i}", "status": 200, "entities": {"EMAIL": i}})
    return log


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_chain_verifies(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", 5).close()
    verdict = verify([tmp_path / "a.jsonl"], KEY)
    assert verdict.ok, verdict.message
    assert verdict.records == 5


def test_resumes_the_chain_after_restart(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", 3).close()
    write(tmp_path / "a.jsonl", 2).close()
    assert verify([tmp_path / "a.jsonl"], KEY).message.startswith("5 records verified, last seq 4")


@pytest.mark.parametrize(("tamper", "expected"), [
    (lambda ls: [ls[0], ls[1].replace('"status":200', '"status":201'), *ls[2:]],
     "a.jsonl:2: MAC mismatch"),
    (lambda ls: [ls[0], *ls[2:]], "a.jsonl:2: chain broken after seq 0"),
    (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "a.jsonl:2: chain broken after seq 0"),
    (lambda ls: [*ls[:3], ls[1], *ls[3:]], "a.jsonl:4: chain broken after seq 2"),
    (lambda ls: [ls[0], "{not json", *ls[1:]], "a.jsonl:2: not a JSON record"),
])
def test_tampering_is_located(tmp_path: Path, tamper: object, expected: str) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 5).close()
    path.write_text("\n".join(tamper(lines(path))) + "\n")  # type: ignore[operator]
    verdict = verify([path], KEY)
    assert not verdict.ok
    assert verdict.message.startswith(f"{tmp_path}/{expected}"), verdict.message


def test_wrong_key_fails(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", 2).close()
    assert "MAC mismatch" in verify([tmp_path / "a.jsonl"], b"x" * 32).message


def test_deleting_the_first_records_shows(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, 4).close()
    path.write_text("\n".join(lines(path)[2:]) + "\n")
    verdict = verify([path], KEY)
    assert verdict.ok  # the rest is intact, but the gap at the start is reported
    assert "chain starts at seq 2" in verdict.message


def test_rotation_keeps_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 60, max_bytes=4096, keep=50).close()
    rotated = sorted(tmp_path.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(rotated) >= 2
    verdict = verify([*rotated, path], KEY)
    assert verdict.ok, verdict.message
    assert verdict.records == 60
    assert not verify([rotated[0], path], KEY).ok  # a missing middle file is a break


def test_records_hold_no_values(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", 1).close()
    record = json.loads(lines(tmp_path / "a.jsonl")[0])
    assert set(record) == {"seq", "time", "request_id", "status", "entities", "prev", "mac"}


def test_cli_reports_a_missing_key_cleanly(tmp_path: Path) -> None:
    from gateway.cli import main  # noqa: PLC0415

    write(tmp_path / "a.jsonl", 1).close()
    assert main(["audit", "verify", str(tmp_path / "a.jsonl"),
                 "--key-file", str(tmp_path / "missing.key")]) == 2


def test_the_last_seq_is_in_the_gateways_own_log(tmp_path: Path) -> None:
    """Records cut from the end leave no trace in the file; the log says where it ended."""
    from structlog.testing import capture_logs  # noqa: PLC0415

    from gateway.keys.material import MemorySigner  # noqa: PLC0415
    from gateway.observability.audit import AuditTrail, load_key  # noqa: PLC0415

    (tmp_path / "k").write_text("k" * 32)
    trail = AuditTrail(tmp_path / "a.jsonl",
                       lambda: MemorySigner(load_key(str(tmp_path / "k"))), 1 << 20, 3)
    with capture_logs() as logs:
        trail.open()
        for i in range(3):
            trail.append({"n": i})
        trail.close()
    assert [(e["event"], e.get("next_seq", e.get("last_seq"))) for e in logs] == \
        [("audit_trail_opened", 0), ("audit_trail_closed", 2)]


def test_a_directory_of_replica_chains_names_the_one_that_broke(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.app import audit_path  # noqa: PLC0415
    from gateway.cli import main  # noqa: PLC0415

    base = str(tmp_path / "audit.jsonl")
    names = {(r, w): audit_path(base, w, r) for r in ("r1", "r2") for w in (0, 1)}
    assert names[("r1", 0)] == str(tmp_path / "audit.r1.w0.jsonl")
    assert audit_path(base, None, "r1") == str(tmp_path / "audit.r1.jsonl")
    assert audit_path(base, None, None) == base
    for path in names.values():
        write(Path(path), 120, max_bytes=4096, keep=50).close()  # rotated: several files each
    assert (tmp_path / "audit.r2.w1.jsonl.1").exists()
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY)
    assert main(["audit", "verify", str(tmp_path), "--key-file", str(key_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert all(line.startswith("ok: audit.r") and "120 records" in line for line in out)

    rotated = tmp_path / "audit.r2.w1.jsonl.1"
    kept = lines(rotated)
    rotated.write_text("\n".join(kept[:3] + kept[4:]) + "\n")  # one record removed
    assert main(["audit", "verify", str(tmp_path), "--key-file", str(key_file)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["ok", "ok", "ok", "FAILED"]
    assert out[3].startswith("FAILED: audit.r2.w1.jsonl: ")
    assert "chain broken" in out[3]
