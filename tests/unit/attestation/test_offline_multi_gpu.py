"""`veil attest verify` on a node's evidence document: every GPU part verified and shown, the
level met only by all of them, every problem naming its GPU."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.attestation.levels import TrustLevel
from gateway.attestation.offline import Outcome, Wanted, verify_evidence_file
from gateway.cli import main
from tests.unit.attestation.test_multi_gpu import (
    BOUND,
    GOOD,
    VENDORS,
    broken_signature,
    document,
    serial,
)

AT = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
DATA = Path(__file__).parents[2] / "data" / "attestation" / "nvidia"


def check(tmp_path: Path, made: dict[str, Any], wanted: Wanted | None = None) -> Outcome:
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(made))
    return verify_evidence_file(path, vcek=None, collateral=None, chain=None, at=AT,
                                wanted=wanted, roots=VENDORS.roots())


def level(**gpu: Any) -> Wanted:
    return Wanted("gpu", TrustLevel.model_validate({"nvidia-gpu": {
        "measurements": {1: [GOOD.hex()]}, **gpu}}))


def test_every_gpu_of_the_document_is_verified_and_shown(tmp_path: Path) -> None:
    outcome = check(tmp_path, document(8), level(count=8))
    assert outcome.ok, outcome.reasons
    assert outcome.values["gpus"] == 8
    for index in range(8):
        assert outcome.values[f"gpu_{index}_certificate_serial"] == serial(index)
        assert outcome.values[f"gpu_{index}_measurement_1"] == GOOD.hex()
        assert outcome.values[f"gpu_{index}_revocation_checked"] is True
    assert outcome.values["report_data"] == BOUND[:32].hex()
    assert outcome.values["trust_level"] == "gpu: met"
    assert "sev-snp" not in json.dumps(outcome.values)  # the CPU's part: from its own file


def test_the_level_needs_every_gpu_and_the_count(tmp_path: Path) -> None:
    bad = VENDORS.nvidia.part(BOUND[:32], 3, measurements={1: b"\x99" * 48})
    outcome = check(tmp_path, document(8, p3=bad), level(count=8))
    assert not outcome.ok
    assert outcome.reasons == [f"GPU 3 (certificate serial {serial(3)}): GPU measurement 1 "
                               f"{'99' * 48} is not allowed"]
    outcome = check(tmp_path, document(7), level(count=8))
    assert outcome.reasons == ["7 GPU(s) attested, the level requires 8"]


def test_a_gpu_that_does_not_verify_is_named_and_the_others_still_shown(
        tmp_path: Path) -> None:
    outcome = check(tmp_path, document(4, p2=broken_signature(2)))
    assert not outcome.ok
    assert outcome.reasons == [f"nvidia-gpu: GPU 2 (certificate serial {serial(2)}): the "
                               "measurements' signature does not verify"]
    assert [k for k in outcome.values if k.endswith("_certificate_serial")] == [
        "gpu_0_certificate_serial", "gpu_1_certificate_serial", "gpu_3_certificate_serial"]


def test_the_same_gpu_twice_or_another_exchange_is_refused(tmp_path: Path) -> None:
    outcome = check(tmp_path, document(3, p2=VENDORS.nvidia.part(BOUND[:32], 0)))
    assert outcome.reasons == [f"nvidia-gpu: GPU 2 (certificate serial {serial(0)}) is the "
                               f"same GPU as GPU 0 (certificate serial {serial(0)}) (the same "
                               "attestation key)"]
    outcome = check(tmp_path, document(3, p1=VENDORS.nvidia.part(bytes(32), 1)))
    assert outcome.reasons == [f"nvidia-gpu: GPU 1 (certificate serial {serial(1)}) was asked "
                               f"with another nonce than GPU 0 (certificate serial "
                               f"{serial(0)}) (not evidence of the same exchange)"]


def test_a_document_without_gpu_parts_is_refused(tmp_path: Path) -> None:
    outcome = check(tmp_path, VENDORS.evidence(BOUND))
    assert not outcome.ok
    assert "no nvidia-gpu part" in outcome.reasons[0]
    assert not check(tmp_path, {"evidence": "none"}).ok


def test_a_single_gpu_file_does_not_meet_a_level_wanting_eight(tmp_path: Path) -> None:
    part = VENDORS.nvidia.part(BOUND[:32])
    (tmp_path / "gpu.hex").write_text(part["evidence"])
    (tmp_path / "chain.pem").write_text(part["certificates"])
    outcome = verify_evidence_file(tmp_path / "gpu.hex", vcek=None, collateral=None,
                                   chain=tmp_path / "chain.pem", at=AT, wanted=level(count=8),
                                   roots=VENDORS.roots())
    assert outcome.reasons == ["1 GPU(s) attested, the level requires 8"]


def test_genuine_h100_evidence_as_a_one_gpu_document(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """NVIDIA's recorded H100, as the agent serves it: verified to NVIDIA's pinned root,
    revocation not checked (no OCSP answer stapled or given), and said so."""
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps({"evidence": [{
        "format": "nvidia-gpu",
        "evidence": (DATA / "hopperAttestationReport.txt").read_text().strip(),
        "certificates": (DATA / "hopper_cert_chain_case1.txt").read_text()}]}))
    code = main(["attest", "verify", str(path), "--at", "2025-01-01T00:00:00Z"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "VERIFIED"
    assert "  gpus: 1" in lines
    assert any(line.startswith("  gpu_0_certificate_serial: ") for line in lines)
    assert sum(line.startswith("  gpu_0_measurement_") for line in lines) == 64
    assert "  gpu_0_revocation_checked: False" in lines
