"""Intel TDX: genuine quotes (v4, v5) verify with Intel's collateral and a frozen clock; every
tampering is refused; trust-level checks reach each branch with quotes from a test Intel."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.attestation import tdx as tdx_module
from gateway.attestation.levels import TdxRequirements, TrustLevel, tdx_problems
from gateway.attestation.offline import Wanted, verify_evidence_file
from gateway.attestation.tdx import (
    Collateral,
    VerifiedTdx,
    collateral_from_dir,
    collateral_from_json,
    parse_quote,
    verify_quote,
    verify_quote_signatures,
)
from gateway.attestation.trust_roots import Roots
from gateway.errors import EvidenceError
from tests.attestation_ca import MRTD, TdxTestCa

DATA = Path(__file__).parents[2] / "data" / "attestation" / "tdx"
SPR_AT = datetime(2023, 7, 1, tzinfo=UTC)
PCS_AT = datetime(2026, 2, 5, tzinfo=UTC)


def go_tdx_guest_collateral() -> Collateral:
    return Collateral(
        tcb_info=(DATA / "sample_tcbInfo_response").read_text(),
        tcb_info_chain=(DATA / "tcbinfo_issuer_chain.pem").read_bytes(),
        qe_identity=(DATA / "sample_qeIdentity_response").read_text(),
        qe_identity_chain=(DATA / "qeidentity_issuer_chain.pem").read_bytes(),
        pck_crl=(DATA / "pckcrl").read_bytes(), root_crl=(DATA / "rootcrl.der").read_bytes())


def spr_quote() -> bytes:
    return (DATA / "tdx_prod_quote_SPR_E4.dat").read_bytes()


def test_sapphire_rapids_v4_quote_verifies() -> None:
    verified = verify_quote(spr_quote(), go_tdx_guest_collateral(), at=SPR_AT)
    values = verified.values()
    assert (values["version"], values["fmspc"]) == (4, "50806f000000")
    assert values["mrtd"].startswith("6363b8043668a3ad")
    assert values["qe_tcb_status"] == "UpToDate"
    # The platform's CPU SVNs are below both levels in that TCB Info: only a policy that
    # explicitly accepts TcbNotSupported would take it.
    assert values["tcb_status"] == "TcbNotSupported"


@pytest.mark.parametrize(("file", "at", "version", "status"), [
    ("trustee_quote_6.dat", datetime(2026, 1, 20, tzinfo=UTC), 4, "OutOfDate"),
    ("quote_v5_sample.dat", PCS_AT, 5, "UpToDate"),
])
def test_quotes_verify_with_collateral_saved_from_pcs(file: str, at: datetime, version: int,
                                                      status: str) -> None:
    raw = (DATA / file).read_bytes()
    verified = verify_quote(raw, collateral_from_dir(DATA, parse_quote(raw)), at=at)
    assert (verified.quote.version, verified.tcb_status) == (version, status)


def test_every_flipped_byte_in_the_signed_region_is_refused() -> None:
    raw, collateral = spr_quote(), go_tdx_guest_collateral()
    signed_end = len(parse_quote(raw).signed)
    for offset in range(0, signed_end, 7):
        tampered = bytearray(raw)
        tampered[offset] ^= 0x01
        with pytest.raises(EvidenceError):
            verify_quote(bytes(tampered), collateral, at=SPR_AT)


@pytest.mark.parametrize(("offset_from_signed", "reason"), [
    (4, "quote signature does not verify"),  # inside the quote signature
    (4 + 64 + 2, "QE report does not vouch"),  # the attestation key
    (4 + 128 + 6 + 10, "QE report signature does not verify"),  # inside the QE report
])
def test_signature_data_tampering_names_the_reason(offset_from_signed: int,
                                                   reason: str) -> None:
    raw = spr_quote()
    tampered = bytearray(raw)
    tampered[len(parse_quote(raw).signed) + offset_from_signed] ^= 0x01
    with pytest.raises(EvidenceError, match=reason):
        verify_quote(bytes(tampered), go_tdx_guest_collateral(), at=SPR_AT)


@pytest.mark.parametrize("cut", [10, 100, 700, 1500, 4000])
def test_truncated_quotes_are_refused(cut: int) -> None:
    with pytest.raises(EvidenceError):
        verify_quote(spr_quote()[:cut], go_tdx_guest_collateral(), at=SPR_AT)


def test_wrong_root_and_expired_clock() -> None:
    with pytest.raises(EvidenceError, match="pinned Intel root"):
        verify_quote(spr_quote(), go_tdx_guest_collateral(), at=SPR_AT, root=TdxTestCa().root)
    with pytest.raises(EvidenceError, match="not valid at 2051"):
        verify_quote(spr_quote(), go_tdx_guest_collateral(), at=datetime(2051, 1, 1, tzinfo=UTC))


def test_edited_collateral_is_refused() -> None:
    collateral = go_tdx_guest_collateral()
    edited = Collateral(collateral.tcb_info.replace('"OutOfDate"', '"UpToDate"'),
                        collateral.tcb_info_chain, collateral.qe_identity,
                        collateral.qe_identity_chain)
    with pytest.raises(EvidenceError, match="tcbInfo signature does not verify"):
        verify_quote(spr_quote(), edited, at=SPR_AT)


def test_collateral_past_next_update_is_refused() -> None:
    with pytest.raises(EvidenceError, match="expired"):
        verify_quote(spr_quote(), go_tdx_guest_collateral(),
                     at=datetime(2023, 8, 1, tzinfo=UTC))


def test_collateral_for_another_platform_is_refused() -> None:
    raw = (DATA / "quote_v5_sample.dat").read_bytes()
    other = Collateral((DATA / "tcb_info_00a06d080000.json").read_text(),
                       (DATA / "tcb_info_00a06d080000_chain.pem").read_bytes(),
                       (DATA / "qe_identity.json").read_text(),
                       (DATA / "qe_identity_chain.pem").read_bytes())
    with pytest.raises(EvidenceError, match="FMSPC 00a06d080000"):
        verify_quote(raw, other, at=datetime(2026, 2, 5, tzinfo=UTC))


# Trust-level checks, on quotes from the test Intel.
CA = TdxTestCa()
AT = datetime(2025, 1, 1, tzinfo=UTC)
WANT = TdxRequirements(mrtd=[MRTD.hex()], rtmr={1: ["00" * 48]})


def problems(collateral: dict[str, str] | None = None, **quote_fields: object) -> list[str]:
    raw = CA.quote(**quote_fields)  # type: ignore[arg-type]
    verified = verify_quote(raw, collateral_from_json(collateral or CA.collateral()), at=AT,
                            root=CA.root)
    return tdx_problems(verified, WANT)


def test_test_ca_quote_meets_the_level() -> None:
    assert problems() == []


def test_a_revoked_pck_certificate_is_refused() -> None:
    raw = CA.quote()
    collateral = collateral_from_json({**CA.collateral(), "pck_crl": base64.b64encode(
        CA.pck_crl(revoked=(CA.last_pck,))).decode()})
    with pytest.raises(EvidenceError, match="tdx: pck revoked"):
        verify_quote(raw, collateral, at=AT, root=CA.root)
    fine = collateral_from_json({**CA.collateral(),
                                 "pck_crl": base64.b64encode(CA.pck_crl()).decode()})
    assert verify_quote(raw, fine, at=AT, root=CA.root)


@pytest.mark.parametrize(("fields", "problem"), [
    ({"mrtd": bytes(48)}, "MRTD 0000"),
    ({"rtmr1": b"\1" * 48}, "RTMR1 0101"),
    ({"td_attributes": 1}, "the TD is debuggable"),
])
def test_each_requirement_is_enforced(fields: dict[str, object], problem: str) -> None:
    found = problems(**fields)
    assert len(found) == 1, found
    assert problem in found[0]


def test_out_of_date_platform_is_refused_unless_accepted() -> None:
    stale = CA.collateral(tcb_status="OutOfDate")
    assert problems(stale) == ["platform TCB status OutOfDate is not accepted"]
    raw = CA.quote()
    verified = verify_quote(raw, collateral_from_json(stale), at=AT, root=CA.root)
    lenient = WANT.model_copy(update={"tcb_statuses": ["UpToDate", "OutOfDate"]})
    assert tdx_problems(verified, lenient) == []


def test_platform_below_every_level() -> None:
    assert problems(cpusvn=1) == ["platform TCB status TcbNotSupported is not accepted"]


def test_collateral_json_must_be_complete() -> None:
    partial = {k: v for k, v in CA.collateral().items() if k != "qe_identity"}
    with pytest.raises(EvidenceError, match="collateral needs"):
        collateral_from_json(partial)
    assert json.loads(CA.collateral()["tcb_info"])["tcbInfo"]["fmspc"] == "00906ed50000"


@pytest.mark.parametrize(("file", "at", "version"), [
    ("trustee_quote_4.dat", SPR_AT, 4),
    ("trustee_quote_5.dat", datetime(2024, 6, 1, tzinfo=UTC), 5),
    ("azure_td_quote.bin", datetime(2024, 6, 1, tzinfo=UTC), 4),
])
def test_more_genuine_quotes_verify_their_own_proofs(file: str, at: datetime,
                                                     version: int) -> None:
    """Quotes whose collateral was not published: chain, QE report and quote signatures."""
    raw = (DATA / file).read_bytes()
    assert verify_quote_signatures(raw, at=at).version == version
    tampered = bytearray(raw)
    tampered[200] ^= 0x01  # inside the TD report
    with pytest.raises(EvidenceError, match="quote signature does not verify"):
        verify_quote_signatures(bytes(tampered), at=at)


# TCB Info v3 tdxModuleIdentities: the TDX module judged on its own.

@pytest.mark.parametrize(("file", "at", "module", "platform", "status"), [
    # TEE_TCB_SVN 0b 01: TDX_01 at SVN 11, above its newest level (isvsvn 6).
    ("quote_v5_sample.dat", PCS_AT, ("TDX_01", "UpToDate"), "UpToDate", "UpToDate"),
    # 05 03: TDX_03 at SVN 5 (its only level is 3); the platform's own level is OutOfDate.
    ("trustee_quote_6.dat", datetime(2026, 1, 20, tzinfo=UTC), ("TDX_03", "UpToDate"),
     "OutOfDate", "OutOfDate"),
])
def test_genuine_quotes_are_matched_to_their_module_identity(
        file: str, at: datetime, module: tuple[str, str], platform: str, status: str) -> None:
    raw = (DATA / file).read_bytes()
    verified = verify_quote(raw, collateral_from_dir(DATA, parse_quote(raw)), at=at)
    assert (verified.module.identity, verified.module.tcb_status) == module
    assert (verified.platform_tcb_status, verified.tcb_status) == (platform, status)
    values = verified.values()
    assert (values["tdx_module"], values["tdx_module_tcb_status"]) == module


def test_a_major_version_0_module_is_checked_against_tdx_module() -> None:
    verified = verify_quote(spr_quote(), go_tdx_guest_collateral(), at=SPR_AT)  # 03 00 ...
    assert verified.module.identity == "tdxModule"
    assert verified.tcb_status == verified.platform_tcb_status == "TcbNotSupported"


def module_verdict(**collateral: object) -> VerifiedTdx:
    raw = CA.quote()  # TEE_TCB_SVN 01 01 ...: TDX_01 at SVN 1
    return verify_quote(raw, collateral_from_json(CA.collateral(**collateral)),  # type: ignore[arg-type]
                        at=AT, root=CA.root)


def test_an_out_of_date_module_makes_the_platform_out_of_date() -> None:
    verified = module_verdict(module_status="OutOfDate")
    assert (verified.platform_tcb_status, verified.tcb_status) == ("UpToDate", "OutOfDate")
    assert tdx_problems(verified, WANT) == [
        "TCB status OutOfDate is not accepted (platform UpToDate, TDX module TDX_01 OutOfDate)"]
    lenient = WANT.model_copy(update={"tcb_statuses": ["UpToDate", "OutOfDate"]})
    assert tdx_problems(verified, lenient) == []


def test_a_revoked_module_is_refused_by_a_level_that_takes_out_of_date() -> None:
    verified = module_verdict(module_status="Revoked")
    lenient = WANT.model_copy(update={"tcb_statuses": ["UpToDate", "OutOfDate"]})
    assert tdx_problems(verified, lenient) == [
        "TCB status Revoked is not accepted (platform UpToDate, TDX module TDX_01 Revoked)"]


@pytest.mark.parametrize(("platform", "module", "converged"), [
    ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
    ("OutOfDate", "UpToDate", "OutOfDate"),
    ("OutOfDate", "Revoked", "Revoked"),
])
def test_platform_and_module_statuses_converge_as_intel_qvl_does(platform: str, module: str,
                                                                 converged: str) -> None:
    verified = module_verdict(tcb_status=platform, module_status=module)
    assert (verified.platform_tcb_status, verified.module.tcb_status,
            verified.tcb_status) == (platform, module, converged)


def test_a_module_svn_below_every_module_level_is_not_supported() -> None:
    raw = CA.quote(tee_tcb_svn=bytes([0, 1] + [1] * 14))  # module SVN 0 < isvsvn 1
    verified = verify_quote(raw, collateral_from_json(CA.collateral()), at=AT, root=CA.root)
    assert verified.platform_tcb_status == "UpToDate"  # the module's bytes are not the platform's
    assert tdx_problems(verified, WANT) == [
        "TCB status TcbNotSupported is not accepted "
        "(platform UpToDate, TDX module TDX_01 TcbNotSupported)"]


def test_a_module_signed_by_another_key_is_refused() -> None:
    with pytest.raises(EvidenceError, match=r"TDX module's signer .* is not the one Intel "
                                            "lists for TDX_01"):
        module_verdict(module_mrsigner=b"\x01" * 48)


def test_a_module_version_intel_does_not_list_is_refused() -> None:
    with pytest.raises(EvidenceError, match=r"no TDX module identity TDX_01 .*major version 1"):
        module_verdict(module_ids=("TDX_03",))


def test_unexpected_seam_attributes_are_refused() -> None:
    raw = CA.quote(seam_attributes=b"\x01" + bytes(7))
    with pytest.raises(EvidenceError, match="SEAM attributes 0100000000000000 do not match "
                                            "Intel's TDX_01"):
        verify_quote(raw, collateral_from_json(CA.collateral()), at=AT, root=CA.root)


# TDX 1.5 relaunch (Intel QVL TDRelaunchCheck): TEE_TCB_SVN2 is the module the TD runs on now.

def go_tdx_guest_v5_tcb_info() -> dict[str, object]:
    """Intel's signed TCB Info for the v5 sample's platform (go-tdx-guest's testdata)."""
    tcb_info: dict[str, object] = json.loads(
        (DATA / "sample_tcbinfo_response_v5").read_text())["tcbInfo"]
    return tcb_info


def test_the_genuine_v5_quote_carries_tee_tcb_svn2_and_needs_no_relaunch() -> None:
    """The sample TD launched under TDX_01 SVN 11 and runs on SVN 13: the launch module is
    already above Intel's newest level (6), so the relaunch rule does not apply."""
    raw = (DATA / "quote_v5_sample.dat").read_bytes()
    collateral = replace(collateral_from_dir(DATA, parse_quote(raw)),  # its chain: today's
                         tcb_info=(DATA / "sample_tcbinfo_response_v5").read_text())
    verified = verify_quote(raw, collateral, at=PCS_AT)
    assert verified.quote.report.tee_tcb_svn2 == bytes([13, 1, 4]) + bytes(13)
    assert (verified.tcb_status, verified.relaunch_advised) == ("UpToDate", False)
    assert verified.values()["tee_tcb_svn2"] == "0d0104" + "00" * 13
    assert "tee_tcb_svn2" not in verify_quote(spr_quote(), go_tdx_guest_collateral(),
                                              at=SPR_AT).values()  # a v4 body has none


@pytest.mark.parametrize(("svn2", "sgx", "tdx", "status"), [
    (bytes([13, 1, 4]), "UpToDate", "OutOfDate", "TDRelaunchAdvised"),  # the sample's SVN2
    (bytes([6, 1, 3]), "ConfigurationNeeded", "OutOfDateConfigurationNeeded",
     "TDRelaunchAdvisedConfigurationNeeded"),
    (bytes([5, 1, 4]), "UpToDate", "OutOfDate", "OutOfDate"),  # below TDX_01's newest, 6
    (bytes([13, 1, 2]), "UpToDate", "OutOfDate", "OutOfDate"),  # below the newest level's 3
    (bytes([13, 1, 4]), "OutOfDate", "OutOfDate", "OutOfDate"),  # the SGX part is stale
])
def test_intels_relaunch_rule_against_its_genuine_tcb_info(svn2: bytes, sgx: str, tdx: str,
                                                          status: str) -> None:
    assert tdx_module._relaunch_status(go_tdx_guest_v5_tcb_info(), svn2 + bytes(13), sgx=sgx,
                                       tdx=tdx, module="OutOfDate", qe="UpToDate") == status


def test_the_rule_needs_an_out_of_date_launch_module_and_a_current_qe() -> None:
    svn2 = bytes([13, 1, 4]) + bytes(13)
    for module, qe in (("UpToDate", "UpToDate"), ("OutOfDate", "OutOfDate"),
                       ("OutOfDate", "Revoked")):
        assert tdx_module._relaunch_status(go_tdx_guest_v5_tcb_info(), svn2, sgx="UpToDate",
                                           tdx="OutOfDate", module=module, qe=qe) == "OutOfDate"


RELAUNCH_LEVELS = (("module_levels", ((3, "UpToDate"), (1, "OutOfDate"))),)


def relaunch_verdict(svn2: bytes | None, **collateral: object) -> VerifiedTdx:
    """A TD launched under TDX_01 SVN 1 (OutOfDate; Intel's newest is 3), running on `svn2`."""
    raw = CA.quote(tee_tcb_svn2=None if svn2 is None else svn2 + bytes(16 - len(svn2)))
    options = {**dict(RELAUNCH_LEVELS), **collateral}
    return verify_quote(raw, collateral_from_json(CA.collateral(**options)),  # type: ignore[arg-type]
                        at=AT, root=CA.root)


def test_a_td_on_a_current_module_is_advised_to_relaunch() -> None:
    verified = relaunch_verdict(bytes([3, 1, 1]))
    assert (verified.quote.version, verified.module.tcb_status) == (5, "OutOfDate")
    assert (verified.tcb_status, verified.relaunch_advised) == ("TDRelaunchAdvised", True)
    assert tdx_problems(verified, WANT) == [
        "TCB status TDRelaunchAdvised is not accepted (launched under TDX module TDX_01 "
        "OutOfDate, since updated: relaunch the TD)"]
    accepting = WANT.model_copy(update={"tcb_statuses": ["UpToDate", "TDRelaunchAdvised"]})
    assert tdx_problems(verified, accepting) == []
    configured = relaunch_verdict(bytes([3, 1, 1]), tcb_status="ConfigurationNeeded")
    assert configured.tcb_status == "TDRelaunchAdvisedConfigurationNeeded"


@pytest.mark.parametrize("svn2", [
    bytes([2, 1, 1]),  # the running module is below Intel's newest SVN (3) too
    bytes([3, 1, 0]),  # TEE_TCB_SVN2[2] below the newest TCB level's TDX component 2
    None,  # a v4 quote (TD report 1.0): nothing says what runs now
])
def test_a_td_whose_running_module_is_out_of_date_stays_out_of_date(svn2: bytes | None) -> None:
    verified = relaunch_verdict(svn2)
    assert (verified.tcb_status, verified.relaunch_advised) == ("OutOfDate", False)
    assert tdx_problems(verified, WANT) == [
        "TCB status OutOfDate is not accepted (platform UpToDate, TDX module TDX_01 OutOfDate)"]


def test_a_running_module_intel_does_not_list_is_refused() -> None:
    with pytest.raises(EvidenceError, match=r"no TDX module identity TDX_05 for the module the "
                                            r"TD runs on now \(TEE_TCB_SVN2\)"):
        relaunch_verdict(bytes([3, 5, 1]))


def test_attest_verify_shows_the_relaunch_status(tmp_path: Path) -> None:
    """`veil attest verify` on such a quote: the status and both SVN arrays are printed."""
    quote = tmp_path / "quote.dat"
    quote.write_bytes(CA.quote(tee_tcb_svn2=bytes([3, 1, 1]) + bytes(13)))
    collateral = CA.write_collateral(tmp_path / "collateral", **dict(RELAUNCH_LEVELS))
    roots = Roots(amd={}, intel=CA.root, nvidia=CA.root)
    level = TrustLevel.model_validate({"tdx": {"mrtd": [MRTD.hex()]}})
    outcome = verify_evidence_file(quote, vcek=None, collateral=collateral, chain=None, at=AT,
                                   wanted=Wanted("td", level), roots=roots)
    lines = outcome.lines()
    assert "  tcb_status: TDRelaunchAdvised" in lines
    assert f"  tee_tcb_svn2: 030101{'00' * 13}" in lines
    assert outcome.reasons == [
        "TCB status TDRelaunchAdvised is not accepted (launched under TDX module TDX_01 "
        "OutOfDate, since updated: relaunch the TD)"]
