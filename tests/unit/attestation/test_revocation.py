"""Revoked keys are refused: the test AMD's ARK issues CRLs (a revoked VCEK, ASK, VLEK; a stale
CRL; one signed by another key) and the test NVIDIA's root answers OCSP (revoked, signed by
another key, delegated, stale, unknown), through the evidence verifier as attestation uses it.
The collateral store fetches both through the transport and keeps them until their nextUpdate."""

from __future__ import annotations

import base64
import datetime
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from gateway.attestation.collateral import CollateralStore
from gateway.attestation.evidence import Evidence, EvidenceVerifier, Fetched
from gateway.attestation.levels import TrustLevel
from gateway.attestation.nvidia import GpuEvidence, VerifiedGpu
from gateway.attestation.revocation import check_ocsp
from gateway.attestation.snp import SnpReport
from gateway.attestation.tdx import Collateral, TdxQuote
from gateway.attestation.transport import Response
from gateway.attestation.verdicts import level_met
from gateway.errors import EvidenceError
from gateway.settings import AttestationSettings
from tests.attestation_ca import (
    CRL_NEXT_UPDATE,
    OCSP_URL,
    SnpTestCa,
    Vendors,
    _rsa_key,
    snp_report,
)

VENDORS = Vendors()
AT = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
BOUND = bytes(range(64))


@dataclass
class Issued:
    """What the collateral source answers: CRLs per chain kind, OCSP responses by responder."""

    crls: dict[str, bytes] = field(default_factory=dict)
    ocsp_responses: list[bytes] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    async def vcek(self, report: SnpReport) -> bytes:
        raise EvidenceError("sev-snp: the evidence has no VCEK")

    async def tdx(self, quote: TdxQuote) -> Collateral:
        raise EvidenceError("tdx: no collateral")

    async def amd_crl(self, product: str, kind: str) -> bytes:
        self.asked.append(f"crl {product} {kind}")
        if kind not in self.crls:
            raise EvidenceError(f"sev-snp: no CRL for the {product} {kind.upper()} chain")
        return self.crls[kind]

    async def ocsp(self, cert: x509.Certificate, issuer: x509.Certificate,
                   responder: str) -> bytes:
        self.asked.append(f"ocsp {responder}")
        if not self.ocsp_responses:
            raise EvidenceError(f"nvidia-gpu: {responder} unreachable")
        return self.ocsp_responses.pop(0)


async def verify(document: Mapping[str, Any], issued: Issued) -> Evidence:
    verifier = EvidenceVerifier(VENDORS.roots(), issued, AT.timestamp)
    return await verifier.verify(Fetched(orjson.dumps(document), BOUND, bytes(32)))


def snp(**crls: bytes) -> tuple[dict[str, Any], Issued]:
    return VENDORS.evidence(BOUND), Issued(crls={"vcek": VENDORS.amd.crl(), **crls})


# -- AMD: the ARK's CRL -----------------------------------------------------------------------

async def test_a_good_snp_chain_is_accepted_until_the_crls_next_update() -> None:
    document, issued = snp()
    evidence = await verify(document, issued)
    assert evidence.revocation_until == CRL_NEXT_UPDATE.timestamp()
    assert evidence.not_after() == min(CRL_NEXT_UPDATE.timestamp(),
                                       evidence.snp.not_after.timestamp()
                                       if evidence.snp else 0)
    assert issued.asked == ["crl Milan vcek"]


SNP_REFUSALS = {
    "revoked vcek": (lambda: VENDORS.amd.crl(revoked=(VENDORS.vcek,)), "sev-snp: vcek revoked"),
    "revoked ask": (lambda: VENDORS.amd.crl(revoked=(VENDORS.amd.ask,)), "sev-snp: ask revoked"),
    "stale crl": (lambda: VENDORS.amd.crl(next_update=AT - datetime.timedelta(seconds=1)),
                  "sev-snp: CRL of 'ARK-Milan' is stale"),
    "crl signed by another key": (lambda: VENDORS.amd.crl(signer=_rsa_key()),
                                  "sev-snp: CRL is not signed by 'ARK-Milan'"),
    "another product's ark": (lambda: SnpTestCa().crl(), "sev-snp: CRL is not signed by"),
    "not a crl": (lambda: b"<html>", "sev-snp: the CRL of 'ARK-Milan' does not parse"),
}


