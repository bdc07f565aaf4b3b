"""SEV-SNP: genuine reports verify with a frozen clock; every tampering is refused; trust-level
checks reach each branch with reports signed by a test AMD."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.attestation.levels import SnpRequirements, snp_problems
from gateway.attestation.snp import Tcb, amd_roots, parse_report, verify_report
from gateway.errors import EvidenceError
from tests.attestation_ca import MEASUREMENT, SnpTestCa, snp_report

DATA = Path(__file__).parents[2] / "data" / "attestation"
GSG_AT = datetime(2022, 9, 24, 1, 0, tzinfo=UTC)
VIRTEE_AT = datetime(2024, 6, 1, tzinfo=UTC)
GOLDEN = {
    "gsg": ("gsg_milan_report.bin", "gsg_milan_vcek.der", GSG_AT,
            "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
            "6bdf8a9ece31a5a608eb0cf2e4872b01", "bl=2 tee=0 snp=5 ucode=68"),
    "virtee": ("virtee_milan_report.bin", "virtee_milan_vcek.der", VIRTEE_AT,
               "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
               "3e1a0dc39b2c60bd95b9c480cd81841f", "bl=3 tee=0 snp=8 ucode=115"),
}


def golden(name: str) -> tuple[bytes, bytes, datetime]:
    report, vcek, at, _, _ = GOLDEN[name]
    return (DATA / report).read_bytes(), (DATA / vcek).read_bytes(), at


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_genuine_reports_verify(name: str) -> None:
    report, vcek, at = golden(name)
    verified = verify_report(report, vcek, at=at)
    values = verified.values()
    assert (verified.product, verified.key_kind) == ("Milan", "vcek")
    assert values["measurement"] == GOLDEN[name][3]
    assert values["tcb"] == GOLDEN[name][4]


def test_report_data_of_the_go_sev_guest_vector() -> None:
    report, vcek, at = golden("gsg")
    assert verify_report(report, vcek, at=at).report.report_data[:6] == bytes.fromhex(
        "010203040500")


@pytest.mark.parametrize("file", ["psu_genoa_report_v3.bin", "psu_milan_report_v5.bin",
                                  "tinfoil_genoa_report.bin"])
def test_other_versions_parse(file: str) -> None:
    report = parse_report((DATA / file).read_bytes())
    assert report.version in (3, 5)
    assert report.cpuid_family == 0x19


def test_every_flipped_byte_in_the_signed_region_is_refused() -> None:
    report, vcek, at = golden("virtee")
    # every 8th byte of the signed region (all 672 takes ~3 s; the stride hits every field)
    for offset in range(0, 0x2A0, 8):
        tampered = bytearray(report)
        tampered[offset] ^= 0x01
        with pytest.raises(EvidenceError):
            verify_report(bytes(tampered), vcek, at=at)


@pytest.mark.parametrize(("offset", "reason"), [
    (0x90, "signature does not verify"),  # measurement
    (0x50, "signature does not verify"),  # report_data
    (0x1A0, "chip_id does not match"),  # chip id
    (0x180, "reported TCB bootloader"),  # reported TCB
    (0x2A0, "signature does not verify"),  # signature R
])
def test_tampering_names_the_reason(offset: int, reason: str) -> None:
    report, vcek, at = golden("virtee")
    tampered = bytearray(report)
    tampered[offset] ^= 0x01
    with pytest.raises(EvidenceError, match=reason):
        verify_report(bytes(tampered), vcek, at=at)


def test_truncated_report_is_refused() -> None:
    report, vcek, at = golden("virtee")
    with pytest.raises(EvidenceError, match="1183 bytes"):
        verify_report(report[:-1], vcek, at=at)


def test_expired_clock_is_refused() -> None:
    report, vcek, _ = golden("virtee")
    with pytest.raises(EvidenceError, match="not valid at 2031"):
        verify_report(report, vcek, at=datetime(2031, 1, 1, tzinfo=UTC))


def test_wrong_product_chain_is_refused() -> None:
    report, vcek, at = golden("virtee")
    genoa_only = {"Milan": amd_roots()["Genoa"]}
    with pytest.raises(EvidenceError, match="not signed by"):
        verify_report(report, vcek, at=at, roots=genoa_only)


def test_wrong_root_is_refused() -> None:
    report, vcek, at = golden("virtee")
    with pytest.raises(EvidenceError, match="not signed by"):
        verify_report(report, vcek, at=at, roots=SnpTestCa().roots)


def test_vcek_of_another_chip_is_refused() -> None:
    report, _, at = golden("virtee")
    other_chip = (DATA / "gsg_milan_vcek.der").read_bytes()
    with pytest.raises(EvidenceError):
        verify_report(report, other_chip, at=at)


def test_garbage_certificate_is_refused() -> None:
    report, _, at = golden("virtee")
    with pytest.raises(EvidenceError, match="does not parse"):
        verify_report(report, b"not a certificate", at=at)


# Trust-level checks, on reports signed by the test AMD.
CA = SnpTestCa()
TCB = Tcb(bootloader=3, tee=0, snp=8, microcode=115)
KEY, VCEK = CA.vcek(TCB)
AT = datetime(2025, 1, 1, tzinfo=UTC)
WANT = SnpRequirements(measurements=[MEASUREMENT.hex()],
                       min_tcb={"bootloader": 3, "snp": 8, "microcode": 115})


def problems(**report_fields: object) -> list[str]:
    report = snp_report(KEY, **report_fields)  # type: ignore[arg-type]
    return snp_problems(verify_report(report, VCEK, at=AT, roots=CA.roots), WANT)


def test_test_ca_report_meets_the_level() -> None:
    assert problems() == []


@pytest.mark.parametrize(("fields", "problem"), [
    ({"measurement": bytes(48)}, "measurement 0000"),
    ({"policy": 0x30000 | 1 << 19}, "debug is enabled"),
    ({"policy": 0x30000 | 1 << 18}, "migration agent"),
    ({"vmpl": 2}, "VMPL 2 > 0"),
])
def test_each_requirement_is_enforced(fields: dict[str, object], problem: str) -> None:
    found = problems(**fields)
    assert len(found) == 1, found
    assert problem in found[0]


def test_tcb_below_minimum() -> None:
    old = Tcb(bootloader=2, tee=0, snp=8, microcode=100)
    key, vcek = CA.vcek(old)
    verified = verify_report(snp_report(key, tcb=old), vcek, at=AT, roots=CA.roots)
    assert snp_problems(verified, WANT) == [
        "TCB below the minimum: bootloader=2<3, microcode=100<115"]


def test_guest_svn_and_products() -> None:
    verified = verify_report(snp_report(KEY, guest_svn=1), VCEK, at=AT, roots=CA.roots)
    strict = WANT.model_copy(update={"min_guest_svn": 2, "products": ["Genoa"]})
    assert snp_problems(verified, strict) == ["product Milan is not allowed",
                                              "guest SVN 1 < 2"]


def test_report_tcb_must_match_the_vcek() -> None:
    newer = Tcb(bootloader=4, tee=0, snp=8, microcode=115)
    with pytest.raises(EvidenceError, match="reported TCB bootloader=4 but the certificate"):
        verify_report(snp_report(KEY, tcb=newer), VCEK, at=AT, roots=CA.roots)


def test_masked_chip_id_cannot_bind_to_a_vcek() -> None:
    with pytest.raises(EvidenceError, match="chip_id"):
        verify_report(snp_report(KEY, chip_id=bytes(64)), VCEK, at=AT, roots=CA.roots)


def test_turin_vcek_chains_to_the_pinned_turin_root() -> None:
    """No Turin report is published; its VCEK (FMC SPL, 8-byte HWID) must chain and parse."""
    from gateway.attestation.snp import (  # noqa: PLC0415  # noqa: PLC0415
        HWID_OID,
        TCB_OIDS,
        _extension_bytes,
        _extension_int,
        _verify_chain,
        load_certificate,
    )

    vcek = load_certificate((DATA / "virtee_turin_vcek.der").read_bytes())
    turin = amd_roots()["Turin"]
    assert turin.ask is not None
    at = datetime(2025, 6, 1, tzinfo=UTC)
    _verify_chain([vcek, turin.ask, turin.ark], at)
    assert _extension_int(vcek, TCB_OIDS["fmc"]) == 0
    assert _extension_int(vcek, TCB_OIDS["microcode"]) == 9
    assert len(_extension_bytes(vcek, HWID_OID) or b"") == 8
    milan = amd_roots()["Milan"]
    assert milan.ask is not None
    with pytest.raises(EvidenceError, match="not signed by"):
        _verify_chain([vcek, milan.ask, milan.ark], at)


def test_vlek_signed_reports_verify_and_keys_are_policy() -> None:
    key, certificate = CA.vlek(TCB)
    report = snp_report(key, signing_key=1, chip_id=bytes(64))  # VLEK reports may mask chip id
    verified = verify_report(report, certificate, at=AT, roots=CA.roots)
    assert verified.key_kind == "vlek"
    assert snp_problems(verified, WANT) == []
    vcek_only = WANT.model_copy(update={"signing_keys": ["vcek"]})
    assert snp_problems(verified, vcek_only) == ["signing key vlek is not allowed"]
    with pytest.raises(EvidenceError, match="report says signing key 0, certificate is a VLEK"):
        verify_report(snp_report(key, signing_key=0), certificate, at=AT, roots=CA.roots)
