"""Launch measurements from signed releases: a bundle from a private Sigstore (tests/
sigstore_instance.py) goes through the real `sigstore` verifier, offline, and only then do its
measurements join a trust level; every tampering refuses it, and a policy naming a bundle that
does not verify does not load."""

from __future__ import annotations

import base64
import datetime
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from sigstore.errors import VerificationError
from sigstore.models import Bundle
from sigstore.verify import Verifier

from gateway.attestation.evidence import Evidence
from gateway.attestation.levels import TrustLevel, level_snp_problems, level_tdx_problems
from gateway.attestation.offline import Wanted, verify_evidence_file
from gateway.attestation.releases import (
    HARDWARE,
    Measurement,
    ReleaseSource,
    WorkflowIdentity,
    trusted_root,
    verify_release,
)
from gateway.attestation.snp import Tcb, verify_report
from gateway.attestation.tdx import VerifiedTdx, collateral_from_json, verify_quote
from gateway.attestation.verdicts import releases_behind
from gateway.cli import main
from gateway.errors import ConfigError, EvidenceError
from gateway.policy.loader import load_policy
from tests.attestation_ca import MEASUREMENT, MRTD, Vendors, snp_report
from tests.sigstore_instance import PrivateSigstore, Workflow, multiplatform_statement
from tests.unit.attestation.test_verifier import LEVEL, POLICY, document, world
from tests.unit.test_startup_progress import events

