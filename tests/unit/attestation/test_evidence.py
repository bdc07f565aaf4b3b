"""The evidence verifier on its own: genuine evidence from real machines verifies against the
pinned roots and is refused only because it is bound to another exchange; malformed documents
are refused with a reason that names what is wrong.

Genuine revocation data is not available offline (AMD's CRLs and NVIDIA's OCSP answers are
fetched live, and nothing here may reach the network): genuine SEV-SNP and GPU evidence gets
through chain, signature and binding and is then refused for want of that data (fail closed),
which is the last check made. Revocation itself is tested with the test vendors' CRLs and OCSP
responses (test_revocation.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509

from gateway.attestation.evidence import MAX_EVIDENCE_BYTES, EvidenceVerifier, Fetched
from gateway.attestation.snp import SnpReport
from gateway.attestation.tdx import Collateral, TdxQuote, collateral_from_dir, parse_quote
from gateway.attestation.trust_roots import Roots
from gateway.errors import EvidenceError
from tests.attestation_ca import Vendors

DATA = Path(__file__).parents[2] / "data" / "attestation"
VENDORS = Vendors()
CERTIFICATE_SHA256 = bytes(32)


class SavedCollateral:
    """Intel collateral saved from PCS (tests/data/attestation/tdx); no AMD KDS."""

    async def vcek(self, report: SnpReport) -> bytes:
        raise EvidenceError("sev-snp: the evidence has no VCEK and no AMD KDS is configured")

    async def tdx(self, quote: TdxQuote) -> Collateral:
        return collateral_from_dir(DATA / "tdx", quote)

    async def amd_crl(self, product: str, kind: str) -> bytes:
        raise EvidenceError(f"sev-snp: no CRL for the {product} {kind.upper()} chain (offline)")

    async def ocsp(self, cert: x509.Certificate, issuer: x509.Certificate,
                   responder: str) -> bytes:
        raise EvidenceError(f"nvidia-gpu: no OCSP response from {responder} (offline)")


def _b64(name: str) -> str:
    return base64.b64encode((DATA / name).read_bytes()).decode()


def _gpu_part() -> dict[str, Any]:
    return {"format": "nvidia-gpu",
            "evidence": (DATA / "nvidia" / "hopperAttestationReport.txt").read_text().strip(),
            "certificates": (DATA / "nvidia" / "hopper_cert_chain_case1.txt").read_text()}


# kind -> (the part, when it is valid, the binding it carries, the refusal of any other binding)
# and, for those whose revocation data is not available offline, the refusal that follows.
REVOCATION_OFFLINE = {"sev-snp": "sev-snp: no CRL for the Milan VCEK chain",
                      "nvidia-gpu": r"nvidia-gpu: GPU 0 \(certificate serial [0-9a-f]+\): no OCSP "
                                    r"response from http://ocsp.ndis.nvidia"}
GENUINE = {
    "sev-snp": ({"format": "sev-snp", "report": _b64("virtee_milan_report.bin"),
                 "vcek": _b64("virtee_milan_vcek.der")}, datetime(2024, 6, 1, tzinfo=UTC),
                (DATA / "virtee_milan_report.bin").read_bytes()[0x50:0x90],
                "sev-snp: report_data is not bound"),
    "tdx": ({"format": "tdx", "quote": _b64("tdx/quote_v5_sample.dat")},
            datetime(2026, 2, 5, tzinfo=UTC),
            parse_quote((DATA / "tdx" / "quote_v5_sample.dat").read_bytes()).report.report_data,
            "tdx: report_data is not bound"),
    "nvidia-gpu": (_gpu_part(), datetime(2025, 1, 1, tzinfo=UTC),
                   bytes.fromhex(_gpu_part()["evidence"])[4:36] + bytes(32),
                   r"nvidia-gpu: GPU 0 \(certificate serial [0-9a-f]+\): the request nonce "
                   "is not this gateway's"),
}


def verifier(at: datetime, roots: Roots | None = None) -> EvidenceVerifier:
    return EvidenceVerifier(roots or Roots.pinned(), SavedCollateral(), at.timestamp)


def fetched(document: object, bound: bytes = bytes(64)) -> Fetched:
    return Fetched(orjson.dumps(document), bound, CERTIFICATE_SHA256)


@pytest.mark.parametrize("kind", sorted(GENUINE))
async def test_genuine_evidence_verifies_to_the_pinned_roots_and_is_bound_to_its_exchange(
        kind: str) -> None:
    part, at, carried, refusal = GENUINE[kind]
    document = {"evidence": [part]}
    if kind in REVOCATION_OFFLINE:  # chain, signature and binding held: revocation is next
        with pytest.raises(EvidenceError, match=REVOCATION_OFFLINE[kind]):
            await verifier(at).verify(fetched(document, carried))
    else:
        evidence = await verifier(at).verify(fetched(document, carried))
        assert evidence.verified_at == at.timestamp()
        assert evidence.digest.startswith("sha256:")
    with pytest.raises(EvidenceError, match=refusal):  # a replay, as far as we are concerned
        await verifier(at).verify(fetched(document, bytes(64)))


async def test_genuine_evidence_does_not_verify_to_private_roots() -> None:
    part, at, carried, _ = GENUINE["sev-snp"]
    with pytest.raises(EvidenceError, match="not signed by"):
        await verifier(at, VENDORS.roots()).verify(fetched({"evidence": [part]}, carried))


@pytest.mark.parametrize(("body", "reason"), [
    (b"x" * (MAX_EVIDENCE_BYTES + 1), "evidence larger than 1024 KiB"),
    (b"<html>", "evidence is not JSON"),
    (b"[]", "evidence must be"),
    (b'{"evidence": []}', "evidence must be"),
    (b'{"evidence": ["sev-snp"]}', "evidence must be"),
    (b'{"evidence": [{"format": ["sev-snp"]}]}', r"unsupported evidence part \['sev-snp'\]"),
    (b'{"evidence": [{"format": "sgx"}]}', "unsupported evidence part 'sgx'"),
    (b'{"evidence": [{"format": "sev-snp"}]}', "sev-snp evidence needs a base64 'report'"),
    (b'{"evidence": [{"format": "tdx", "quote": "%%%"}]}', "tdx evidence needs a base64"),
    (b'{"evidence": [{"format": "nvidia-gpu", "evidence": "zz"}]}',
     "nvidia-gpu: GPU 0: the part needs hex"),
])
async def test_malformed_documents_are_refused_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        await verifier(datetime(2025, 1, 1, tzinfo=UTC)).verify(
            Fetched(body, bytes(64), CERTIFICATE_SHA256))


async def test_one_part_of_each_hardware_kind() -> None:
    part, at, carried, _ = GENUINE["tdx"]  # the one whose first part verifies in full offline
    with pytest.raises(EvidenceError, match="more than one 'tdx' part"):
        await verifier(at).verify(fetched({"evidence": [part, part]}, carried))