@pytest.mark.parametrize("case", sorted(SNP_REFUSALS))
async def test_snp_evidence_is_refused_by_the_crl(case: str) -> None:
    crl, reason = SNP_REFUSALS[case]
    document, issued = snp(vcek=crl())
    with pytest.raises(EvidenceError, match=reason):
        await verify(document, issued)


async def test_no_crl_at_all_refuses_the_evidence() -> None:
    document, _ = snp()
    with pytest.raises(EvidenceError, match="sev-snp: no CRL for the Milan VCEK chain"):
        await verify(document, Issued())


async def test_a_vlek_is_checked_against_the_vlek_chains_crl() -> None:
    key, vlek = VENDORS.amd.vlek(VENDORS.tcb)
    report = snp_report(key, report_data=BOUND, tcb=VENDORS.tcb, signing_key=1)
    document = {"evidence": [{"format": "sev-snp", "report": base64.b64encode(report).decode(),
                              "vcek": base64.b64encode(vlek).decode()}]}
    assert (await verify(document, Issued(crls={"vlek": VENDORS.amd.crl("vlek")}))).snp
    for revoked, reason in ((vlek, "sev-snp: vlek revoked"),
                            (VENDORS.amd.asvk, "sev-snp: asvk revoked")):
        with pytest.raises(EvidenceError, match=reason):
            await verify(document, Issued(crls={"vlek": VENDORS.amd.crl(revoked=(revoked,))}))


# -- NVIDIA: OCSP about the GPU's certificates ------------------------------------------------

def gpu(**options: Any) -> dict[str, Any]:
    return VENDORS.evidence(BOUND, gpu=True, **options)


async def test_a_good_stapled_ocsp_response_is_accepted() -> None:
    issued = Issued(crls={"vcek": VENDORS.amd.crl()})
    evidence = await verify(gpu(), issued)
    assert len(evidence.gpus) == 1
    assert "ocsp " + OCSP_URL not in issued.asked  # stapled: the responder is not asked


async def test_a_response_from_a_delegated_responder_is_accepted() -> None:
    issued = Issued(crls={"vcek": VENDORS.amd.crl()})
    assert (await verify(gpu(ocsp=VENDORS.nvidia.ocsp(delegated=True)), issued)).gpus


async def test_without_a_stapled_response_the_responder_is_asked() -> None:
    issued = Issued(crls={"vcek": VENDORS.amd.crl()}, ocsp_responses=[VENDORS.nvidia.ocsp()])
    assert (await verify(gpu(stapled=False), issued)).gpus
    assert issued.asked[-1] == "ocsp " + OCSP_URL
    with pytest.raises(EvidenceError, match="unreachable"):  # unobtainable: fail closed
        await verify(gpu(stapled=False), Issued(crls={"vcek": VENDORS.amd.crl()}))


OCSP_REFUSALS = {
    "revoked": (lambda: VENDORS.nvidia.ocsp(status="revoked"),
                r"nvidia-gpu: GPU 0 \(certificate serial [0-9a-f]+\): certificate "
                r"'Test GH100 attestation key' is revoked "
                r"\(key_compromise\)"),
    "signed by another key": (
        lambda: VENDORS.nvidia.ocsp(signer=ec.generate_private_key(ec.SECP384R1())),
        "is not signed by 'Test NVIDIA Device Identity CA' or a responder it certified"),
    "unknown": (lambda: VENDORS.nvidia.ocsp(status="unknown"), "OCSP status .* is unknown"),
    "stale": (lambda: VENDORS.nvidia.ocsp(next_update=AT - datetime.timedelta(seconds=1)),
              "is not current"),
    "no next update": (lambda: VENDORS.nvidia.ocsp(next_update=None), "is not current"),
    "from the future": (lambda: VENDORS.nvidia.ocsp(this_update=AT + datetime.timedelta(1),
                                                    next_update=CRL_NEXT_UPDATE),
                        "is not current"),
    "about another certificate": (
        lambda: VENDORS.nvidia.ocsp(cert=VENDORS.amd.ask), "is not about"),
}


