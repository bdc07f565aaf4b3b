"""Revocation for `veil attest verify`, from files only: the ARK's CRL for an SEV-SNP report
(--crl, saved from AMD KDS), the PCK CA's and root CA's CRLs for a TDX quote (in --collateral,
as Intel PCS names them, or --crl), OCSP responses for a GPU chain (--ocsp, DER). Evidence
verified without them is still reported, and the report says that revocation was not checked:
an unchecked key is never shown as a good one.

A CRL or response that is given is checked exactly as the gateway checks it
(gateway/attestation/revocation.py): one that lists a key, is stale, dated in the future or
signed by another key refuses the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from cryptography import x509

from gateway.attestation.chains import common_name
from gateway.attestation.nvidia import load_chain
from gateway.attestation.revocation import check_ocsp, check_snp_crl, ocsp_matches, ocsp_targets
from gateway.attestation.snp import AmdRoots, VerifiedSnp, load_certificate
from gateway.attestation.tdx import Collateral, TdxQuote
from gateway.errors import EvidenceError


@dataclass(frozen=True)
class Revocation:
    checked: bool
    detail: str

    def values(self) -> dict[str, object]:
        return {"revocation": self.detail, "revocation_checked": self.checked}


def not_checked(why: str) -> Revocation:
    return Revocation(False, f"NOT CHECKED: {why}")


def checked(what: str, until: datetime) -> Revocation:
    return Revocation(True, f"checked: {what}, current until {until.isoformat()}")


def snp_revocation(verified: VerifiedSnp, vcek: bytes, crls: Sequence[bytes],
                   pinned: AmdRoots, at: datetime) -> Revocation:
    if not crls:
        return not_checked(f"no --crl (the ARK's CRL, from AMD KDS: https://kdsintf.amd.com/"
                           f"{verified.key_kind}/v1/{verified.product}/crl)")
    endorsement = load_certificate(vcek)
    until = min(check_snp_crl(crl, verified, endorsement, pinned, at) for crl in crls)
    return checked(f"the ARK's CRL lists neither the {verified.key_kind.upper()} nor its CA",
                   until)


def tdx_collateral(collateral: Collateral, quote: TdxQuote, root: x509.Certificate,
                   crls: Sequence[bytes]) -> Collateral:
    """The collateral with each --crl in its place, by who issued it: the PCK CA's or the
    root CA's (verify_quote checks them); a CRL from anyone else is refused."""
    pck_ca = quote.pck_chain[1] if len(quote.pck_chain) > 1 else root
    for der in crls:
        try:
            issuer = x509.load_der_x509_crl(der).issuer
        except ValueError:
            raise EvidenceError("tdx: a --crl does not parse (DER expected)") from None
        if issuer == pck_ca.subject:
            collateral = replace(collateral, pck_crl=der)
        elif issuer == root.subject:
            collateral = replace(collateral, root_crl=der)
        else:
            raise EvidenceError(f"tdx: a --crl is from {issuer.rfc4514_string()!r}, neither "
                                "the PCK CA nor the root CA of this quote")
    return collateral


def tdx_revocation(collateral: Collateral) -> Revocation:
    """What verify_quote checked (it refuses a CRL that lists the chain or is not current)."""
    if collateral.pck_crl is None:
        return not_checked("no PCK CRL (pck_crl_<platform|processor>.crl in --collateral, "
                           "or --crl)")
    crls = [collateral.pck_crl] + ([collateral.root_crl] if collateral.root_crl else [])
    ends = [x509.load_der_x509_crl(crl).next_update_utc for crl in crls]
    what = "the PCK CA's CRL" + (" and the root CA's CRL" if collateral.root_crl else
                                 " (no root CA CRL given)")
    return checked(f"{what} list none of the chain", min(e for e in ends if e is not None))


def gpu_revocation(chain_pem: bytes, responses: Sequence[bytes], root: x509.Certificate,
                   at: datetime) -> Revocation:
    """Every certificate an NVIDIA CA issued needs a response about it among --ocsp."""
    ends, missing = [], []
    for cert, issuer, responder in ocsp_targets(load_chain(chain_pem), root):
        response = next((r for r in responses if ocsp_matches(r, cert)), None)
        if response is None:
            missing.append(f"{common_name(cert.subject)!r} ({responder})")
        else:
            ends.append(check_ocsp(response, cert, issuer, at))
    if missing:
        return not_checked(f"no --ocsp response about {', '.join(missing)}")
    return checked(f"OCSP says good for {len(ends)} certificate(s)", min(ends))
