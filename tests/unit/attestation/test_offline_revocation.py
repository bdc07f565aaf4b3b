"""`veil attest verify` with and without revocation data: CRLs and OCSP responses given as
files are checked as the gateway checks them (a revoked, stale or future-dated one refuses the
evidence), and without them the output says revocation was not checked, never that it is fine.
Genuine TDX collateral (with Intel's CRLs) through the CLI; the test vendors' CRLs and OCSP
responses through the same function the CLI calls, with the test roots."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
from pathlib import Path

import pytest

from gateway.attestation.offline import verify_evidence_file
from gateway.cli import main
from tests.attestation_ca import Vendors

ROOT = Path(__file__).parents[3]
DATA = ROOT / "tests" / "data" / "attestation"
VENDORS = Vendors()
AT = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
LATER = datetime.timedelta(days=1)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["attest", "verify", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def files(tmp_path: Path, **contents: bytes) -> dict[str, Path]:
    paths = {}
    for name, data in contents.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


# -- SEV-SNP: the ARK's CRL ------------------------------------------------------------------

def snp_outcome(tmp_path: Path, *crls: bytes) -> tuple[bool, dict[str, object], list[str]]:
    document = VENDORS.evidence(bytes(64))
    paths = files(tmp_path, report=base64.b64decode(document["evidence"][0]["report"]),
                  vcek=VENDORS.vcek, **{f"crl{i}": crl for i, crl in enumerate(crls)})
    outcome = verify_evidence_file(paths["report"], vcek=paths["vcek"], collateral=None,
                                   chain=None, at=AT, roots=VENDORS.roots(),
                                   crls=[paths[f"crl{i}"] for i in range(len(crls))])
    return outcome.ok, outcome.values, outcome.reasons


def test_snp_without_a_crl_says_revocation_was_not_checked(tmp_path: Path) -> None:
    ok, values, _ = snp_outcome(tmp_path)
    assert ok
    assert values["revocation_checked"] is False
    assert str(values["revocation"]).startswith("NOT CHECKED: no --crl")


def test_snp_with_the_arks_crl_reports_it_checked(tmp_path: Path) -> None:
    ok, values, _ = snp_outcome(tmp_path, VENDORS.amd.crl())
    assert ok
    assert values["revocation_checked"] is True
    assert "current until 2036-01-01" in str(values["revocation"])


@pytest.mark.parametrize(("crl", "reason"), [
    (lambda: VENDORS.amd.crl(revoked=(VENDORS.vcek,)), "sev-snp: vcek revoked"),
    (lambda: VENDORS.amd.crl(this_update=AT + LATER), "is dated in the future"),
    (lambda: VENDORS.amd.crl(next_update=AT - LATER), "is stale"),
], ids=["revoked", "future", "expired"])
def test_snp_is_refused_by_a_bad_crl(crl: object, reason: str, tmp_path: Path) -> None:
    ok, _, reasons = snp_outcome(tmp_path, crl())  # type: ignore[operator]
    assert not ok
    assert reason in reasons[0]


# -- TDX: the PCK CA's and root CA's CRLs (genuine, from Intel PCS) ---------------------------

QUOTE = DATA / "tdx" / "quote_v5_sample.dat"
PCS_AT = "2026-02-05T00:00:00Z"


def test_tdx_with_intels_crls_in_the_collateral_reports_them_checked(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, str(QUOTE), "--collateral", str(DATA / "tdx"), "--at", PCS_AT)
    assert (code, out["revocation_checked"]) == (0, True)
    assert "the PCK CA's CRL and the root CA's CRL" in str(out["revocation"])
    assert "current until 2026-02-11T15:52:37" in str(out["revocation"])


def without_crls(tmp_path: Path) -> Path:
    folder = tmp_path / "collateral"
    shutil.copytree(DATA / "tdx", folder, ignore=shutil.ignore_patterns("*.crl"))
    return folder


def test_tdx_without_crls_says_revocation_was_not_checked(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = without_crls(tmp_path)
    code, out = cli(capsys, str(QUOTE), "--collateral", str(folder), "--at", PCS_AT)
    assert (code, out["revocation_checked"]) == (0, False)
    assert str(out["revocation"]).startswith("NOT CHECKED: no PCK CRL")
    main(["attest", "verify", str(QUOTE), "--collateral", str(folder), "--at", PCS_AT])
    assert "revocation: NOT CHECKED" in capsys.readouterr().out  # the text output too


def test_tdx_crls_given_on_the_command_line_are_checked(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = cli(capsys, str(QUOTE), "--collateral", str(without_crls(tmp_path)),
                    "--crl", str(DATA / "tdx" / "pck_crl_platform.crl"), "--at", PCS_AT)
    assert (code, out["revocation_checked"]) == (0, True)
    assert "(no root CA CRL given)" in str(out["revocation"])


def test_tdx_refuses_a_crl_past_its_next_update_and_one_from_another_ca(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = cli(capsys, str(QUOTE), "--collateral", str(DATA / "tdx"),
                    "--at", "2026-02-12T00:00:00Z")
    assert code == 1
    assert "CRL of 'Intel SGX PCK Platform CA' is stale" in str(out["reasons"])
    code, out = cli(capsys, str(QUOTE), "--collateral", str(without_crls(tmp_path)),
                    "--crl", str(files(tmp_path, other=VENDORS.intel.pck_crl())["other"]),
                    "--at", PCS_AT)
    assert code == 1
    assert "neither the PCK CA nor the root CA" in str(out["reasons"])


# -- NVIDIA GPU: OCSP responses ---------------------------------------------------------------

def gpu_outcome(tmp_path: Path, *responses: bytes) -> tuple[bool, dict[str, object], list[str]]:
    paths = files(tmp_path, evidence=VENDORS.nvidia.evidence(bytes(32), {1: b"\1" * 48})
                  .hex().encode(), chain=VENDORS.nvidia.chain_pem(),
                  **{f"ocsp{i}": r for i, r in enumerate(responses)})
    outcome = verify_evidence_file(paths["evidence"], vcek=None, collateral=None,
                                   chain=paths["chain"], at=AT, roots=VENDORS.roots(),
                                   ocsp=[paths[f"ocsp{i}"] for i in range(len(responses))])
    return outcome.ok, outcome.values, outcome.reasons


def test_gpu_with_and_without_an_ocsp_response(tmp_path: Path) -> None:
    ok, values, _ = gpu_outcome(tmp_path)
    assert (ok, values["revocation_checked"]) == (True, False)
    assert "no --ocsp response about 'Test GH100 attestation key'" in str(values["revocation"])
    ok, values, _ = gpu_outcome(tmp_path, VENDORS.nvidia.ocsp())
    assert (ok, values["revocation_checked"]) == (True, True)
    assert "OCSP says good for 1 certificate(s)" in str(values["revocation"])


@pytest.mark.parametrize(("response", "reason"), [
    (lambda: VENDORS.nvidia.ocsp(status="revoked"), "is revoked (key_compromise)"),
    (lambda: VENDORS.nvidia.ocsp(this_update=AT + LATER), "is not current"),
    (lambda: VENDORS.nvidia.ocsp(next_update=AT - LATER), "is not current"),
], ids=["revoked", "future", "expired"])
def test_gpu_is_refused_by_a_bad_ocsp_response(response: object, reason: str,
                                               tmp_path: Path) -> None:
    ok, _, reasons = gpu_outcome(tmp_path, response())  # type: ignore[operator]
    assert not ok
    assert reason in reasons[0]


def test_genuine_gpu_evidence_without_ocsp_says_not_checked(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, str(DATA / "nvidia" / "hopperAttestationReport.txt"), "--chain",
                    str(DATA / "nvidia" / "hopper_cert_chain_case1.txt"))
    assert (code, out["revocation_checked"]) == (0, False)
    assert "http://ocsp.ndis.nvidia.com" in str(out["revocation"])