@pytest.mark.parametrize("case", sorted(OCSP_REFUSALS))
async def test_gpu_evidence_is_refused_by_ocsp(case: str) -> None:
    """The responder's answer, checked: any of these refuses the evidence."""
    response, reason = OCSP_REFUSALS[case]
    with pytest.raises(EvidenceError, match=reason):
        await verify(gpu(stapled=False), Issued(crls={"vcek": VENDORS.amd.crl()},
                                                ocsp_responses=[response()]))


@pytest.mark.parametrize("case", ["revoked", "signed by another key", "unknown"])
async def test_a_current_stapled_response_that_fails_refuses(case: str) -> None:
    """A stapled response is not a hint to ignore when it says something bad: it is checked,
    and the responder is not asked to overrule it."""
    response, reason = OCSP_REFUSALS[case]
    issued = Issued(crls={"vcek": VENDORS.amd.crl()}, ocsp_responses=[VENDORS.nvidia.ocsp()])
    with pytest.raises(EvidenceError, match=reason):
        await verify(gpu(ocsp=response()), issued)
    assert "ocsp " + OCSP_URL not in issued.asked


@pytest.mark.parametrize("case", ["stale", "no next update", "from the future",
                                  "about another certificate"])
async def test_a_stapled_response_not_current_or_not_about_it_is_passed_over(case: str) -> None:
    """Only a fresh stapled response stands in for the responder's: a stale one (an agent's
    cache gone old) means asking the responder, whose answer must then hold."""
    response, _ = OCSP_REFUSALS[case]
    issued = Issued(crls={"vcek": VENDORS.amd.crl()}, ocsp_responses=[VENDORS.nvidia.ocsp()])
    assert (await verify(gpu(ocsp=response()), issued)).gpus
    assert issued.asked[-1] == "ocsp " + OCSP_URL
    with pytest.raises(EvidenceError, match="unreachable"):  # and without it: refused
        await verify(gpu(ocsp=response()), Issued(crls={"vcek": VENDORS.amd.crl()}))


def test_an_unsuccessful_ocsp_answer_is_refused() -> None:
    answer = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(Encoding.DER)
    with pytest.raises(EvidenceError, match="the OCSP responder answered try_later"):
        check_ocsp(answer, VENDORS.nvidia.leaf, VENDORS.nvidia.root, AT)


# -- Fetched and kept until nextUpdate --------------------------------------------------------

@dataclass
class Network:
    routes: dict[str, Response]
    asked: list[str] = field(default_factory=list)

    async def certificate(self, host: str, port: int, *, timeout_s: float) -> bytes:
        raise AssertionError("not used")

    async def get(self, url: str, *, params: Mapping[str, str] | None = None,
                  pin: bytes | None = None, timeout_s: float, max_bytes: int) -> Response:
        self.asked.append(url)
        if url.startswith(OCSP_URL + "/"):
            return self.routes.get(OCSP_URL, Response(404, b""))
        return self.routes.get(url, Response(404, b""))


def store(network: Network, tmp_path: Path, now: float,
          **settings: Any) -> CollateralStore:
    return CollateralStore(AttestationSettings(
        amd_kds_url="https://kds.test", cache_dir=str(tmp_path), **settings), network,
        clock=lambda: now)


async def test_the_crl_is_fetched_from_kds_and_kept_until_its_next_update(
        tmp_path: Path) -> None:
    next_update = datetime.datetime(2025, 7, 1, tzinfo=datetime.UTC)
    crl = VENDORS.amd.crl(next_update=next_update)
    url = "https://kds.test/vcek/v1/Milan/crl"
    network = Network({url: Response(200, crl), "https://kds.test/vlek/v1/Milan/crl":
                       Response(200, b"vlek")})
    assert await store(network, tmp_path, AT.timestamp()).amd_crl("Milan", "vcek") == crl
    assert await store(network, tmp_path, AT.timestamp()).amd_crl("Milan", "vcek") == crl
    assert network.asked == [url]  # the second came from the disk cache
    later = next_update.timestamp() + 1
    assert await store(network, tmp_path, later).amd_crl("Milan", "vcek") == crl
    assert network.asked == [url, url]  # past nextUpdate: asked again
    assert await store(network, tmp_path, later).amd_crl("Milan", "vlek") == b"vlek"
    with pytest.raises(EvidenceError, match="AMD KDS has no CRL for Genoa"):
        await store(network, tmp_path, later).amd_crl("Genoa", "vcek")


