"""NVIDIA GPU evidence: genuine H100 SPDM measurements verify to the pinned NVIDIA root; any
tampering, another nonce or another root is refused; measurement requirements are enforced."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.attestation.levels import GpuRequirements, gpu_problems
from gateway.attestation.nvidia import verify_gpu_evidence
from gateway.errors import EvidenceError
from tests.attestation_ca import GpuTestCa

DATA = Path(__file__).parents[2] / "data" / "attestation" / "nvidia"
AT = datetime(2025, 1, 1, tzinfo=UTC)
GENUINE = [("hopperAttestationReport.txt", "hopper_cert_chain_case1.txt"),
           ("hopper_coco_report1.txt", "hopper_coco_certs1.txt")]


def genuine(index: int = 0) -> tuple[bytes, bytes]:
    report, chain = GENUINE[index]
    return bytes.fromhex((DATA / report).read_text().strip()), (DATA / chain).read_bytes()


@pytest.mark.parametrize("index", [0, 1])
def test_genuine_h100_evidence_verifies(index: int) -> None:
    raw, chain = genuine(index)
    evidence = verify_gpu_evidence(raw, chain, expected_nonce=raw[4:36], at=AT)
    assert len(evidence.measurements) == 64
    assert all(len(v) == 48 for v in evidence.measurements.values())


def test_every_flipped_byte_in_the_signed_part_is_refused() -> None:
    raw, chain = genuine()
    for offset in range(0, len(raw) - 96, 13):
        tampered = bytearray(raw)
        tampered[offset] ^= 0x01
        with pytest.raises(EvidenceError):
            verify_gpu_evidence(bytes(tampered), chain, expected_nonce=None, at=AT)


def test_another_nonce_is_a_replay() -> None:
    raw, chain = genuine()
    with pytest.raises(EvidenceError, match="request nonce is not this gateway's"):
        verify_gpu_evidence(raw, chain, expected_nonce=bytes(32), at=AT)


@pytest.mark.parametrize("cut", [20, 200, 3000, 4000])
def test_truncated_evidence_is_refused(cut: int) -> None:
    raw, chain = genuine()
    with pytest.raises(EvidenceError):
        verify_gpu_evidence(raw[:cut], chain, expected_nonce=None, at=AT)


def test_other_root_and_broken_chain_are_refused() -> None:
    raw, chain = genuine()
    with pytest.raises(EvidenceError, match="not end at the pinned NVIDIA root"):
        verify_gpu_evidence(raw, chain, expected_nonce=None, at=AT, root=GpuTestCa().root)
    with pytest.raises(EvidenceError, match="does not parse"):
        verify_gpu_evidence(raw, b"garbage", expected_nonce=None, at=AT)


def test_measurement_requirements() -> None:
    ca = GpuTestCa()
    nonce = bytes(range(32))
    raw = ca.evidence(nonce, {1: b"\xaa" * 48, 2: b"\xbb" * 48})
    evidence = verify_gpu_evidence(raw, ca.chain_pem(), expected_nonce=nonce, at=AT,
                                   root=ca.root)
    assert gpu_problems(evidence, GpuRequirements(measurements={1: ["aa" * 48]})) == []
    assert gpu_problems(evidence, GpuRequirements(measurements={2: ["aa" * 48], 9: ["00"]})) \
        == [f"GPU measurement 2 {'bb' * 48} is not allowed", "GPU measurement 9 is missing"]
