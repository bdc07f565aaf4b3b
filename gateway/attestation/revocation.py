"""Revocation, checked when evidence is verified (in the background), never per request: a CRL
signed by the CA that issued the certificates (AMD's ARK for the ASK/ASVK and VCEK/VLEK,
Intel's CAs for PCK chains), and OCSP responses for NVIDIA's GPU certificate chain. Each check
answers until when its answer holds (the CRL's or the response's nextUpdate), so the verdict
lapses then and the backend is attested again with fresh revocation data.

Everything refuses (EvidenceError) rather than guess: a CRL or response that does not parse, is
signed by another key, is dated in the future (beyond CLOCK_SKEW), is past its nextUpdate or has
none, a certificate listed as revoked, an OCSP status other than good.
"""

from __future__ import annotations

import base64
import itertools
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from gateway.attestation.chains import common_name
from gateway.attestation.snp import AmdRoots, VerifiedSnp
from gateway.errors import EvidenceError

CLOCK_SKEW = timedelta(minutes=5)  # a CRL's or response's thisUpdate may be this far ahead


def check_crl(crl_der: bytes, issuer: x509.Certificate,
              certs: Mapping[str, x509.Certificate], at: datetime, *, prefix: str,
              same_issuer: bool = True) -> datetime:
    """The CRL must be `issuer`'s, current at `at`, and list none of `certs` (label -> the
    certificate, the label names it in the refusal: "vcek revoked"); answers its nextUpdate.
    `same_issuer`: only certificates `issuer` issued count as listed (AMD's ARK CRL is checked
    against the VCEK's serial too, so there it is False)."""
    issuer_name = common_name(issuer.subject)
    try:
        crl = x509.load_der_x509_crl(crl_der)
    except ValueError:
        raise EvidenceError(f"{prefix}: the CRL of {issuer_name!r} does not parse") from None
    try:
        signed = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (UnsupportedAlgorithm, ValueError, TypeError):
        signed = False
    if not signed or crl.issuer != issuer.subject:
        raise EvidenceError(f"{prefix}: CRL is not signed by {issuer_name!r}")
    if crl.last_update_utc > at + CLOCK_SKEW:
        raise EvidenceError(f"{prefix}: CRL of {issuer_name!r} is dated in the future "
                            f"({crl.last_update_utc.isoformat()}): a clock is wrong")
    if crl.next_update_utc is None or at > crl.next_update_utc:
        ended = f"expired {crl.next_update_utc.date()}" if crl.next_update_utc \
            else "it has no nextUpdate"
        raise EvidenceError(f"{prefix}: CRL of {issuer_name!r} is stale: {ended}")
    for label, cert in certs.items():
        listed = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if listed is not None and (not same_issuer or cert.issuer == crl.issuer):
            raise EvidenceError(f"{prefix}: {label} revoked ({common_name(cert.subject)!r}, "
                                f"serial {cert.serial_number:x})")
    return crl.next_update_utc


def check_snp_crl(crl_der: bytes, verified: VerifiedSnp, endorsement: x509.Certificate,
                  pinned: AmdRoots, at: datetime) -> datetime:
    """The ARK's CRL lists neither the ASK/ASVK nor the VCEK/VLEK (`endorsement`); answers its
    nextUpdate."""
    kind = verified.key_kind
    intermediate = pinned.asvk if kind == "vlek" else pinned.ask
    if intermediate is None:
        raise EvidenceError(f"sev-snp: no {'ASVK' if kind == 'vlek' else 'ASK'} for "
                            f"{verified.product}")
    return check_crl(crl_der, pinned.ark, {"asvk" if kind == "vlek" else "ask": intermediate,
                                           kind: endorsement},
                     at, prefix="sev-snp", same_issuer=False)


def ocsp_targets(chain: Sequence[x509.Certificate],
                 root: x509.Certificate) -> list[tuple[x509.Certificate, x509.Certificate, str]]:
    """(certificate, its issuer, responder URL) for every certificate an NVIDIA CA issued: those
    issued by the root or by a CA naming a responder. Below them the GPU certifies its own
    firmware keys, and revoking the device certificate covers those."""
    full = list(chain) if chain and chain[-1] == root else [*chain, root]
    targets = []
    for cert, issuer in itertools.pairwise(full):
        url = responder_url(issuer) or (responder_url(cert) if issuer == root else None)
        if url is None and issuer == root:
            raise EvidenceError(f"nvidia-gpu: certificate {common_name(cert.subject)!r} "
                                "names no OCSP responder")
        if url is not None:
            targets.append((cert, issuer, url))
    return targets