async def test_the_operators_crl_file_comes_before_kds(tmp_path: Path) -> None:
    folder = tmp_path / "amd"
    folder.mkdir()
    VENDORS.amd.roots_dir(folder, crl=b"from the file", vlek_crl=b"vlek file")
    network = Network({})
    found = store(network, tmp_path, AT.timestamp(), amd_roots_dir=str(folder))
    assert await found.amd_crl("Milan", "vcek") == b"from the file"
    assert await found.amd_crl("Milan", "vlek") == b"vlek file"
    assert network.asked == []
    none = CollateralStore(AttestationSettings(amd_kds_url=None, cache_dir=None), network)
    with pytest.raises(EvidenceError, match="no file in amd_roots_dir and no AMD KDS"):
        await none.amd_crl("Milan", "vcek")


async def test_ocsp_is_asked_by_get_and_kept_until_its_next_update(tmp_path: Path) -> None:
    next_update = datetime.datetime(2025, 6, 2, tzinfo=datetime.UTC)
    answer = VENDORS.nvidia.ocsp(next_update=next_update)
    network = Network({OCSP_URL: Response(200, answer)})
    leaf, root = VENDORS.nvidia.leaf, VENDORS.nvidia.root
    assert await store(network, tmp_path, AT.timestamp()).ocsp(leaf, root, OCSP_URL) == answer
    assert await store(network, tmp_path, AT.timestamp()).ocsp(leaf, root, OCSP_URL) == answer
    assert len(network.asked) == 1
    request = ocsp.load_der_ocsp_request(base64.b64decode(urllib.parse.unquote(
        network.asked[0].removeprefix(OCSP_URL + "/"))))
    assert request.serial_number == leaf.serial_number
    await store(network, tmp_path, next_update.timestamp() + 1).ocsp(leaf, root, OCSP_URL)
    assert len(network.asked) == 2


async def test_an_answer_that_is_not_a_crl_is_not_kept(tmp_path: Path) -> None:
    url = "https://kds.test/vcek/v1/Milan/crl"
    network = Network({url: Response(200, b"<html>maintenance</html>")})
    for _ in range(2):
        await store(network, tmp_path, AT.timestamp()).amd_crl("Milan", "vcek")
    assert network.asked == [url, url]
    document, _ = snp()
    verifier = EvidenceVerifier(VENDORS.roots(), store(network, tmp_path, AT.timestamp()),
                                AT.timestamp)
    with pytest.raises(EvidenceError, match="the CRL of 'ARK-Milan' does not parse"):
        await verifier.verify(Fetched(orjson.dumps(document), BOUND, bytes(32)))


# -- Dated in the future, past nextUpdate, and the verdict's expiry ---------------------------

AN_HOUR = datetime.timedelta(hours=1)


async def test_a_crl_dated_in_the_future_is_refused() -> None:
    """An ARK CRL issued after `now` (beyond the clock skew) says a clock is wrong: refused,
    whatever it lists; one a minute ahead (within the skew) is accepted."""
    future = VENDORS.amd.crl(this_update=AT + AN_HOUR)
    document, issued = snp(vcek=future)
    with pytest.raises(EvidenceError, match="sev-snp: CRL of 'ARK-Milan' is dated in the "
                                            "future"):
        await verify(document, issued)
    document, issued = snp(vcek=VENDORS.amd.crl(this_update=AT + datetime.timedelta(minutes=1)))
    assert (await verify(document, issued)).snp


def tdx_document(pck_crl: bytes) -> dict[str, Any]:
    document = VENDORS.evidence(BOUND, kind="tdx")
    document["evidence"][0]["collateral"]["pck_crl"] = base64.b64encode(pck_crl).decode()
    return document


