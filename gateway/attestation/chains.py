"""Certificate chains to a pinned root, the same way for every vendor: each certificate valid at
the verifier's time and signed by the next, ending at the pinned root (which must sign itself).
A chain that ends at some other self-signed root is refused by name."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.errors import EvidenceError


def verify_chain(chain: Sequence[x509.Certificate], root: x509.Certificate, at: datetime, *,
                 prefix: str, root_label: str, what: str = "") -> None:
    """`prefix` names the evidence kind in messages ("tdx"), `what` the chain ("PCK ")."""
    if not chain:
        raise EvidenceError(f"{prefix}: empty {what}certificate chain")
    full = list(chain)
    if full[-1] != root:
        if full[-1].issuer == full[-1].subject:
            raise EvidenceError(f"{prefix}: the {what}chain does not end at the pinned "
                                f"{root_label} root")
        full.append(root)
    for cert, issuer in zip(full, [*full[1:], root], strict=True):
        name = common_name(cert.subject)
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise EvidenceError(f"{prefix}: certificate {name!r} is not valid at "
                                f"{at.isoformat()} ({cert.not_valid_before_utc.date()}.."
                                f"{cert.not_valid_after_utc.date()})")
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError):
            raise EvidenceError(f"{prefix}: certificate {name!r} is not signed by "
                                f"{common_name(issuer.subject)!r}") from None


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()
