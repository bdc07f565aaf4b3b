"""Attestation-service tokens (Azure Attestation, Intel Trust Authority, NVIDIA NRAS): JWTs
signed by the service. What makes one trustworthy is decided here, not by the token:

- keys come only from the JWKS the policy names (fetched by the gateway); the token's own
  `jku`/`x5u`/`jwk` headers are never followed;
- asymmetric algorithms only (never `none`, never HMAC, which would let anyone holding the
  public key forge tokens);
- issuer, expiry, not-before, a maximum age since `iat`, the freshness nonce, then every claim
  the policy names, by dotted path (`x-ms-isolation-tee.x-ms-sevsnpvm-launchmeasurement`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.errors import EvidenceError

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                      "ES512", "EdDSA")


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str
    claims: Mapping[str, Any]
    expires_at: float

    def values(self) -> dict[str, Any]:
        return {"format": "token", "issuer": self.issuer, "expires_at": int(self.expires_at)}


def verify_token(token: str, jwks: Mapping[str, Any], *, issuer: str, now: float,
                 max_age_s: float, nonce_claim: str, expected_nonce: str,
                 algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS) -> VerifiedToken:
    unsafe = [a for a in algorithms if a not in ALLOWED_ALGORITHMS]
    if unsafe:
        raise EvidenceError(f"token: algorithms {unsafe} are not allowed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise EvidenceError("token: not a JWT") from None
    algorithm = header.get("alg")
    if algorithm not in algorithms:
        raise EvidenceError(f"token: algorithm {algorithm!r} is not allowed")
    key = _key_for(jwks, header.get("kid"))
    try:
        # Times are checked below against the verifier's clock (frozen in tests, real here).
        claims = jwt.decode(token, key=key, algorithms=[algorithm], issuer=issuer,
                            options={"require": ["exp", "iat", "iss"], "verify_aud": False,
                                     "verify_exp": False, "verify_nbf": False,
                                     "verify_iat": False})
    except jwt.InvalidIssuerError:
        raise EvidenceError(f"token: issuer is not {issuer!r}") from None
    except jwt.PyJWTError as exc:
        raise EvidenceError(f"token: {type(exc).__name__}") from None
    _check_times(claims, now, max_age_s)
    if claim(claims, nonce_claim) != expected_nonce:
        raise EvidenceError(f"token: {nonce_claim} does not carry this gateway's nonce")
    return VerifiedToken(issuer, claims, float(claims["exp"]))


def _check_times(claims: Mapping[str, Any], now: float, max_age_s: float) -> None:
    try:
        issued, expires = float(claims["iat"]), float(claims["exp"])
        not_before = float(claims.get("nbf", issued))
    except (TypeError, ValueError):
        raise EvidenceError("token: iat, exp and nbf must be numbers") from None
    if now >= expires:
        raise EvidenceError("token: expired")
    if now < not_before or issued > now + 60:
        raise EvidenceError("token: not valid yet")
    if now - issued > max_age_s:
        raise EvidenceError(f"token: issued {int(now - issued)} s ago, older than the maximum "
                            f"age {int(max_age_s)} s")


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path; None when absent. A key that itself contains dots (as some
    services use) is matched whole first."""
    if path in claims:
        return claims[path]
    head, dot, rest = path.partition(".")
    value = claims.get(head)
    if not dot:
        return value
    return claim(value, rest) if isinstance(value, Mapping) else None


def _key_for(jwks: Mapping[str, Any], kid: object) -> Any:
    try:
        keys = jwt.PyJWKSet.from_dict(dict(jwks)).keys
    except jwt.PyJWTError:
        raise EvidenceError("token: the configured JWKS holds no usable key") from None
    matching = [k for k in keys if kid is None or k.key_id == kid]
    if len(matching) != 1:
        raise EvidenceError(f"token: key id {kid!r} is not in the configured JWKS")
    return matching[0].key
