"""`veil attest verify`: exit 0 only when the evidence verifies (and meets the level asked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.servers import TEST_POLICY, write_policy

ROOT = Path(__file__).parents[3]
DATA = ROOT / "tests" / "data" / "attestation"
REPORT, VCEK = DATA / "virtee_milan_report.bin", DATA / "virtee_milan_vcek.der"
HEALTHCARE = ROOT / "policies" / "healthcare.yaml"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["attest", "verify", *args])
    return code, capsys.readouterr().out


def test_verifies_and_meets_the_example_level(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, str(REPORT), "--vcek", str(VCEK), "--at", "2024-06-01T00:00:00Z",
                    "--policy", str(HEALTHCARE), "--level", "confidential-cpu", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["measurement"].startswith("7a1e5c26")
    assert result["trust_level"] == "confidential-cpu: met"


def test_refusals_exit_1_with_the_reason(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    code, out = run(capsys, str(REPORT), "--vcek", str(VCEK), "--at", "2035-01-01")
    assert (code, out.splitlines()[0]) == (1, "REFUSED")
    assert "not valid at 2035" in out
    code, out = run(capsys, str(REPORT))
    assert code == 1
    assert "needs --vcek" in out
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(REPORT.read_bytes()[:100])
    code, out = run(capsys, str(truncated), "--vcek", str(VCEK))
    assert code == 1
    assert "unrecognised evidence (100 bytes)" in out
    code, out = run(capsys, str(DATA / "gsg_milan_report.bin"), "--vcek",
                    str(DATA / "gsg_milan_vcek.der"), "--at", "2022-09-24T01:00:00Z",
                    "--policy", str(HEALTHCARE), "--level", "confidential-cpu")
    assert code == 1
    assert "reason: debug is enabled in the guest policy" in out


def test_tdx_quote_is_detected_and_needs_collateral(capsys: pytest.CaptureFixture[str]) -> None:
    quote = DATA / "tdx" / "quote_v5_sample.dat"
    code, out = run(capsys, str(quote), "--collateral", str(DATA / "tdx"),
                    "--at", "2026-02-05T00:00:00Z", "--json")
    assert code == 0
    assert json.loads(out)["tcb_status"] == "UpToDate"
    code, out = run(capsys, str(quote))
    assert code == 1
    assert "needs --collateral" in out


def test_gpu_evidence_is_detected_and_needs_its_chain(capsys: pytest.CaptureFixture[str]) -> None:
    evidence = DATA / "nvidia" / "hopperAttestationReport.txt"
    code, out = run(capsys, str(evidence), "--chain",
                    str(DATA / "nvidia" / "hopper_cert_chain_case1.txt"), "--json")
    assert code == 0
    assert json.loads(out)["format"] == "nvidia-gpu"
    code, out = run(capsys, str(evidence))
    assert code == 1
    assert "needs --chain" in out


def test_a_level_the_policy_does_not_define_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, str(REPORT), "--vcek", str(VCEK), "--at", "2024-06-01T00:00:00Z",
                    "--policy", str(HEALTHCARE), "--level", "confidential-nope")
    assert code == 1
    assert "policy has no trust level 'confidential-nope' for sev-snp evidence" in out


def test_genuine_gpu_evidence_against_nvidia_rim_files(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    """Offline, RIMs come from files: NVIDIA's genuine VBIOS RIM for this H100 allows all but
    index 9 of its measurements, and no file is given for its driver."""
    rim = DATA / "nvidia" / "NV_GPU_VBIOS_1010_0200_882_960074001A.swidtag"
    policy = write_policy({**TEST_POLICY, "trust_levels": {"gpu": {"nvidia-gpu": {
        "rims": {"files": [str(rim)]}}}}}, tmp_path)
    code, out = run(capsys, str(DATA / "nvidia" / "hopper_coco_report1.txt"), "--chain",
                    str(DATA / "nvidia" / "hopper_coco_certs1.txt"), "--at",
                    "2025-01-01T00:00:00Z", "--policy", policy, "--level", "gpu", "--json")
    result = json.loads(out)
    assert code == 1
    assert (result["driver_rim"], result["vbios_rim"]) == (
        "NV_GPU_DRIVER_GH100_580.95.05", "NV_GPU_VBIOS_1010_0200_882_960074001A")
    assert result["reasons"] == [
        "driver RIM NV_GPU_DRIVER_GH100_580.95.05: no RIM file is for driver version 580.95.05",
        "GPU measurement index 9 059b32e712a153f4... is not one of the 1 the vbios RIM "
        "96.00.74.00.1A allows"]