def responder_url(cert: x509.Certificate) -> str | None:
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        if description.access_method == AuthorityInformationAccessOID.OCSP:
            return str(description.access_location.value)
    return None


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate,
                 nonce: bytes | None = None) -> bytes:
    """The DER request about `cert` (its CertID hashed with SHA-384, as NVIDIA's SDK asks),
    with RFC 8954's nonce extension when given."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def ocsp_request_url(cert: x509.Certificate, issuer: x509.Certificate, responder: str) -> str:
    """RFC 6960 appendix A.1: the DER request, base64 and URL-encoded, after the responder's
    URL. No nonce, so the same certificate asks the same URL and the answer can be cached."""
    encoded = base64.b64encode(ocsp_request(cert, issuer)).decode()
    return f"{responder.rstrip('/')}/{urllib.parse.quote(encoded, safe='')}"


def ocsp_nonce_echoed(response_der: bytes, nonce: bytes) -> bool:
    """Whether a successful response carries the request's nonce (an unsuccessful one carries
    none, and is refused by `check_ocsp` for what it is). The nonce is in the signed part of
    the response, which `check_ocsp` verifies."""
    try:
        response = ocsp.load_der_ocsp_response(response_der)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return True
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except (ValueError, x509.ExtensionNotFound):
        return False
    return echoed == nonce


def ocsp_matches(response_der: bytes, cert: x509.Certificate,
                 at: datetime | None = None) -> bool:
    """Whether a (stapled) response is about `cert` and, given `at`, current then: looked at
    before it is checked, so a stapled response gone stale is passed over (the responder is
    asked instead) rather than refusing the evidence."""
    try:
        response = ocsp.load_der_ocsp_response(response_der)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return False
        return any(single.serial_number == cert.serial_number and (at is None or _current(
            single, at)) for single in response.responses)
    except ValueError:
        return False


def _current(single: ocsp.OCSPSingleResponse, at: datetime) -> bool:
    next_update = single.next_update_utc
    return single.this_update_utc <= at + CLOCK_SKEW and next_update is not None \
        and at <= next_update


def check_ocsp(response_der: bytes, cert: x509.Certificate, issuer: x509.Certificate,
               at: datetime, *, prefix: str = "nvidia-gpu") -> datetime:
    """The response must be signed by `issuer` or a responder it certified for OCSP signing,
    be about `cert`, say good and be current at `at`; answers its nextUpdate."""
    name = common_name(cert.subject)
    try:
        response = ocsp.load_der_ocsp_response(response_der)
    except ValueError:
        raise EvidenceError(f"{prefix}: the OCSP response for {name!r} does not parse") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise EvidenceError(f"{prefix}: the OCSP responder answered "
                            f"{response.response_status.name.lower()} for {name!r}")
    _check_ocsp_signature(response, issuer, at, prefix, name)
    single = _single_for(response, cert, issuer)
    if single is None:
        raise EvidenceError(f"{prefix}: the OCSP response is not about {name!r}")
    if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason.name if single.revocation_reason else "no reason"
        raise EvidenceError(f"{prefix}: certificate {name!r} is revoked ({reason})")
    if single.certificate_status != ocsp.OCSPCertStatus.GOOD:
        raise EvidenceError(f"{prefix}: the OCSP status of {name!r} is unknown")
    next_update = single.next_update_utc
    if not _current(single, at) or next_update is None:
        raise EvidenceError(f"{prefix}: the OCSP response for {name!r} is not current "
                            f"({single.this_update_utc.isoformat()}.."
                            f"{next_update.isoformat() if next_update else 'no nextUpdate'})")
    return next_update


def _single_for(response: ocsp.OCSPResponse, cert: x509.Certificate,
                issuer: x509.Certificate) -> ocsp.OCSPSingleResponse | None:
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        algorithm = single.hash_algorithm
        name_hash = hashes.Hash(algorithm)
        name_hash.update(issuer.subject.public_bytes())
        key_hash = hashes.Hash(algorithm)
        key_hash.update(_public_key_bits(issuer))
        if single.issuer_name_hash == name_hash.finalize() \
                and single.issuer_key_hash == key_hash.finalize():
            return single
    return None


def _check_ocsp_signature(response: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime,
                          prefix: str, name: str) -> None:
    signer = issuer if _is_responder(response, issuer) else _delegated(response, issuer, at)
    if signer is None or not _signature_valid(response, signer):
        raise EvidenceError(f"{prefix}: the OCSP response for {name!r} is not signed by "
                            f"{common_name(issuer.subject)!r} or a responder it certified")


def _delegated(response: ocsp.OCSPResponse, issuer: x509.Certificate,
               at: datetime) -> x509.Certificate | None:
    """A responder certificate in the response, issued by `issuer` for OCSP signing."""
    for cert in response.certificates:
        if not _is_responder(response, cert):
            continue
        try:
            cert.verify_directly_issued_by(issuer)
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (InvalidSignature, ValueError, TypeError, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage \
                and cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            return cert
    return None


def _is_responder(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    sha1 = hashes.Hash(hashes.SHA1())  # noqa: S303 (RFC 6960's ResponderID byKey is SHA-1)
    sha1.update(_public_key_bits(cert))
    return response.responder_key_hash == sha1.finalize()


def _signature_valid(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(),
                       algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's contents, as OCSP hashes it."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    raise EvidenceError(f"certificate {common_name(cert.subject)!r} has an unsupported key")