@pytest.mark.parametrize(("dated", "reason"), [
    ({"this_update": AT + AN_HOUR}, "tdx: CRL of 'Test SGX PCK Platform CA' is dated in the "
                                    "future"),
    ({"next_update": AT - datetime.timedelta(seconds=1)},
     "tdx: CRL of 'Test SGX PCK Platform CA' is stale"),
])
async def test_a_pck_crl_dated_in_the_future_or_past_its_next_update_is_refused(
        dated: dict[str, datetime.datetime], reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        await verify(tdx_document(VENDORS.intel.pck_crl(**dated)), Issued())


async def test_the_verdict_lapses_at_the_pck_crls_next_update() -> None:
    """TCB Info and QE Identity hold until 2030; the PCK CRL only a day: the evidence (and so
    every verdict on it) must not outlive the CRL it was checked against."""
    next_update = AT + datetime.timedelta(days=1)
    evidence = await verify(tdx_document(VENDORS.intel.pck_crl(next_update=next_update)),
                            Issued())
    assert evidence.tdx is not None
    assert evidence.not_after() == next_update.timestamp()


async def test_the_verdict_lapses_at_the_ark_crls_next_update() -> None:
    next_update = AT + datetime.timedelta(days=1)
    document, issued = snp(vcek=VENDORS.amd.crl(next_update=next_update))
    assert (await verify(document, issued)).not_after() == next_update.timestamp()


async def test_the_verdict_lapses_at_the_ocsp_responses_next_update() -> None:
    next_update = AT + datetime.timedelta(hours=6)
    evidence = await verify(gpu(ocsp=VENDORS.nvidia.ocsp(next_update=next_update)),
                            Issued(crls={"vcek": VENDORS.amd.crl()}))
    assert evidence.not_after() == next_update.timestamp()


def test_a_level_met_is_met_no_longer_than_the_revocation_data() -> None:
    """verdicts.py takes the evidence's not_after as a bound: a level with a long max age
    still lapses at the revocation data's nextUpdate."""
    gpu = VerifiedGpu(0, "1", b"", GpuEvidence(b"", b"", {}, b"", b""))
    evidence = Evidence(snp=None, tdx=None, gpus=(gpu,), tokens=(),
                        expected_nonce="", certificate_sha256=bytes(32),
                        verified_at=AT.timestamp(), digest="",
                        revocation_until=AT.timestamp() + 60)
    level = TrustLevel.model_validate({"max_age_s": 3600, "nvidia-gpu": {}})
    assert level_met(evidence, level, lambda _: None, AT.timestamp()) == AT.timestamp() + 60


async def test_a_future_dated_crl_or_response_is_not_kept(tmp_path: Path) -> None:
    """Kept until its nextUpdate, it would be refused until then: it is asked again instead."""
    url = "https://kds.test/vcek/v1/Milan/crl"
    network = Network({url: Response(200, VENDORS.amd.crl(this_update=AT + AN_HOUR)),
                       OCSP_URL: Response(200, VENDORS.nvidia.ocsp(this_update=AT + AN_HOUR))})
    leaf, root = VENDORS.nvidia.leaf, VENDORS.nvidia.root
    for _ in range(2):
        await store(network, tmp_path, AT.timestamp()).amd_crl("Milan", "vcek")
        await store(network, tmp_path, AT.timestamp()).ocsp(leaf, root, OCSP_URL)
    assert len(network.asked) == 4


@dataclass
class PckCrlSource(Issued):
    """The operator's folder or Intel PCS, answering the PCK CRL the backend left out (or a
    folder without one: `pck_crl` None)."""

    pck_crl: bytes | None = field(default_factory=VENDORS.intel.pck_crl)

    async def tdx(self, quote: TdxQuote) -> Collateral:
        self.asked.append("tdx collateral")
        return Collateral("", b"", "", b"", pck_crl=self.pck_crl)


async def test_tdx_collateral_sent_without_a_pck_crl_gets_one_or_is_refused() -> None:
    """A PCK certificate is never taken unchecked: a CRL the backend did not send comes from
    the collateral source, and with none there the evidence is refused."""
    document = VENDORS.evidence(BOUND, kind="tdx")
    del document["evidence"][0]["collateral"]["pck_crl"]
    with pytest.raises(EvidenceError, match="tdx: no collateral"):  # Issued has none
        await verify(document, Issued())
    source = PckCrlSource()
    assert (await verify(document, source)).tdx is not None
    assert source.asked == ["tdx collateral"]
    with pytest.raises(EvidenceError, match="tdx: no PCK CRL"):
        await verify(document, PckCrlSource(pck_crl=None))