ROOT = Path(__file__).parents[3]
DATA = ROOT / "tests" / "data" / "attestation"
REPORT, VCEK = DATA / "virtee_milan_report.bin", DATA / "virtee_milan_vcek.der"
SNP = "5e" * 48  # only the bundle carries it
RTMR1, RTMR2 = "11" * 48, "22" * 48
RELEASE = "release veil-test/confidential-model@v1.4.2 (log index 41000006)"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline means offline: any connection attempt (TUF, Rekor) fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("release verification tried the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def sigstore() -> PrivateSigstore:
    return PrivateSigstore()


def write(directory: Path, bundle: dict[str, Any], sigstore: PrivateSigstore) -> Path:
    (directory / "trusted_root.json").write_text(json.dumps(sigstore.trusted_root()))
    path = directory / "release.sigstore.json"
    path.write_text(json.dumps(bundle))
    return path


def source(**overrides: str) -> ReleaseSource:
    wanted = {"bundle": "release.sigstore.json", "repository": Workflow().repository,
              "workflow": Workflow().path, "trusted_root": "trusted_root.json", **overrides}
    return ReleaseSource.model_validate(wanted)


def good(sigstore: PrivateSigstore, snp: str = SNP) -> dict[str, Any]:
    return sigstore.bundle(multiplatform_statement(snp, RTMR1, RTMR2))


def test_a_release_bundle_verifies_offline_and_says_where_it_came_from(
        sigstore: PrivateSigstore, tmp_path: Path) -> None:
    path = write(tmp_path, good(sigstore), sigstore)
    release = verify_release(source(), tmp_path)
    assert release.measurements == (Measurement("sev-snp", (("snp", SNP),)),
                                    Measurement("tdx", (("rtmr1", RTMR1), ("rtmr2", RTMR2))))
    assert release.label == RELEASE
    assert (release.ref, release.commit) == ("refs/tags/v1.4.2", "a" * 40)
    assert release.integrated_time == int(datetime.datetime(
        2026, 3, 1, 12, tzinfo=datetime.UTC).timestamp())
    assert release.bundle_sha256.startswith("sha256:")
    assert release.bundle == str(path)


def _payload(bundle: dict[str, Any], snp: str) -> None:
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["snp_measurement"] = snp
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


def _flip(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def _signature(bundle: dict[str, Any]) -> None:
    signature = bundle["dsseEnvelope"]["signatures"][0]
    signature["sig"] = _flip(signature["sig"])


def _proof(bundle: dict[str, Any]) -> None:
    proof = bundle["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    proof["hashes"][0] = _flip(proof["hashes"][0])


def _checkpoint(bundle: dict[str, Any]) -> None:
    """A proof and checkpoint for another tree: the root is not the one the log signed."""
    proof = bundle["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    proof["rootHash"] = _flip(proof["rootHash"])


def _promise(bundle: dict[str, Any]) -> None:
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    entry["integratedTime"] = str(int(entry["integratedTime"]) + 60)


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda b: _payload(b, "66" * 48), "DSSE: invalid signature"),
    (_signature, "DSSE: invalid signature"),
    (_proof, "inclusion proof contains invalid root hash"),
    (_checkpoint, "invalid root hash"),
    (_promise, "SET: invalid inclusion promise"),
], ids=["payload", "signature", "inclusion-proof", "checkpoint-root", "inclusion-promise"])
def test_a_tampered_bundle_is_refused(sigstore: PrivateSigstore, tmp_path: Path, tamper: Any,
                                      reason: str) -> None:
    bundle = good(sigstore)
    tamper(bundle)
    write(tmp_path, bundle, sigstore)
    with pytest.raises(EvidenceError, match=r"release\.sigstore\.json: does not verify") as caught:
        verify_release(source(), tmp_path)
    assert reason in str(caught.value)


@pytest.mark.parametrize("signer", [
    Workflow(path=".github/workflows/debug.yml"),
    Workflow(repository="someone-else/confidential-model"),
    Workflow(ref="refs/heads/main"),
    Workflow(issuer="https://gitlab.example/oidc"),
], ids=["workflow", "repository", "branch-not-tag", "issuer"])
def test_a_bundle_signed_by_another_identity_is_refused(sigstore: PrivateSigstore, tmp_path: Path,
                                                        signer: Workflow) -> None:
    write(tmp_path, sigstore.bundle(multiplatform_statement(SNP, RTMR1, RTMR2), signer),
          sigstore)
    with pytest.raises(EvidenceError, match="does not verify"):
        verify_release(source(), tmp_path)


def test_a_ref_pattern_narrows_which_tags_count(sigstore: PrivateSigstore, tmp_path: Path) -> None:
    write(tmp_path, good(sigstore), sigstore)
    assert verify_release(source(ref=r"refs/tags/v1\.4\..*"), tmp_path).ref.endswith("v1.4.2")
    with pytest.raises(EvidenceError, match=r"not by https://github.com/.*<ref matching"):
        verify_release(source(ref=r"refs/tags/v2\..*"), tmp_path)


def test_an_untrusted_root_refuses_even_a_well_formed_bundle(sigstore: PrivateSigstore,
                                                             tmp_path: Path) -> None:
    write(tmp_path, PrivateSigstore(name="impostor").bundle(
        multiplatform_statement(SNP, RTMR1, RTMR2)), sigstore)
    with pytest.raises(EvidenceError, match="does not verify"):
        verify_release(source(), tmp_path)


def test_the_default_root_is_sigstore_public_good_shipped_offline(sigstore: PrivateSigstore,
                                                                  tmp_path: Path) -> None:
    """No trusted_root: the public-good root inside the sigstore package, read from disk (the
    network is refused here), which does not trust the test instance."""
    write(tmp_path, good(sigstore), sigstore)
    with pytest.raises(EvidenceError, match="failed to build timestamp certificate chain"):
        verify_release(source(trusted_root=None), tmp_path)  # type: ignore[arg-type]


def test_the_statement_must_be_the_predicate_asked_for(sigstore: PrivateSigstore,
                                                       tmp_path: Path) -> None:
    write(tmp_path, good(sigstore), sigstore)
    with pytest.raises(EvidenceError, match=r"predicate type .* is not"):
        verify_release(source(predicate_type=HARDWARE), tmp_path)
    statement = multiplatform_statement("not hex", RTMR1, RTMR2)
    write(tmp_path, sigstore.bundle(statement), sigstore)
    with pytest.raises(EvidenceError, match="snp_measurement is not a 48-byte hex measurement"):
        verify_release(source(), tmp_path)


def test_hardware_measurements_give_mrtd_and_rtmr0(sigstore: PrivateSigstore,
                                                   tmp_path: Path) -> None:
    statement = {"_type": "https://in-toto.io/Statement/v1", "subject": [],
                 "predicateType": HARDWARE,
                 "predicate": {"genoa-h100": {"mrtd": "AB" * 48, "rtmr0": "cd" * 48}}}
    write(tmp_path, sigstore.bundle(statement), sigstore)
    release = verify_release(source(predicate_type=HARDWARE), tmp_path)
    assert release.measurements == (
        Measurement("tdx", (("mrtd", "ab" * 48), ("rtmr0", "cd" * 48)), "genoa-h100"),)
    level = TrustLevel.model_validate({"tdx": {}, "measurements_from": [
        source(predicate_type=HARDWARE).model_dump()]}).with_releases([release])
    assert level.releases == (release,)
    assert level.release_labels("tdx", {"mrtd": "ab" * 48, "rtmr0": "cd" * 48}) == [
        f"{RELEASE}, platform genoa-h100"]


def test_a_level_without_measurements_needs_measurements_from() -> None:
    with pytest.raises(ValueError, match="sev-snp needs measurements"):
        TrustLevel.model_validate({"sev-snp": {}})
    with pytest.raises(ValueError, match="tdx needs mrtd"):
        TrustLevel.model_validate({"tdx": {}})


# -- through the policy ------------------------------------------------------------------------

def policy(directory: Path, snp: dict[str, Any] | None = None) -> Path:
    path = directory / "policy.yaml"
    entry = source().model_dump(exclude_none=True)
    path.write_text(json.dumps({"version": 1, "name": "releases", "trust_levels": {
        "released-cpu": {"sev-snp": snp or {}, "measurements_from": [entry]}}}))
    return path


def test_a_policy_takes_measurements_from_the_release(sigstore: PrivateSigstore,
                                                      tmp_path: Path) -> None:
    """An SNP report from the test AMD, measured as only the bundle says, meets the level; one
    measured otherwise does not, and the release is named for the one that does."""
    write(tmp_path, good(sigstore), sigstore)
    level = load_policy(policy(tmp_path)).policy.trust_levels["released-cpu"]
    assert level.sev_snp is not None
    assert level.sev_snp.measurements == []  # the release decides, not a copied list
    vendors = Vendors()
    tcb = Tcb(bootloader=3, tee=0, snp=8, microcode=115)
    key, vcek = vendors.amd.vcek(tcb)
    at = datetime.datetime(2026, 3, 2, tzinfo=datetime.UTC)
    released = verify_report(snp_report(key, measurement=bytes.fromhex(SNP)), vcek, at=at,
                             roots=vendors.amd.roots)
    other = verify_report(snp_report(key), vcek, at=at, roots=vendors.amd.roots)
    assert level_snp_problems(released, level) == []
    assert level_snp_problems(other, level) == [
        f"no one signed release measures SNP {other.report.measurement.hex()[:16]}... as a whole"]
    assert level.release_labels("sev-snp", {"snp": SNP}) == [RELEASE]

    report, cert = tmp_path / "report.bin", tmp_path / "vcek.der"
    report.write_bytes(snp_report(key, measurement=bytes.fromhex(SNP)))
    cert.write_bytes(vcek)
    outcome = verify_evidence_file(report, vcek=cert, collateral=None, chain=None, at=at,
                                   wanted=Wanted("released-cpu", level), roots=vendors.roots())
    assert outcome.ok
    assert outcome.values["measurement_from"] == RELEASE


def test_a_hand_kept_list_narrows_what_the_releases_allow(sigstore: PrivateSigstore,
                                                          tmp_path: Path) -> None:
    """Beside measurements_from a hand-kept value still constrains: a measurement must be both
    listed and signed, and a list no release can satisfy makes the level invalid."""
    write(tmp_path, good(sigstore), sigstore)
    with pytest.raises(ConfigError, match="the hand-kept lists allow no measurement of the "
                                          "snp-tdx-multiplatform releases"):
        load_policy(policy(tmp_path, {"measurements": ["77" * 48]}))
    level = load_policy(policy(tmp_path, {"measurements": [SNP, "77" * 48]})).policy \
        .trust_levels["released-cpu"]
    assert level.release_problems("sev-snp", {"snp": SNP}) == []
    assert level.release_problems("sev-snp", {"snp": "77" * 48}) == [
        "no one signed release measures SNP 7777777777777777... as a whole"]


def test_a_policy_naming_a_bundle_that_does_not_verify_does_not_load(
        sigstore: PrivateSigstore, tmp_path: Path) -> None:
    bundle = good(sigstore)
    _payload(bundle, "66" * 48)
    write(tmp_path, bundle, sigstore)
    with pytest.raises(ConfigError) as caught:
        load_policy(policy(tmp_path))
    message = str(caught.value)
    assert "trust_levels.released-cpu.measurements_from[0]" in message or \
        "trust_levels.released-cpu.measurements_from.0" in message
    assert f"{tmp_path / 'release.sigstore.json'}: does not verify" in message
    (tmp_path / "release.sigstore.json").unlink()
    with pytest.raises(ConfigError, match="cannot read the bundle"):
        load_policy(policy(tmp_path))


def test_a_policy_reload_verifies_the_bundle_again(sigstore: PrivateSigstore,
                                                   tmp_path: Path) -> None:
    """A new release replaces the measurement; a bundle replaced by a forged one stops the
    reload (what is loaded is what verified)."""
    path = policy(tmp_path)
    write(tmp_path, good(sigstore), sigstore)
    first = load_policy(path)
    assert first.policy.trust_levels["released-cpu"].release_labels("sev-snp", {"snp": SNP})
    write(tmp_path, good(sigstore, snp="99" * 48), sigstore)
    loaded = load_policy(path)
    level = loaded.policy.trust_levels["released-cpu"]
    assert level.release_labels("sev-snp", {"snp": "99" * 48}) == [RELEASE]
    assert level.release_labels("sev-snp", {"snp": SNP}) == []
    assert loaded.digest != first.digest  # decisions say which release was in force
    forged = good(sigstore)
    _signature(forged)
    write(tmp_path, forged, sigstore)
    with pytest.raises(ConfigError, match="does not verify"):
        load_policy(path)


def test_attest_verify_names_the_release(sigstore: PrivateSigstore, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`veil attest verify` on genuine SEV-SNP evidence (tests/data), whose measurement the
    policy lists nowhere but a signed release carries."""
    measured = verify_report(REPORT.read_bytes(), VCEK.read_bytes(),
                             at=datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC))
    write(tmp_path, good(sigstore, snp=measured.report.measurement.hex()), sigstore)
    code = main(["attest", "verify", str(REPORT), "--vcek", str(VCEK), "--at",
                 "2024-06-01T00:00:00Z", "--policy", str(policy(tmp_path)), "--level",
                 "released-cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"  measurement_from: {RELEASE}" in out.splitlines()
    assert "  trust_level: released-cpu: met" in out.splitlines()


async def test_a_verdict_resting_on_a_release_names_it_in_the_log(
        sigstore: PrivateSigstore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The attestation service: a machine measured as only the release says meets the level
    built from the bundle, and the `attested` line says which release vouched for it."""
    write(tmp_path, good(sigstore, snp=MEASUREMENT.hex()), sigstore)
    level = load_policy(policy(tmp_path)).policy.trust_levels["released-cpu"]
    async with world(document(), {"sev-snp": {"measurements": ["00" * 48]}}) as w:
        await w.attested()
        assert not w.meets()
        w.levels[0] = (POLICY, LEVEL, level)
        w.service.policies_changed()
        await w.attested(2)
        assert w.meets()
    attested = [line for line in events(capsys.readouterr().err) if line["event"] == "attested"]
    assert attested[-1]["releases"] == [RELEASE]
    assert "releases" not in attested[0]


def test_a_genuine_public_good_bundle_meets_the_workflow_identity_offline() -> None:
    """A real GitHub Actions release signature (sigstore-python's test assets, tests/data/
    sigstore/README.md) against the public-good root shipped in the package: the identity
    policy reads genuine Fulcio certificates as it reads the private instance's."""
    data = ROOT / "tests" / "data" / "sigstore"
    bundle = Bundle.from_json((data / "bundle_v3_github.whl.sigstore").read_bytes())
    artifact = (data / "bundle_v3_github.whl").read_bytes()
    verifier = Verifier(trusted_root=trusted_root(None, data))
    rfc8785 = {"bundle": "bundle_v3_github.whl.sigstore", "repository": "trailofbits/rfc8785.py",
               "workflow": ".github/workflows/release.yml"}
    verifier.verify_artifact(artifact, bundle, WorkflowIdentity(
        ReleaseSource.model_validate(rfc8785)))
    for other in ({"repository": "trailofbits/rfc8785-fork"}, {"ref": r"refs/tags/v2\..*"},
                  {"workflow": ".github/workflows/ci.yml"},
                  {"issuer": "https://accounts.google.com"}):
        with pytest.raises(VerificationError):
            verifier.verify_artifact(artifact, bundle, WorkflowIdentity(
                ReleaseSource.model_validate({**rfc8785, **other})))


def test_a_trusted_root_that_does_not_parse_is_refused(sigstore: PrivateSigstore,
                                                       tmp_path: Path) -> None:
    write(tmp_path, good(sigstore), sigstore)
    (tmp_path / "trusted_root.json").write_text('{"mediaType": "text/plain"}')
    with pytest.raises(EvidenceError, match="not a usable Sigstore trusted root"):
        verify_release(source(), tmp_path)


def test_a_changed_shipped_root_is_refused(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """The default root is trusted only as sigstore 4.5.1 ships it: someone who can write to
    site-packages must not be able to swap in a root of their own."""
    from gateway.attestation import releases  # noqa: PLC0415

    monkeypatch.setattr(releases, "PUBLIC_GOOD_ROOT_SHA256", "0" * 64)
    with pytest.raises(EvidenceError, match=r"expected 0{64}"):
        releases.trusted_root(None, tmp_path)


# -- one release as a whole (TDX) ----------------------------------------------------------

A1, A2, B1, B2 = "a1" * 48, "a2" * 48, "b1" * 48, "b2" * 48
RELEASE_A = "release veil-test/confidential-model@v1.0.0 (log index 41000006)"
RELEASE_B = "release veil-test/confidential-model@v2.0.0 (log index 41000006)"
TDX_AT = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def tdx_level(sigstore: PrivateSigstore, directory: Path,
              hardware: dict[str, dict[str, str]] | None = None,
              tdx: dict[str, Any] | None = None) -> TrustLevel:
    """A TDX level resting on two multiplatform releases (v1.0.0: RTMR1 A1, RTMR2 A2; v2.0.0:
    B1, B2) and, given `hardware`, a hardware-measurements release with those platforms."""
    (directory / "trusted_root.json").write_text(json.dumps(sigstore.trusted_root()))
    releases = {"a": ("v1.0.0", multiplatform_statement(SNP, A1, A2)),
                "b": ("v2.0.0", multiplatform_statement(SNP, B1, B2))}
    if hardware is not None:
        releases["hw"] = ("v0.9.0", {"_type": "https://in-toto.io/Statement/v1", "subject": [],
                                     "predicateType": HARDWARE, "predicate": hardware})
    for name, (tag, statement) in releases.items():
        (directory / f"{name}.sigstore.json").write_text(json.dumps(sigstore.bundle(
            statement, Workflow(ref=f"refs/tags/{tag}"))))
    path = directory / "policy.yaml"
    entries = [source(bundle=f"{name}.sigstore.json",
                      **({"predicate_type": HARDWARE} if name == "hw" else {}))
               .model_dump(exclude_none=True) for name in releases]
    wanted = tdx if tdx is not None else {} if hardware else {"mrtd": [MRTD.hex()]}
    path.write_text(yaml.safe_dump({"version": 1, "name": "releases", "trust_levels": {
        "released-td": {"tdx": wanted, "measurements_from": entries}}}))  # RTMR keys: ints
    return load_policy(path).policy.trust_levels["released-td"]


def td(vendors: Vendors, mrtd: bytes = MRTD, **rtmrs: str) -> VerifiedTdx:
    raw = vendors.intel.quote(mrtd=mrtd, rtmrs={int(k[-1]): bytes.fromhex(v)
                                                for k, v in rtmrs.items()})
    return verify_quote(raw, collateral_from_json(vendors.intel.collateral()), at=TDX_AT,
                        root=vendors.intel.root)


def named(verified: VerifiedTdx, level: TrustLevel) -> list[str]:
    """The releases the gateway's `attested` line names for this quote meeting the level."""
    evidence = Evidence(snp=None, tdx=verified, gpus=(), tokens=(), expected_nonce="",
                        certificate_sha256=b"", verified_at=0.0, digest="")
    return releases_behind(evidence, [("p", "released-td", level)],
                           {("p", "released-td"): 1.0})


def test_registers_from_two_releases_never_combine(sigstore: PrivateSigstore,
                                                   tmp_path: Path) -> None:
    """v1.0.0's RTMR1 with v2.0.0's RTMR2 is a machine no release built: refused, though each
    register alone is some release's; each release's own quote meets the level, named."""
    level = tdx_level(sigstore, tmp_path)
    vendors = Vendors()
    mixed = td(vendors, rtmr1=A1, rtmr2=B2)
    assert level_tdx_problems(mixed, level) == [
        f"no one signed release measures RTMR1 {A1[:16]}..., RTMR2 {B2[:16]}... as a whole"]
    for rtmr1, rtmr2, release in ((A1, A2, RELEASE_A), (B1, B2, RELEASE_B)):
        own = td(vendors, rtmr1=rtmr1, rtmr2=rtmr2)
        assert level_tdx_problems(own, level) == []
        assert named(own, level) == [release]
    assert named(mixed, level) == []
    assert level_tdx_problems(td(vendors, mrtd=bytes(48), rtmr1=A1, rtmr2=A2), level) == [
        f"MRTD {'00' * 48} is not allowed"]  # the hand-kept MRTD still constrains


def test_a_hardware_platform_counts_whole_and_beside_the_code_release(
        sigstore: PrivateSigstore, tmp_path: Path) -> None:
    """MRTD and RTMR0 must be one platform's; the code (RTMR1, RTMR2) one multiplatform
    release's: two requirements, each met by one release, and the verdict names both."""
    p, q = {"mrtd": MRTD.hex(), "rtmr0": "c0" * 48}, {"mrtd": "d0" * 48, "rtmr0": "d1" * 48}
    level = tdx_level(sigstore, tmp_path, hardware={"platform-p": p, "platform-q": q})
    vendors = Vendors()
    whole = td(vendors, rtmr0=p["rtmr0"], rtmr1=B1, rtmr2=B2)
    assert level_tdx_problems(whole, level) == []
    hardware = "release veil-test/confidential-model@v0.9.0 (log index 41000006), platform " \
        "platform-p"
    assert named(whole, level) == sorted([RELEASE_B, hardware])
    crossed = td(vendors, rtmr0=q["rtmr0"], rtmr1=B1, rtmr2=B2)  # P's MRTD, Q's RTMR0
    assert level_tdx_problems(crossed, level) == [
        f"no one signed release measures MRTD {MRTD.hex()[:16]}..., RTMR0 {'d1' * 8}..., "
        f"RTMR1 {B1[:16]}..., RTMR2 {B2[:16]}... as a whole"]
    no_code = td(vendors, rtmr0=p["rtmr0"], rtmr1=A1, rtmr2=B2)
    assert level_tdx_problems(no_code, level) != []


def test_hand_kept_rtmrs_no_release_satisfies_make_the_level_invalid(
        sigstore: PrivateSigstore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the hand-kept lists allow no measurement"):
        tdx_level(sigstore, tmp_path, tdx={"mrtd": [MRTD.hex()], "rtmr": {1: [A1], 2: [B2]}})
    narrowed = tdx_level(sigstore, tmp_path, tdx={"mrtd": [MRTD.hex()], "rtmr": {1: [A1]}})
    vendors = Vendors()
    assert level_tdx_problems(td(vendors, rtmr1=A1, rtmr2=A2), narrowed) == []
    assert level_tdx_problems(td(vendors, rtmr1=B1, rtmr2=B2), narrowed) == [
        f"RTMR1 {B1} is not allowed"]


def test_a_level_never_given_its_releases_meets_nothing() -> None:
    """measurements_from that was never verified (a level built without the loader) is not
    an open level."""
    level = TrustLevel.model_validate({"tdx": {}, "measurements_from": [source().model_dump()]})
    assert level.release_problems("tdx", {"mrtd": "00" * 48}) == [
        "measurements_from was not verified"]
    assert level.release_labels("tdx", {"mrtd": "00" * 48}) == []


def test_attest_verify_names_the_one_tdx_release(sigstore: PrivateSigstore,
                                                 tmp_path: Path) -> None:
    """`veil attest verify` on a quote from the test Intel: the release matched is named; a
    mixed quote is refused with the reason."""
    level = tdx_level(sigstore, tmp_path)
    vendors = Vendors()
    collateral = vendors.intel.write_collateral(tmp_path / "collateral")
    for rtmr2, ok in ((A2, True), (B2, False)):
        quote = tmp_path / "quote.dat"
        quote.write_bytes(vendors.intel.quote(rtmrs={1: bytes.fromhex(A1),
                                                     2: bytes.fromhex(rtmr2)}))
        outcome = verify_evidence_file(quote, vcek=None, collateral=collateral, chain=None,
                                       at=TDX_AT, wanted=Wanted("released-td", level),
                                       roots=vendors.roots())
        assert outcome.ok is ok, outcome.lines()
        if ok:
            assert outcome.values["measurement_from"] == RELEASE_A
            assert "  trust_level: released-td: met" in outcome.lines()
        else:
            assert "measurement_from" not in outcome.values
            assert outcome.reasons == [f"no one signed release measures RTMR1 {A1[:16]}..., "
                                       f"RTMR2 {B2[:16]}... as a whole"]

