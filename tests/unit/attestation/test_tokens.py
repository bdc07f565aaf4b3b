"""Attestation-service tokens: keys only from the configured JWKS, no `none`/HMAC, times
against the verifier's clock, the nonce, then the claims a trust level names."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.attestation.levels import TokenRequirements, token_problems
from gateway.attestation.tokens import verify_token
from gateway.errors import EvidenceError

ISSUER = "https://nras.example"
NOW = 1_800_000_000.0
KEY = ec.generate_private_key(ec.SECP256R1())
JWK = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key())), "kid": "k1",
       "alg": "ES256"}
JWKS = {"keys": [JWK]}


def token(key: Any = KEY, alg: str = "ES256", headers: dict[str, Any] | None = None,
          **claims: Any) -> str:
    body = {"iss": ISSUER, "iat": NOW - 10, "exp": NOW + 600, "eat_nonce": "n0nce",
            "x-nvidia-overall-att-result": True, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": "k1", **(headers or {})})


def verify(raw: str, **overrides: Any) -> Any:
    arguments = {"issuer": ISSUER, "now": NOW, "max_age_s": 3600, "nonce_claim": "eat_nonce",
                 "expected_nonce": "n0nce", **overrides}
    return verify_token(raw, JWKS, **arguments)


def test_valid_token_and_claims() -> None:
    verified = verify(token(**{"x-ms-isolation-tee": {"x-ms-sevsnpvm-launchmeasurement": "ab"}}))
    wanted = TokenRequirements(issuer=ISSUER, jwks_url="https://nras.example/jwks", claims={
        "x-nvidia-overall-att-result": True,
        "x-ms-isolation-tee.x-ms-sevsnpvm-launchmeasurement": "ab"})
    assert token_problems(verified, wanted) == []
    wrong = wanted.model_copy(update={"claims": {"x-nvidia-overall-att-result": False}})
    assert token_problems(verified, wrong) == [
        "claim x-nvidia-overall-att-result is True, expected False"]


@pytest.mark.parametrize(("raw", "overrides", "reason"), [
    (lambda: token(exp=NOW - 1), {}, "expired"),
    (lambda: token(nbf=NOW + 100), {}, "not valid yet"),
    (lambda: token(iat=NOW - 7200), {}, "older than the maximum age"),
    (lambda: token(iss="https://evil.example"), {}, "issuer is not"),
    (lambda: token(eat_nonce="replayed"), {}, "does not carry this gateway's nonce"),
    (lambda: token(key=ec.generate_private_key(ec.SECP256R1())), {}, "InvalidSignatureError"),
    (lambda: token(headers={"kid": "other"}), {}, "key id 'other' is not in the configured"),
    (lambda: jwt.encode({"iss": ISSUER}, key=None, algorithm="none"), {}, "'none' is not"),
    (lambda: jwt.encode({"iss": ISSUER}, "x" * 32, algorithm="HS256"), {}, "'HS256' is not"),
    (lambda: "not.a.jwt", {}, "not a JWT"),
])
def test_refusals(raw: Any, overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(EvidenceError, match=reason):
        verify(raw(), **overrides)


def test_jku_header_is_never_followed() -> None:
    """A token pointing at its own key set still needs a key from the configured JWKS."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = token(key=attacker, headers={"jku": "https://evil.example/jwks", "kid": "k1"})
    with pytest.raises(EvidenceError, match="InvalidSignatureError"):
        verify(forged)


def test_unsafe_algorithms_cannot_be_allowed() -> None:
    with pytest.raises(EvidenceError, match="not allowed"):
        verify(token(), algorithms=("HS256",))
